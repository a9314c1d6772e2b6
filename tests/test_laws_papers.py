"""The data-constrained law (Muennighoff et al. 2023) and the broken power law (Caballero et al.
2022): log-space predictions against direct numpy formulas, recovery of known parameters from
synthetic data, and clear errors on bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import fit, laws

BASE = (1.869, 520.8, 1487.7, 0.3527, 0.3527)  # Muennighoff et al.'s C4 base law (E, A, B, α, β)


def _pred(law, theta, *cols):
    logx = np.stack([np.log(c) for c in cols], axis=1)
    with jax.enable_x64(True):
        return np.exp(np.asarray(law.log_predict(jnp.asarray(theta), jnp.asarray(logx))))


def _direct_dc(N, D, U, E, A, B, alpha, beta, rd, rn):
    """The data README's formula, written independently in numpy."""
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n_opt_of_u = G**2 * U  # N_opt at the C where D_opt = U: N_opt/D_opt = G² at every C
    UN = np.minimum(N, n_opt_of_u)
    RD, RN = D / U - 1, N / UN - 1
    Dp = U + U * rd * (1 - np.exp(-RD / rd))
    Np = UN + UN * rn * (1 - np.exp(-RN / rn))
    return E + A / Np**alpha + B / Dp**beta


def _dc_points(rng, n=120):
    N = np.exp(rng.uniform(np.log(1e7), np.log(9e9), n))
    U = np.exp(rng.uniform(np.log(1e8), np.log(2e11), n))
    D = U * np.exp(rng.uniform(0, np.log(500), n))  # 1 to 500 epochs
    return N, D, U


def test_data_constrained_matches_direct_formula():
    N, D, U = _dc_points(np.random.default_rng(0), 50)
    rd, rn = 15.387756, 5.309743
    direct = _direct_dc(N, D, U, *BASE, rd, rn)
    fixed = laws.data_constrained(BASE)
    np.testing.assert_allclose(_pred(fixed, np.log([rd, rn]), N, D, U), direct, rtol=1e-12)
    E, A, B, al, be = BASE
    full = laws.get("data-constrained")
    theta = [np.log(A), np.log(B), np.log(E), al, be, np.log(rd), np.log(rn)]
    np.testing.assert_allclose(_pred(full, theta, N, D, U), direct, rtol=1e-12)
    assert full.to_reported(np.array(theta))["R_D*"] == pytest.approx(rd, rel=1e-12)
    # Unique data (D = U, N below N_opt(U)): the law is the base Chinchilla law.
    n, d = np.array([1e8]), np.array([1e11])
    np.testing.assert_allclose(_pred(fixed, np.log([rd, rn]), n, d, d),
                               E + A / n**al + B / d**be, rtol=1e-12)


def test_data_constrained_recovers_r_star_from_synthetic_runs():
    rng = np.random.default_rng(1)
    N, D, U = _dc_points(rng)
    true = (20.0, 4.0)
    # 0.3% multiplicative noise, about the seed noise of LM losses; 120 runs.
    loss = _direct_dc(N, D, U, *BASE, *true) * np.exp(rng.normal(0, 3e-3, len(N)))
    law = laws.data_constrained(BASE)
    f = fit.fit(law, {"N": N, "D": D, "U": U}, loss)
    # Measured recovery on this draw: both within 10%; 25% leaves room for other draws while a
    # wrong formula or a transform error (e.g. R* vs log R*) would be off by far more.
    assert f.params["R_D*"] == pytest.approx(true[0], rel=0.25)
    assert f.params["R_N*"] == pytest.approx(true[1], rel=0.25)


def _direct_bnsl(x, a, b, c0, c1, d1, f1):
    return a + b * x ** (-c0) * (1 + (x / d1) ** (1 / f1)) ** (-c1 * f1)


def test_bnsl_matches_direct_formula_and_recovers_parameters():
    law = laws.get("bnsl")
    assert law.inputs == ("D",) and law.start_grid().shape[1] == law.n_params == 6
    p = dict(a=0.05, b=3.0, c0=0.05, c1=1.5, d1=600.0, f1=0.3)
    x = np.geomspace(100, 5000, 40)
    theta = [np.log(p["a"]), np.log(p["b"]), p["c0"], p["c1"], np.log(p["d1"]), np.log(p["f1"])]
    y = _direct_bnsl(x, **p)
    np.testing.assert_allclose(_pred(law, theta, x), y, rtol=1e-12)
    f = fit.fit(law, {"D": x}, y)
    # Noiseless data: the curve is recovered to 1e-4 everywhere; the break's location and the
    # exponent change, which shape the curve most, to 2% (a, b, c0 trade off more, not tested).
    np.testing.assert_allclose(f.predict(D=x), y, rtol=1e-4)
    assert f.params["d1"] == pytest.approx(p["d1"], rel=0.02)
    assert f.params["c1"] == pytest.approx(p["c1"], rel=0.02)


def test_bad_input_errors():
    N, D, U = _dc_points(np.random.default_rng(2), 20)
    with pytest.raises(ValueError, match="needs input column 'U'"):
        fit.fit(laws.data_constrained(BASE), {"N": N, "D": D}, D / D)
    x = np.geomspace(100, 1000, 6)  # 6 points, 6 parameters
    with pytest.raises(ValueError, match=r"has 6 parameters .* at least 8 points"):
        fit.fit(laws.get("bnsl"), {"D": x}, _direct_bnsl(x, 0.1, 3, 0.1, 1, 300, 0.5))
    with pytest.raises(ValueError, match="var='Q'"):
        laws.bnsl("Q")
