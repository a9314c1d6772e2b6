"""analysis.reproduce: Chinchilla Approach 3 (Besiroglu et al.'s protocol) and Approach 2 on the
Epoch points, checked against the published numbers in analysis.reproduce's constants block."""
import json

import numpy as np
import pytest

from analysis import laws, reproduce

EPOCH = "epoch_chinchilla_svg_extracted_data.csv"


def _run(shared, out):
    """One reproduction run (the slow part), checked by both _check_* helpers below."""
    # Starts: every 150th of the 4500-start grid (30 starts). Measured: 9 of these starts already
    # reach the plain-Huber optimum (objective 1.01827e-3) that the full grid reaches, so the
    # subset gives the protocol's answer at 1/150 of the cost; the full grid runs in the CLI.
    # Bootstrap: 40 resamples: enough for a rough 95% interval to test overlap with Epoch's
    # (their 4000-resample intervals); the CLI default is 1000.
    starts = laws.chinchilla().start_grid()[::150]
    return reproduce.run_chinchilla(shared / EPOCH, out, starts=starts, n_bootstrap=40, seed=0)


@pytest.mark.slow
def test_chinchilla_reproduction_end_to_end(shared_data, tmp_path):
    s = _run(shared_data, tmp_path)
    _check_approach3(s)
    _check_approach2_and_outputs(s, tmp_path)


def _check_approach3(s):
    ours = s["fit"]
    assert s["n_fit_approach3"] == 240 and s["n_points"] == 245
    ref = reproduce.EPOCH_2024_PLAIN_HUBER  # same protocol, no ML step: the like-for-like target
    for k in ("E", "alpha", "beta"):  # the bar: 0.2% (their values are quoted to 4-5 digits)
        assert ours.params[k] == pytest.approx(ref[k], rel=2e-3), k
    for k in ("A", "B"):  # weakly identified (README pitfalls): 2%
        assert ours.params[k] == pytest.approx(ref[k], rel=2e-2), k
    table = s["table_df"]
    obj = table.loc["objective (sum Huber)"]
    # Our optimum is at least as good as Epoch's quoted parameters on the same points (their
    # values are rounded, so theirs can only be marginally worse, never better).
    assert obj["ours"] <= obj["epoch_plain_huber"] * (1 + 1e-9)
    assert obj["ours"] <= obj["epoch_table1"]
    # Hoffmann's reported law fits these points visibly worse: measured ~4x the objective.
    assert obj["hoffmann_2022"] > 2 * obj["ours"]
    # Bootstrap CIs overlap Epoch's published 95% intervals for every parameter.
    for k, (lo, hi) in reproduce.EPOCH_2024_TABLE1_CI.items():
        our_lo, our_hi = ours.ci[k]
        assert our_lo < ours.params[k] < our_hi, k
        assert our_lo < hi and lo < our_hi, k
    a = table.loc["a = beta/(alpha+beta)"]
    assert a["ours"] == pytest.approx(ref["beta"] / (ref["alpha"] + ref["beta"]), abs=1e-3)


def _check_approach2_and_outputs(s, out):
    a2 = s["approach2_obj"]
    hoff = reproduce.HOFFMANN_2022_TABLE2["approach_2"]
    # All nine budgets keep an interior minimum, and our a agrees with Hoffmann's Approach 2
    # (their 10-90% interval (0.462, 0.534)); our 95% CI overlaps it.
    assert len(a2.points["C"]) == 9 and not a2.dropped
    assert hoff["a_ci"][0] < a2.a < hoff["a_ci"][1]
    assert a2.ci["a"][0] < hoff["a_ci"][1] and hoff["a_ci"][0] < a2.ci["a"][1]
    assert a2.a + a2.b == pytest.approx(1.0)  # D = C/6N makes b = 1 - a
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["approach3"]["params"]["E"] == pytest.approx(s["fit"].params["E"])
    for stem in ("isoflop", "allocation", "contours", "residuals", "loss_vs_compute"):
        for ext in (".png", ".pdf"):
            assert (out / (stem + ext)).stat().st_size > 2000, stem + ext
    assert (out / "table.csv").read_text().count("\n") == 8  # header + 7 rows


def test_isoflop_labels_cluster_on_hoffmann_budgets(shared_data):
    df = reproduce.load_epoch(shared_data / EPOCH)
    labels = reproduce.isoflop_labels(df.flops)
    logc = np.log10(df.flops.to_numpy())
    budgets = np.log10(reproduce.HOFFMANN_2022_ISOFLOP_BUDGETS)
    for i, b in enumerate(budgets):
        m = labels == i
        assert m.sum() >= 8, f"budget {i} has {m.sum()} points"
        # binned points lie close to their nominal budget (digitisation offset <= 0.04 dex)
        assert np.all(np.abs(logc[m] - b) < 0.1)
    # unbinned points are farther than the bin half-width from every cluster centre
    centres = [np.median(logc[labels == i]) for i in range(len(budgets))]
    far = np.min(np.abs(logc[labels < 0, None] - np.array(centres)[None]), axis=1)
    assert np.all(far >= reproduce.BIN_DEX - 0.02)


def test_load_epoch_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="Epoch data not found"):
        reproduce.load_epoch(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Model Size,loss\n1e9,2.5\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Training FLOP'\]"):
        reproduce.load_epoch(bad)
    df = reproduce.load_epoch(shared_data / EPOCH)
    assert len(df) == 245
    assert np.allclose(df.tokens * 6 * df.n_params, df.flops)  # D = C / (6N)
