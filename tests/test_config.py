"""Config loading, overrides and validation: errors name the key, the value and what is valid."""
import json

import pytest

from scaling import config as cfg_lib

BASE = cfg_lib._BASE


def test_override_parses_to_leaf_type():
    c = cfg_lib.load(BASE, ["--config.model.d_model=64", "--config.train.tokens=2e5",
                            "--config.optim.lr=1e-3", "--config.model.tie_embeddings=false"])
    assert c.model.d_model == 64 and isinstance(c.model.d_model, int)
    assert c.train.tokens == 200_000 and isinstance(c.train.tokens, int)
    assert c.optim.lr == 1e-3
    assert c.model.tie_embeddings is False


@pytest.mark.parametrize("override, words", [
    ("--config.model.d_modle=64", ["d_modle", "d_model"]),  # typo: lists valid keys
    ("--config.modl.d_model=64", ["modl", "model"]),
    ("--config.model.d_model=abc", ["model.d_model", "integer"]),
    ("--config.train.tokens=1.5", ["train.tokens", "integer"]),
    ("model.d_model", ["must look like"]),
    ("--config.train.tokens=inf", ["train.tokens", "integer"]),
    ("--config.train.tokens=nan", ["train.tokens", "integer"]),
])
def test_bad_overrides_are_named(override, words):
    with pytest.raises(cfg_lib.ConfigError) as e:
        cfg_lib.load(BASE, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("--config.model.n_heads=3", ["d_model", "n_heads"]),  # 128 % 3
    ("--config.model.n_kv_heads=3", ["n_kv_heads"]),  # 4 % 3
    ("--config.model.d_model=-8", ["d_model"]),
    ("--config.model.mlp=relu", ["model.mlp", "swiglu"]),
    ("--config.model.vocab_size=1000", ["vocab_size", "256"]),  # bytes tokenizer has 256
    ("--config.model.max_seq_len=64", ["seq_len", "max_seq_len"]),  # seq_len 128 > RoPE table
    ("--config.train.batch_size=0", ["train.batch_size", "positive"]),
    ("--config.train.tokens=100", ["train.tokens", "less than one batch"]),
    ("--config.optim.schedule=linear", ["optim.schedule", "cosine"]),
    ("--config.optim.warmup_steps=100000", ["warmup_steps"]),
    ("--config.data.tokenizer=bpe:abc", ["data.tokenizer", "bpe:8192"]),
    ("--config.optim.lr=inf", ["optim.lr"]),
])
def test_impossible_configs_fail_validation(override, words):
    c = cfg_lib.resolve(cfg_lib.load(BASE, [override]))
    with pytest.raises(ValueError) as e:
        cfg_lib.validate(c)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_base_config_is_valid_and_resolves():
    c = cfg_lib.resolve(cfg_lib.load(BASE))
    cfg_lib.validate(c)
    assert c.model.max_seq_len == c.data.seq_len
    assert c.model.d_ff > 0


def test_json_round_trip_and_unknown_key(tmp_path):
    c = cfg_lib.resolve(cfg_lib.load(BASE, ["--config.model.d_model=64"]))
    p = tmp_path / "config.json"
    p.write_text(json.dumps(c.to_dict()))
    again = cfg_lib.load(p)
    assert cfg_lib.config_hash(again) == cfg_lib.config_hash(c)
    bad = c.to_dict()
    bad["model"]["widht"] = 3
    p.write_text(json.dumps(bad))
    with pytest.raises(cfg_lib.ConfigError, match="widht"):
        cfg_lib.load(p)


def test_hash_changes_with_config():
    a = cfg_lib.load(BASE)
    b = cfg_lib.load(BASE, ["--config.seed=1"])
    assert cfg_lib.config_hash(a) != cfg_lib.config_hash(b)
    assert cfg_lib.config_hash(a) == cfg_lib.config_hash(cfg_lib.load(BASE))


def test_wsd_decay_must_fit_after_warmup():
    c = cfg_lib.resolve(cfg_lib.load(BASE, ["--config.optim.schedule=wsd", "--config.optim.decay_fraction=0.9",
                                            "--config.optim.warmup_steps=200"]))
    with pytest.raises(ValueError, match="WSD decay"):
        cfg_lib.validate(c)


def test_execution_details_are_not_part_of_the_identity():
    a = cfg_lib.load(BASE)
    b = cfg_lib.load(BASE, ["--config.mesh.data=2", "--config.checkpoint.every_steps=7",
                            "--config.data.cache_dir=/elsewhere"])
    assert cfg_lib.config_hash(a) == cfg_lib.config_hash(b)
    c = cfg_lib.load(BASE, ["--config.data.num_workers=2"])  # changes the iterator state: identity
    assert cfg_lib.config_hash(a) != cfg_lib.config_hash(c)
