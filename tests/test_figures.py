"""analysis.figures: every figure writes a non-empty PNG and PDF; the frontier helper is right."""
import numpy as np
import pytest

from analysis import figures

PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _check(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000  # a drawn figure, not a blank canvas
    assert pdf.startswith(PDF_MAGIC) and len(pdf) > 2_000


def _law(n, d):
    return 1.82 + 482.0 / n**0.348 + 2085.0 / d**0.366


@pytest.fixture
def grid():
    """Three isoFLOP budgets of 6 runs each from a known L(N, D)."""
    budgets = []
    for c in (1e18, 1e19, 1e20):
        n = np.geomspace(c**0.5 / 300, c**0.5 / 10, 6)
        loss = _law(n, c / (6 * n))
        p = np.polyfit(np.log(n), loss, 2)
        xs = np.linspace(np.log(n[0]), np.log(n[-1]), 30)
        x_opt = -p[1] / (2 * p[0])
        budgets.append({"C": c, "n_params": n, "loss": loss, "curve_n": np.exp(xs),
                        "curve_loss": np.polyval(p, xs), "n_opt": np.exp(x_opt),
                        "loss_opt": np.polyval(p, x_opt)})
    return budgets


def test_isoflop_and_allocation(tmp_path, grid):
    grid[0]["refused"] = "minimum at the edge"
    _check(figures.isoflop_curves(grid, tmp_path / "sub" / "iso"))
    c = np.array([b["C"] for b in grid])
    n = np.array([b["n_opt"] for b in grid])
    line_c = np.geomspace(1e17, 1e21, 20)
    line_n = 0.1 * line_c**0.5
    line = {"c": line_c, "n": line_n, "d": line_c / (6 * line_n), "label": "fit",
            "band_n": (line_n / 2, line_n * 2), "band_d": (line_c / (12 * line_n), line_c / (3 * line_n))}
    plain = {"c": line_c, "n": line_n * 2, "d": line_c / (12 * line_n), "label": "other"}
    _check(figures.allocation(c, n, c / (6 * n), tmp_path / "alloc", lines=[line, plain]))


def test_loss_contours_compute_residuals_kaplan(tmp_path, grid):
    n = np.concatenate([b["n_params"] for b in grid])
    c = np.concatenate([np.full(len(b["n_params"]), b["C"]) for b in grid])
    loss = np.concatenate([b["loss"] for b in grid])
    fc = np.geomspace(1e17, 1e21, 10)
    _check(figures.loss_contours(_law, tmp_path / "contours", n_params=n, c=c, loss=loss,
                                 frontier_c=fc, frontier_n=0.1 * fc**0.5))
    _check(figures.loss_vs_compute(c, loss, tmp_path / "lvc", frontier=(c[:3], loss[:3]),
                                   n_params=n, fit_c=fc,
                                   fit_loss=2 + fc**-0.05))
    _check(figures.residuals(c, {"a": np.log(loss / _law(n, c / (6 * n))), "b": loss * 0.01},
                             tmp_path / "res"))
    _check(figures.kaplan(n, loss, tmp_path / "kaplan", used=[0, 3, 5], fit_x=n, fit_loss=loss))
