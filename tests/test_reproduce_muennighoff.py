"""`scaling reproduce muennighoff`: the data-constrained fit on the published runs, checked against
Muennighoff et al.'s R_D*, R_N* (constants in analysis.reproduce_muennighoff)."""
import json
import pathlib

import pytest

from analysis import cli, reproduce_muennighoff as rm

FITSET = "muennighoff2023_c4_runs_rd_rn_fitset.csv"


@pytest.mark.slow
def test_muennighoff_reproduction(shared_data, tmp_path):
    # The default 5 x 5 start grid (the protocol) and 10 bootstrap resamples (only to check that
    # intervals are produced and contain the estimate; the CLI default is 1000). 10 x 3 starts
    # fit the solver's compiled batch of 32 problems, which keeps the test's compile time down.
    s = rm.run_muennighoff(shared_data / FITSET, tmp_path, n_bootstrap=10)
    _check_published_point_is_a_local_minimum_we_reproduce(s)
    _check_valley_is_flat_and_contains_the_published_point(s)
    _check_outputs_written(s)


def _check_published_point_is_a_local_minimum_we_reproduce(summary):
    local, pub = summary["local"], rm.MUENNIGHOFF_2023_R_STAR
    # Refitted from the published point, L-BFGS stays there: measured 15.28 and 5.302 against
    # 15.39 and 5.310. 2% allows for their optimizer's stopping rule and rounding; a different
    # formula (e.g. U_N or R_D defined otherwise) moves the minimum by far more.
    assert local.params["R_D*"] == pytest.approx(pub["R_D*"], rel=0.02)
    assert local.params["R_N*"] == pytest.approx(pub["R_N*"], rel=0.02)
    # Objective at the published point: within 1e-4 (relative) of that local minimum's.
    assert summary["published_objective"] == pytest.approx(local.objective, rel=1e-4)


def _check_valley_is_flat_and_contains_the_published_point(summary):
    ours, prof = summary["fit"], summary["profile"]
    # Our best start reaches an objective at most the published point's (never worse), and the
    # published point lies within 1% of it: the optimum is not unique.
    assert ours.objective <= summary["published_objective"] * (1 + 1e-9)
    assert prof.in_valley(summary["published_objective"])
    # The valley is long: R_D* spans more than a factor 10 within 1% of the best objective
    # (measured 8.1 to the grid's edge 300), R_N* more than a factor 5 (measured 0.79-9.8).
    assert prof.r_d_range[1] / prof.r_d_range[0] > 10
    assert prof.r_n_range[1] / prof.r_n_range[0] > 5
    assert prof.r_d_range[0] <= rm.MUENNIGHOFF_2023_R_STAR["R_D*"] <= prof.r_d_range[1]
    lo, hi = ours.ci["R_N*"]
    assert lo < ours.params["R_N*"] < hi and ours.ci_level == 0.95


def _check_outputs_written(summary):
    for f in summary["files"]:
        assert pathlib.Path(f).is_file(), f
    js = json.loads(open(summary["files"][-1]).read())
    assert js["published"] == rm.MUENNIGHOFF_2023_R_STAR and js["valley"]["published_in_valley"]


def test_cli_bad_data_file(tmp_path, capsys):
    bad = tmp_path / "runs.csv"
    bad.write_text("n_params,tokens_D,val_loss\n1e8,1e9,3.0\n")
    assert cli.reproduce_main(["muennighoff", "--data", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) ['unique_tokens_U']" in err and "Traceback" not in err
