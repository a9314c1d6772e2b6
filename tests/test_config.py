"""Config loading, overrides and validation: errors name the key, the value and what is valid."""
import json
import pathlib
import subprocess
import sys

import pytest

from scaling import config as cfg_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "base.py"


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


def test_a_config_file_holds_only_what_differs_from_the_defaults(tmp_path):
    """experiments/base.py changes nothing; a partial file is laid over defaults(), key by key."""
    assert cfg_lib.load(BASE).to_dict() == cfg_lib.defaults().to_dict()
    p = tmp_path / "small.py"
    p.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                 "    c.model = dict(d_model=64)\n    c.optim = dict(lr=1)\n    return c\n")
    c = cfg_lib.load(p, ["--config.train.tokens=2e5"])
    expect = cfg_lib.defaults()
    expect.model.d_model, expect.optim.lr, expect.train.tokens = 64, 1.0, 200_000
    assert c.to_dict() == expect.to_dict()
    assert isinstance(c.optim.lr, float)  # an int where the default is a float becomes a float, as before


@pytest.mark.parametrize("body, words", [
    ("c.model = dict(d_modle=64)", ["small.py", "model.d_modle", "d_model"]),
    ("c.train = dict(tokens=2.5e6)", ["small.py", "train.tokens=2500000.0", "int"]),
    ("c.model = 3", ["small.py", "model=3", "section"]),
    ("c.sweep = dict(kind='grid')", ["small.py", "sweep config", "scaling sweep"]),
])
def test_bad_config_files_are_named(tmp_path, body, words):
    p = tmp_path / "small.py"
    p.write_text(f"import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                 f"    {body}\n    return c\n")
    with pytest.raises(cfg_lib.ConfigError) as e:
        cfg_lib.load(p)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_meta_labels_are_outside_the_identity_and_survive_json(tmp_path):
    a = cfg_lib.resolve(cfg_lib.load(BASE))
    b = cfg_lib.resolve(cfg_lib.load(BASE, ["--config.meta.budget=1e18"]))
    assert b.meta.budget == 1e18 and cfg_lib.config_hash(a) == cfg_lib.config_hash(b)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(b.to_dict()))
    assert cfg_lib.load(p).meta.budget == 1e18
    b.meta.budget = -1.0
    with pytest.raises(cfg_lib.ConfigError, match="meta.budget=-1.0"):
        cfg_lib.validate(b)


def test_every_problem_is_listed_at_once():
    c = cfg_lib.resolve(cfg_lib.load(BASE, ["--config.model.mlp=relu", "--config.optim.schedule=linear",
                                            "--config.train.batch_size=0"]))
    with pytest.raises(cfg_lib.ConfigError) as e:
        cfg_lib.validate(c)
    for key in ("model.mlp", "optim.schedule", "train.batch_size"):
        assert key in str(e.value)


def test_valid_values_and_rules_are_defined_once_here():
    """The model and the optimizer use the config module's definitions (the same objects)."""
    from scaling import model, optim

    assert model.validate_model_config is cfg_lib.validate_model_config
    assert model.PARAMETRIZATIONS is cfg_lib.PARAMETRIZATIONS
    assert optim.decay_steps is cfg_lib.decay_steps and optim.SCHEDULES is cfg_lib.SCHEDULES


def test_validation_imports_no_jax():
    code = ("import sys\nfrom scaling import config as c\nc.validate(c.resolve(c.defaults()))\n"
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
