"""μP coordinate check (scaling.coord_check): flat under μP, growing under SP, a broken μP caught.

Tiny widths (32 and 128, a 4x span) and 4 Adam steps at lr 1e-2 keep this to seconds of compute;
the slope tolerance is coord_check.SLOPE_TOL in log(RMS) per log(width).
"""
import jax
import pytest

from scaling import coord_check, optim

WIDTHS = (32, 128)
STEPS = 4


def _slopes(parametrization, cache_dir):
    setup = coord_check.CoordSetup(widths=WIDTHS, parametrization=parametrization, steps=STEPS, lr=1e-2,
                                   base_d_model=32, batch_size=4, seq_len=32, record_every=STEPS,
                                   cache_dir=cache_dir)
    return coord_check.slopes(coord_check.coord_check(setup), STEPS)


def test_mup_is_flat_and_sp_logits_grow(corpus_cache):
    mup = _slopes("mup", corpus_cache)
    assert coord_check.growing(mup) == [], mup
    sp = _slopes("standard", corpus_cache)
    # SP with Adam: output logits grow with width (Yang et al. 2022: ~width^1 in the limit), and so do
    # hidden activations; both far beyond the tolerance μP meets.
    assert sp["logits"] > 0.5 and sp["logits"] > mup["logits"] + 0.4, (sp, mup)
    assert {"L0.mlp_out", "L1.mlp_out", "L1.resid"} <= set(coord_check.growing(sp)), sp


def test_broken_mup_lr_rule_is_caught(corpus_cache, monkeypatch):
    # One rule wrong: hidden matrices keep the base LR at every width (no base/width factor).
    monkeypatch.setattr(optim, "mup_lr_multipliers", lambda params, d_model, base: jax.tree.map(lambda _: 1.0, params))
    broken = _slopes("mup", corpus_cache)
    assert len(coord_check.growing(broken)) >= 4, broken


def test_walk_mismatch_is_reported(tiny_config, monkeypatch):
    # If the model computed attention differently from the walk, the check must refuse, not mismeasure.
    import jax.numpy as jnp
    from scaling.model import build_model

    from scaling import config as cfg_lib

    model = build_model(cfg_lib.resolve(tiny_config).model, 0, parametrization="mup", base_d_model=16)
    tokens_BT = jnp.arange(2 * 8, dtype=jnp.int32).reshape(2, 8)
    _, agree = coord_check.probe(model, tokens_BT)
    coord_check._check_agreement(agree, 32)  # the real walk agrees with the model
    real = coord_check._attention_logits
    monkeypatch.setattr(coord_check, "_attention_logits", lambda attn, h: (lambda s, c, o: (s, c, 2 * o))(*real(attn, h)))
    _, agree = coord_check.probe(model, tokens_BT)
    with pytest.raises(coord_check.CoordCheckError, match="attn_out rebuilt"):
        coord_check._check_agreement(agree, 32)


def test_cli_names_a_bad_width(tmp_path, capsys):
    from cli import mup
    assert mup.mup_check_main(["--widths", "33,64", "--out", str(tmp_path)]) == 2
    assert "error: width 33 is not a multiple of n_heads=2" in capsys.readouterr().err
    assert mup.lr_transfer_main(["--lrs", "1e-3,1e-2", "--out", str(tmp_path), "--cache-dir", str(tmp_path)]) == 2
    assert "at least three positive learning rates" in capsys.readouterr().err
