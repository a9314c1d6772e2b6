"""Functional forms: log-space predictions against direct numpy formulas; names and grids."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import laws


def _pred(law, theta, *cols):
    logx = np.stack([np.log(c) for c in cols], axis=1)
    with jax.enable_x64(True):
        return np.exp(np.asarray(law.log_predict(jnp.asarray(theta), jnp.asarray(logx))))


def test_chinchilla_matches_direct_formula():
    law = laws.chinchilla()
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. (2022)
    N = np.array([1e7, 3e8, 7e10])
    D = np.array([1e9, 2e10, 1.4e12])
    theta = [np.log(A), np.log(B), np.log(E), alpha, beta]
    direct = E + A / N**alpha + B / D**beta
    # float64 end to end: agreement to rounding (1e-12 relative).
    np.testing.assert_allclose(_pred(law, theta, N, D), direct, rtol=1e-12)
    rep = law.to_reported(np.array(theta))
    assert set(rep) == {"E", "A", "B", "alpha", "beta"}
    np.testing.assert_allclose([rep["E"], rep["A"], rep["B"]], [E, A, B], rtol=1e-12)


def test_chinchilla_grid_is_the_published_4500_starts():
    g = laws.chinchilla().start_grid()
    assert g.shape == (4500, 5)
    a, b, e, al, be = g.T
    assert sorted(set(a)) == [0, 5, 10, 15, 20, 25] and sorted(set(b)) == sorted(set(a))
    assert sorted(set(e)) == [-1, -0.5, 0, 0.5, 1]
    assert sorted(set(al)) == [0, 0.5, 1, 1.5, 2] and sorted(set(be)) == sorted(set(al))


@pytest.mark.parametrize("var", ["N", "D", "C"])
@pytest.mark.parametrize("irreducible", [False, True])
def test_kaplan_matches_direct_formula(var, irreducible):
    law = laws.kaplan(var, irreducible)
    x_c, alpha, E = 8.8e13, 0.076, 1.2  # Kaplan et al. (2020) L(N): N_c = 8.8e13, α_N = 0.076
    x = np.array([1e6, 1e8, 1e10])
    theta = [alpha * np.log(x_c), alpha] + ([np.log(E)] if irreducible else [])
    direct = (x_c / x) ** alpha + (E if irreducible else 0.0)
    np.testing.assert_allclose(_pred(law, theta, x), direct, rtol=1e-12)
    rep = law.to_reported(np.array(theta))
    np.testing.assert_allclose(rep[f"{var}_c"], x_c, rtol=1e-10)
    assert law.start_grid().shape[1] == law.n_params == len(law.param_names)


def test_get_by_name_and_unknown_name():
    assert laws.get("chinchilla") is laws.chinchilla()
    assert laws.get("kaplan-d+e").param_names == ("a", "alpha", "e")
    with pytest.raises(ValueError, match="unknown law 'kaplan-x'.*valid: chinchilla"):
        laws.get("kaplan-x")
    with pytest.raises(ValueError, match="var='Q'"):
        laws.kaplan("Q")
