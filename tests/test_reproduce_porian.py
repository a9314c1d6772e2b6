"""`scaling reproduce porian`: Approach 2 per set-up on Porian et al.'s isoFLOP grids next to their
exponents (porian2024_exponent_fits.csv). Methods differ (their Akima interpolation vs our
parabolas in log N), so the tolerances below are measured differences, stated per check."""
import pytest

from analysis import cli, reproduce_porian as rp


def test_porian_exponents(shared_data, tmp_path):
    # 100 bootstrap resamples: enough to test interval overlap; the CLI default is 1000.
    s = rp.run_porian(shared_data / "porian2024_isoflop_points.csv", tmp_path, n_bootstrap=100)
    rs = {(r.dataset, r.label): r for r in s["results"]}
    assert len(rs) == 15 and all(r.a is not None for r in rs.values())
    # The walk of their Figure 1: Kaplan's set-up gives a > 0.8, the fully corrected one a < 0.53,
    # in both data sets (ours: rw 0.865 -> 0.514, owt2 0.843 -> 0.511).
    for ds in ("rw", "owt2"):
        assert rs[(ds, "Reproducing Kaplan et al.")].a > 0.8
        assert rs[(ds, "Optimizer tuning (no decay)")].a < 0.53
    # Every set-up within 0.08 of theirs (measured max |diff| 0.073, rw "Counting last layer
    # FLOPs", where 3 of 12 budgets have no interior parabola minimum and the wide, asymmetric
    # curves pull the parabola's vertex; Akima follows the curve near its minimum).
    for r in rs.values():
        assert abs(r.a - r.a_theirs) < 0.08, r.label
    # Where the budgets are well sampled around their minima the methods agree: our point
    # estimate lies inside their 95% interval (measured).
    for key in [("rw", "Cosine decay"), ("rw", "Kaplan Adjusted"),
                ("rw", "Cosine decay (attention FLOPs)"), ("owt2", "Correcting warmup"),
                ("owt2", "Cosine decay"), ("owt2", "Optimizer tuning (no decay)")]:
        lo, hi = rs[key].a_theirs_ci
        assert lo <= rs[key].a <= hi, key


def test_missing_exponent_file(tmp_path, capsys):
    pts = tmp_path / "points.csv"
    pts.write_text("source_file,dataset,label,flops,n_params,loss\nf,rw,x,1e16,1e6,4.0\n")
    assert cli.reproduce_main(["porian", "--data", str(pts), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "porian2024_exponent_fits.csv" in err and "Traceback" not in err
