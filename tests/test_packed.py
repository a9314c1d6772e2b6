"""pack_key: runs differing only in per-member scalars share a key; anything else separates them."""
from scaling import config as cfg_lib
from scaling import packed
from tests.test_packed_train import member_config


def _cfg(**over):
    """The resolved defaults with dotted overrides ("optim.lr": 1e-2), as the packed trainer's tests build members."""
    return member_config(cfg_lib.resolve(cfg_lib.defaults()), **over)


def test_members_differing_in_packed_scalars_share_a_key():
    base = packed.pack_key(_cfg())
    assert packed.pack_key(_cfg(**{"seed": 3, "data.seed": 7, "optim.lr": 1e-2, "model.init_std": 0.05,
                                   "meta.budget": 1e12})) == base


def test_shape_steps_schedule_and_execution_separate_packs():
    base = packed.pack_key(_cfg())
    for over in ({"model.d_model": 64}, {"train.tokens": 4_000_000}, {"train.batch_size": 32},
                 {"optim.schedule": "wsd"}, {"model.attention": "dense"}):
        assert packed.pack_key(_cfg(**over)) != base, over
