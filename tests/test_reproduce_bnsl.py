"""`scaling reproduce bnsl`: the broken power law on Caballero et al.'s 4-digit addition curve,
fitted on split=fit and scored on the held-out split=extrapolate rows."""
import numpy as np
import pytest

from analysis import cli, laws, reproduce_bnsl as rb

CURVE = "caballero2022_bnsl_4digit_addition.csv"


@pytest.mark.slow
def test_bnsl_extrapolates_and_beats_a_plain_power_law(shared_data, tmp_path):
    # Every 4th of the 1008 default starts (252) and no bootstrap keep the test short; the
    # measured full-grid optimum (objective 2.4976e-6) is reached from this subset too (checked
    # below), so the subset gives the protocol's answer.
    starts = laws.bnsl("D").start_grid()[::4]
    s = rb.run_bnsl(shared_data / CURVE, tmp_path, starts=starts, n_bootstrap=0)
    assert s["n_fit"] == 14 and s["n_extrapolate"] == 3
    bnsl = s["fit_objs"]["BNSL (1 break)"]
    assert bnsl.objective == pytest.approx(2.4976e-6, rel=1e-3)
    # The break sits where the curve turns down (the rows' slope steepens between x = 544 and
    # 608): measured d1 = 613.
    assert 544 < bnsl.params["d1"] < 640
    pred = np.array(s["scores"]["BNSL (1 break)"]["pred_extrapolate"])
    y = np.array(s["y_extrapolate"])
    # Held-out predictions within 3% of the measured cross-entropy (measured: at most 1.4% off);
    # Caballero et al.'s Fig. 4 shows the same near-exact extrapolation.
    np.testing.assert_allclose(pred, y, rtol=0.03)
    bn, pl = (s["scores"][k]["rmsle_extrapolate"] for k in ("BNSL (1 break)", "power law + constant"))
    # RMSLE (their score) recomputed independently from the predictions.
    assert bn == pytest.approx(np.sqrt(np.mean((np.log(1 + pred) - np.log(1 + y)) ** 2)), rel=1e-12)
    # A plain power law cannot follow the break: measured RMSLE 0.52 vs 0.0043; demand 10x.
    assert bn < 0.01 and pl > 10 * bn


def test_bad_split_value(tmp_path, capsys):
    bad = tmp_path / "curve.csv"
    bad.write_text("train_dataset_size,test_cross_entropy,split\n160,2.1,fit\n192,2.0,train\n")
    assert cli.reproduce_main(["bnsl", "--data", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "column 'split' has value(s) ['train']" in err and "Traceback" not in err
