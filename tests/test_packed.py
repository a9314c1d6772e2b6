"""pack_key: runs differing only in per-member scalars share a key; anything else separates them."""
from scaling import config as cfg_lib
from scaling import packed


def _cfg(**over):
    c = cfg_lib.resolve(cfg_lib.defaults())
    for dotted, value in over.items():
        node = c
        *path, leaf = dotted.split("__")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def test_members_differing_in_packed_scalars_share_a_key():
    base = packed.pack_key(_cfg())
    assert packed.pack_key(_cfg(seed=3, data__seed=7, optim__lr=1e-2, model__init_std=0.05,
                                meta__budget=1e12)) == base


def test_shape_steps_schedule_and_execution_separate_packs():
    base = packed.pack_key(_cfg())
    for over in ({"model__d_model": 64}, {"train__tokens": 4_000_000}, {"train__batch_size": 32},
                 {"optim__schedule": "wsd"}, {"model__attention": "dense"}):
        assert packed.pack_key(_cfg(**over)) != base, over
