"""Kaplan power laws: recovery of known exponents (with and without E), frontier."""
import numpy as np
import pytest

from analysis import kaplan


@pytest.mark.parametrize("var", ["N", "D", "C"])
def test_recovers_published_exponents(var):
    (xc_name, x_c), (al_name, alpha) = kaplan.KAPLAN_2020[var].items()
    x = np.geomspace(1e5, 1e9, 30) if var != "C" else np.geomspace(1e-5, 1e1, 30)
    rng = np.random.default_rng(0)
    L = (x_c / x) ** alpha * np.exp(0.005 * rng.standard_normal(x.shape))
    r = kaplan.fit_power_law(var, x, L, n_bootstrap=200 if var == "N" else 0)
    if var == "N":  # one bootstrap is enough here; coverage is tested in test_fit.py
        lo, hi = r.ci[al_name]
        assert lo < alpha < hi
    # 0.5% noise over 4-6 decades: the slope is determined to ~0.002 (CI half-width).
    assert r.params[al_name] == pytest.approx(alpha, abs=3e-3)
    assert np.log(r.params[xc_name]) == pytest.approx(np.log(x_c), rel=0.05)


def test_recovers_exponent_with_irreducible_term():
    N = np.geomspace(1e6, 1e11, 30)
    alpha, n_c, E = 0.34, 1e10, 1.7  # strong curvature: the loss flattens towards E
    L = E + (n_c / N) ** alpha
    L = L * np.exp(0.002 * np.random.default_rng(1).standard_normal(N.shape))
    r = kaplan.fit_n(N, L, irreducible=True, n_bootstrap=200)
    assert r.ci["alpha_N"][0] < alpha < r.ci["alpha_N"][1]
    assert r.ci["E"][0] < E < r.ci["E"][1]
    assert r.params["alpha_N"] == pytest.approx(alpha, rel=0.1)
    # Without E the same data are fitted by a much shallower (wrong) exponent:
    assert kaplan.fit_n(N, L).params["alpha_N"] < 0.7 * alpha


def test_frontier():
    C = np.array([1, 2, 2, 3, 4, 5.0])
    L = np.array([5, 4, 4.5, 4.2, 3, 3.1])
    c, l = kaplan.frontier(C, L)
    np.testing.assert_array_equal(c, [1, 2, 4])
    np.testing.assert_array_equal(l, [5, 4, 3])
    with pytest.raises(ValueError, match="equal length"):
        kaplan.frontier(C, L[:3])
