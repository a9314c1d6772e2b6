"""Schedules and the optimizer: warmup, decay over exactly the run, masks, μP multipliers."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scaling import config as cfg_lib
from scaling.optim import decay_mask, make_optimizer, make_schedule, mup_lr_multipliers


def _optim(**kw):
    o = cfg_lib.defaults().optim
    o.update(kw)
    return o


def test_cosine_warms_up_then_reaches_floor_at_last_step():
    o = _optim(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    s = make_schedule(o, total_steps=111)  # steps 0..110 run
    lrs = np.array([float(s(i)) for i in range(111)])
    np.testing.assert_allclose(lrs[:10], (np.arange(10) + 1) / 10, rtol=1e-6)  # linear, first step > 0
    # cosine from 1 at step 10 to the floor 0.1 at step 110, the last step that runs:
    k = np.arange(10, 111)
    expect = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (k - 10) / 100))
    np.testing.assert_allclose(lrs[10:], expect, rtol=1e-5)
    assert lrs[-1] == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_to_the_floor_at_the_last_step():
    o = _optim(lr=2.0, warmup_steps=5, min_lr_ratio=0.0, decay_fraction=0.2, schedule="wsd")
    s = make_schedule(o, total_steps=100)  # steps 0..99 run; 20 decay steps end at step 99
    lrs = np.array([float(s(i)) for i in range(100)])
    assert np.all(lrs[5:80] == pytest.approx(2.0))
    assert np.all(np.diff(lrs[79:]) < 0) and len(lrs[80:]) == 20
    assert lrs[99] == pytest.approx(0.0, abs=1e-6)


def test_decay_mask_excludes_norms_and_embeddings():
    params = {"embedding": jnp.zeros((8, 4)), "blocks": {"w": jnp.zeros((4, 4)), "scale": jnp.zeros(4)},
              "lm_head": jnp.zeros((4, 8))}
    m = decay_mask(params, decay_embeddings=False)
    assert m == {"embedding": False, "blocks": {"w": True, "scale": False}, "lm_head": False}
    assert decay_mask(params, decay_embeddings=True)["embedding"] is True


def test_mup_scales_hidden_matrices_only():
    params = {"embedding": jnp.zeros((8, 4)), "w": jnp.zeros((4, 4)), "scale": jnp.zeros(4)}
    m = mup_lr_multipliers(params, d_model=512, base_d_model=128)
    assert m == {"embedding": 1.0, "w": 0.25, "scale": 1.0}


def test_adamw_first_step_matches_hand_computation():
    # AdamW's first update is lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|) + lr * wd * w.
    c = cfg_lib.defaults()
    c.optim.update(dict(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=0.0, eps=1e-12, schedule="constant"))
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]]), "scale": jnp.array([1.0, 1.0])}
    grads = {"w": jnp.array([[0.5, -0.1], [2.0, -3.0]]), "scale": jnp.array([1.0, -1.0])}
    tx, _ = make_optimizer(c, params, total_steps=10)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.1 * (np.sign(grads["w"]) + 0.5 * params["w"]), rtol=1e-5)
    np.testing.assert_allclose(upd["scale"], -0.1 * np.sign(grads["scale"]), rtol=1e-5)  # no decay


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_decay_shapes_follow_their_formula_from_the_branch_point(shape):
    # 100 steps, 20 decay steps: steps 1..80 (indices 0..79) run at lr; decay step k = index - 79.
    o = _optim(lr=2.0, warmup_steps=5, min_lr_ratio=0.1, decay_fraction=0.2, schedule="wsd", decay_shape=shape)
    s = make_schedule(o, total_steps=100)
    lrs = np.array([float(s(i)) for i in range(100)])
    assert cfg_lib.branch_step(o, 100) == 80 and np.all(lrs[5:80] == 2.0)
    t = (np.arange(79, 100) - 79) / 20
    expect = 0.2 + 1.8 * ((1 - t) if shape == "linear" else (1 - np.sqrt(t)))
    np.testing.assert_allclose(lrs[79:], expect, rtol=1e-6)
    # a constant-schedule trunk with the same warmup runs at exactly the same lr up to the branch point
    trunk = make_schedule(_optim(lr=2.0, warmup_steps=5, schedule="constant"), total_steps=80)
    assert [float(trunk(i)) for i in range(80)] == list(lrs[:80])
