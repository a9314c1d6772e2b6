"""Pre-registration loop: forecast file, hashes, score, refusals; the three CLI commands."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis import chinchilla, forecast, forecast_cli
from tests.test_predict import BUDGETS, TRUE, design, true_loss

FAST = ["--n-starts", "32", "--bootstrap", "30"]


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    """inputs.csv: 3 budgets of a noisy sweep; target.csv: the run at N*(C) of 16x the largest."""
    d = tmp_path_factory.mktemp("fc")
    t = design()
    t = t[t.budget <= BUDGETS[2]].copy()
    t["loss"] = t.loss * np.exp(np.random.default_rng(2).normal(0, 0.005, len(t)))
    t[["n_params", "tokens", "loss"]].to_csv(d / "inputs.csv", index=False)
    c = BUDGETS[4]
    n, dd = chinchilla.compute_optimal(TRUE, c)
    pd.DataFrame({"n_params": [float(n)], "tokens": [float(dd)],
                  "loss": [float(true_loss(n, dd))]}).to_csv(d / "target.csv", index=False)
    return d, c


@pytest.fixture(scope="module")
def written(csvs):
    d, c = csvs
    path = d / "forecast.json"
    assert forecast_cli.forecast_main([str(d / "inputs.csv"), "--target-flops", str(c),
                                       "--out", str(path), *FAST]) == 0
    return path


def test_forecast_file_records_inputs_prediction_and_its_own_hash(written, csvs):
    doc = json.loads(written.read_text())
    assert doc["target_flops"] == csvs[1] and doc["law"] == "chinchilla"
    assert doc["factor_beyond_data"] == pytest.approx(16.0)
    assert doc["inputs"]["n_rows"] == 15 and len(doc["inputs"]["runs"]) == 15
    t = forecast_cli.load_table(csvs[0] / "inputs.csv")
    assert doc["inputs"]["sha256"] == forecast.table_hash(t)
    assert doc["inputs"]["sha256"] == forecast.table_hash(t.iloc[::-1])  # order-free
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    assert doc["content_hash"] == forecast.sha256(body)
    o = doc["optimum"]
    assert o["N"]["lo"] < o["N"]["value"] < o["N"]["hi"]
    assert o["L"]["kind"] == "prediction interval (bootstrap + noise)"
    n_true, _ = chinchilla.compute_optimal(TRUE, csvs[1])
    assert o["N"]["value"] == pytest.approx(float(n_true), rel=0.5)


def test_score_a_run_at_the_target(written, csvs, capsys):
    d, _ = csvs
    assert forecast_cli.score_main([str(written), str(d / "target.csv")]) == 0
    out = capsys.readouterr().out
    assert "inputs verified" in out and "error" in out
    s = forecast.score(written, forecast_cli.load_table(d / "target.csv"))[0]
    assert s.rel_error == pytest.approx(s.predicted / s.measured - 1)
    assert s.inside == (s.lo <= s.measured <= s.hi)
    assert abs(s.rel_error) < 0.03  # 0.5% noise, 16x beyond: the fit is close to the law


def test_hand_edited_forecast_is_refused(written, csvs, tmp_path, capsys):
    doc = json.loads(written.read_text())
    doc["optimum"]["L"]["hi"] *= 1.1
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    assert forecast_cli.score_main([str(edited), str(csvs[0] / "target.csv")]) == 2
    err = capsys.readouterr().err
    assert "edited after it was written" in err and len(err.strip().splitlines()) == 1


def test_changed_inputs_are_refused(written, csvs):
    t = forecast_cli.load_table(csvs[0] / "inputs.csv")
    doc = forecast.load_forecast(written)
    forecast.verify_inputs(doc, t)  # unchanged: accepted
    t2 = t.copy()
    t2.loc[3, "loss"] *= 1.001
    with pytest.raises(ValueError, match="inputs changed after the forecast was written"):
        forecast.verify_inputs(doc, t2)
    with pytest.raises(ValueError, match="fitted run.* missing"):
        forecast.verify_inputs(doc, t.iloc[1:])


def test_run_of_another_config_is_refused(csvs, tmp_path):
    d, c = csvs
    path = tmp_path / "f.json"
    t = forecast_cli.load_table(d / "inputs.csv")
    doc = forecast.write_forecast(t, c, path, n_bootstrap=20, starts=np.array([[5., 7., 0.5, .3, .3]]),
                                  make_config=lambda n, dd: {"N": round(n), "D": round(dd)},
                                  hash_config=forecast.sha256)
    assert doc["config"]["N"] == round(doc["optimum"]["N"]["value"])
    run = forecast_cli.load_table(d / "target.csv").assign(config_hash="f" * 64)
    with pytest.raises(ValueError, match="not the forecast's planned"):
        forecast.score(path, run)
    ok = run.assign(config_hash=doc["config_hash"])
    assert len(forecast.score(path, ok)) == 1
    with pytest.raises(ValueError, match="exists; a forecast is frozen"):
        forecast.write_forecast(t, c, path)


def test_bad_inputs_give_one_line_errors(csvs, tmp_path, capsys):
    d, c = csvs
    one = tmp_path / "one.csv"
    design()[design().budget == BUDGETS[0]][["n_params", "tokens", "loss"]].to_csv(one, index=False)
    cases = [
        (forecast_cli.forecast_main, [str(one), "--target-flops", "1e20", "--out",
                                      str(tmp_path / "a.json")], "needs at least 2 budgets"),
        (forecast_cli.forecast_main, [str(d / "inputs.csv"), "--target-flops", "1e16", "--out",
                                      str(tmp_path / "b.json")], "is not above the largest budget"),
        (forecast_cli.backtest_main, [str(one), "--law", "chinchilla"], "needs at least 3 budgets"),
        (forecast_cli.backtest_main, [str(d / "inputs.csv"), "--law", "chinchilla",
                                      "--group-by", "label"], "no column(s) ['label']"),
        (forecast_cli.score_main, [str(tmp_path / "none.json"), str(one)], "no such forecast file"),
        (forecast_cli.forecast_main, [str(d / "inputs.csv"), "--target-flops", "-3",
                                      "--out", "x"], "not a positive number"),
    ]
    for main, argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_score_needs_a_run_at_the_target(written, csvs):
    with pytest.raises(ValueError, match="no run at the forecast's target"):
        forecast.score(written, forecast_cli.load_table(csvs[0] / "inputs.csv"))


def test_backtest_cli_writes_tables_summary_and_figure(csvs, tmp_path, capsys):
    d, _ = csvs
    t = design()
    t["setup"] = "a"
    t2 = t.assign(setup="b", loss=t.loss * 1.01)
    src = tmp_path / "two.csv"
    pd.concat([t, t2])[["n_params", "tokens", "loss", "setup"]].to_csv(src, index=False)
    out = tmp_path / "bt"
    assert forecast_cli.backtest_main([str(src), "--law", "chinchilla", "--group-by", "setup",
                                       "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "== a:" in text and "== b:" in text and "coverage" in text
    summary = json.loads((out / "backtest.json").read_text())
    assert set(summary["groups"]) == {"a", "b"}
    rows = pd.read_csv(out / "a.csv")
    assert len(rows) == (15 + 10 + 5) + (3 + 2 + 1)  # runs and optima above cutoffs 2..4
    assert (out / "a.png").exists() and (out / "b.pdf").exists()


def test_epoch_style_csv_without_tokens(tmp_path):
    src = tmp_path / "e.csv"
    pd.DataFrame({"Model Size": [1e6, 2e6], "Training FLOP": [6e12, 6e12],
                  "loss": [3.0, 2.9]}).to_csv(src, index=False)
    t = forecast_cli.load_table(src)
    assert np.allclose(t.tokens, [1e6, 5e5]) and list(t.run_dir) == [f"{src}:2", f"{src}:3"]
