"""analysis.results: sweep directories and CSVs into one table, with honest skip/raise policies.

The run directories here are written by the test in the run-directory contract's format (the
loader's input), not produced by training: that keeps this test independent of the trainer.
"""
import json

import pytest

from analysis import results


def _result(n, d, loss, **over):
    res = {"status": "ok", "error": None, "config_hash": f"h{n}_{d}", "step": d // 1000,
           "tokens": d, "n_params": n, "n_params_nonembed": n - 1000, "n_params_embed": 1000,
           "flops_6nd": 6 * n * d, "flops_6nd_nonembed": 6 * (n - 1000) * d, "flops": 7 * n * d,
           "final_train_loss": loss + 0.1, "final_eval_loss": loss, "final_eval_bpb": loss / 0.69,
           "epochs": 0.5, "wall_time_s": 1.0, "tokens_per_s": 1e3, "mfu": 0.3, "seq_len": 128,
           "batch_size": 8, "model": {"d_model": 64, "n_layers": 2}, "seed": 0,
           "versions": {"jax": "0.10.2"}, "git_sha": "abc123"}
    res.update(over)
    return res


def _write_run(sweep, name, result=None, metrics=None, result_text=None):
    run = sweep / "runs" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 0}))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if result_text is not None:
        (run / "result.json").write_text(result_text)
    elif result is not None:
        (run / "result.json").write_text(json.dumps(result))
    return run


def _evals(n, d, losses):
    k = len(losses)
    return [{"split": "train", "step": 1, "tokens": 10, "loss": 9.0}] + [
        {"split": "eval", "step": i + 1, "tokens": d * (i + 1) // k, "loss": l, "bpb": l / 0.69,
         "flops": 7 * n * d * (i + 1) // k} for i, l in enumerate(losses)]


@pytest.fixture
def sweep(tmp_path):
    """Three good runs, one unfinished, one failed, one with corrupt result.json."""
    s = tmp_path / "sweep"
    for n, d, l in [(2_000_000, 40_000, 3.0), (1_000_000, 20_000, 3.5), (1_000_000, 40_000, 3.2)]:
        _write_run(s, f"n{n}_d{d}", _result(n, d, l), _evals(n, d, [l + 1, l + 0.5, l]))
    _write_run(s, "unfinished", None, _evals(1, 1, [5.0]))
    _write_run(s, "failed", _result(3, 3, float("nan"), status="failed", error="loss is NaN"), [])
    _write_run(s, "corrupt", result_text='{"status": "ok", "tok')
    return s


def test_load_sweep_warns_and_counts_every_skip(sweep):
    with pytest.warns(UserWarning) as rec:
        df = results.load(sweep)
    msg = str(rec[0].message)
    assert "skipped 3 runs" in msg and "1 corrupt" in msg and "1 failed" in msg
    assert "1 unfinished" in msg and "kept 3" in msg and "loss is NaN" in msg
    assert "reaches step 1" in msg  # the unfinished run says how far it got
    assert len(df) == 3 and len(df.attrs["skipped"]) == 3
    # sorted by (n_params, tokens); loss is the held-out eval loss by default
    assert list(df.n_params) == [1_000_000, 1_000_000, 2_000_000]
    assert list(df.tokens) == [20_000, 40_000, 40_000]
    assert list(df.loss) == [3.5, 3.2, 3.0]
    for col in results.PROVENANCE + ("flops", "flops_6nd", "n_params_nonembed", "model_d_model"):
        assert col in df.columns, col
    assert df.run_dir[0].endswith("n1000000_d20000") and df.git_sha[0] == "abc123"
    with pytest.warns(UserWarning):
        train = results.load(sweep, loss="train")
    assert list(train.loss) == pytest.approx([3.6, 3.3, 3.1])


def test_load_sweep_raise_lists_every_problem(sweep):
    with pytest.raises(results.RunLoadError) as e:
        results.load(sweep, on_error="raise")
    msg = str(e.value)
    for name in ("unfinished", "failed", "corrupt"):
        assert f"runs/{name}" in msg
    assert "does not parse as JSON" in msg and "on_error='warn'" in msg


def test_load_clean_sweep_does_not_warn(tmp_path, recwarn):
    s = tmp_path / "s"
    _write_run(s, "a", _result(10, 20, 2.0))
    df = results.load(s, on_error="raise")
    assert len(df) == 1 and not recwarn.list and df.attrs["skipped"] == []


def test_load_bad_arguments(tmp_path, sweep):
    with pytest.raises(ValueError, match="on_error='ignore' is not valid"):
        results.load(sweep, on_error="ignore")
    with pytest.raises(ValueError, match="loss='val'"):
        results.load(sweep, loss="val")
    with pytest.raises(FileNotFoundError, match="no such sweep directory"):
        results.load(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="expected a sweep directory or a .csv"):
        results.load(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished runs"):
        results.load(tmp_path / "empty")


def test_result_missing_keys_is_corrupt(tmp_path):
    s = tmp_path / "s"
    res = _result(10, 20, 2.0)
    del res["n_params"]
    _write_run(s, "a", res)
    _write_run(s, "b", _result(10, 40, 1.9))
    with pytest.raises(results.RunLoadError, match=r"lacks keys \['n_params'\]"):
        results.load(s, on_error="raise")
    with pytest.warns(UserWarning, match="1 corrupt"):
        assert len(results.load(s)) == 1


def test_load_curves(sweep):
    with pytest.warns(UserWarning):
        cur = results.load_curves(sweep)
    assert len(cur) == 9  # 3 finished runs x 3 eval rows; train rows ignored
    big = cur[cur.n_params == 2_000_000]
    assert list(big.tokens) == [13_333, 26_666, 40_000] and list(big.loss) == [4.0, 3.5, 3.0]
    assert (big.run_tokens == 40_000).all()
    assert (cur.flops_6nd == 6 * cur.n_params * cur.tokens).all()


def test_load_curves_corrupt_metrics_line(tmp_path):
    s = tmp_path / "s"
    run = _write_run(s, "a", _result(10, 20, 2.0), _evals(10, 20, [2.5, 2.0]))
    _write_run(s, "b", _result(10, 40, 1.9), _evals(10, 40, [1.9]))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"split": "eval", "st\n')
    with pytest.raises(results.RunLoadError, match="metrics.jsonl line 4 does not parse"):
        results.load_curves(s, on_error="raise")
    with pytest.warns(UserWarning, match="skipped 1 runs"):
        assert len(results.load_curves(s)) == 1


def test_csv(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("n_params,tokens,loss,flops\n1e6,2e7,3.0,1.3e14\n2e6,2e7,2.9,2.5e14\n"
                 "3e6,2e7,nan,3e14\n4e6,-1,2.5,4e14\n")
    with pytest.warns(UserWarning, match=r"skipped 2 CSV rows \(2 bad value\); kept 2"):
        df = results.load(p)
    assert list(df.loss) == [3.0, 2.9] and list(df.run_dir) == [f"{p}:2", f"{p}:3"]
    assert df.flops_6nd[1] == 6 * 2e6 * 2e7 and df.flops[1] == 2.5e14
    with pytest.raises(results.RunLoadError, match="line 4"):
        results.load(p, on_error="raise")


def test_csv_missing_column_names_it(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("n_params,D,loss\n1e6,2e7,3.0\n")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['tokens'\].*found columns"):
        results.load(p)


def test_budget_from_the_runs_own_files_plan_selects_runs(tmp_path):
    """The nominal budget comes from the run (result.json, else config.json's meta.budget), never from
    launch's manifest; the manifest says which runs belong: planned-but-absent runs are counted, run
    directories outside the plan (another sweep, an edited sweep file) are listed and not loaded."""
    s = tmp_path / "s"
    _write_run(s, "C1e13-a", _result(10, 20, 2.0, budget=1e13))
    b = _write_run(s, "C1e13-b", _result(20, 10, 2.1))
    (b / "config.json").write_text(json.dumps({"seed": 0, "meta": {"budget": 1e13}}))
    _write_run(s, "stale-run", _result(30, 10, 1.0))
    (s / "sweep.json").write_text(json.dumps({"runs": [
        {"run_id": "C1e13-a"}, {"run_id": "C1e13-b"}, {"run_id": "C3e13-c"}]}))
    with pytest.warns(UserWarning) as caught:
        df = results.load(s)
    text = "\n".join(str(w.message) for w in caught)
    assert "C3e13-c: unfinished: planned in sweep.json" in text
    assert "1 run directories are not in the sweep's plan (sweep.json) and were not loaded: stale-run" in text
    assert list(df.budget) == [1e13, 1e13] and df.attrs["unplanned"] == [str(s / "runs" / "stale-run")]


def test_result_that_is_a_list_and_corrupt_manifest_name_the_file(tmp_path):
    s = tmp_path / "s"
    _write_run(s, "a", _result(10, 20, 2.0))
    bad = _write_run(s, "b", result_text="[1, 2]")
    with pytest.raises(results.RunLoadError, match=f"{bad / 'result.json'}: holds a JSON list"):
        results.load(s, on_error="raise")
    (s / "sweep.json").write_text("[]")
    with pytest.raises(ValueError, match=f"{s / 'sweep.json'}: holds a JSON list"):
        results.load(s)


def test_unique_tokens_required_for_the_data_constrained_law(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("n_params,tokens,loss\n1e6,2e7,3.0\n")
    with pytest.raises(ValueError) as e:
        results.load(p, require=(results.UNIQUE_TOKENS,))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "'unique_tokens'" in msg and "data-constrained" in msg
    assert results.UNIQUE_TOKENS not in results.load(p)  # other laws do not need it
    p.write_text("n_params,tokens,loss,unique_tokens,n_params_nonembed\n1e6,2e7,3.0,5e6,8e5\n")
    df = results.load(p, require=(results.UNIQUE_TOKENS,))
    assert df.unique_tokens[0] == 5e6 and df.flops_6nd_nonembed[0] == 6 * 8e5 * 2e7


def test_sweep_unique_tokens_from_epochs(tmp_path):
    """U = D / max(epochs, 1): a run with 4 epochs saw a quarter of D unique; under 1 epoch, all of D."""
    _write_run(tmp_path, "a", _result(1000, 4000, 3.0, epochs=4.0))
    _write_run(tmp_path, "b", _result(2000, 4000, 2.9, epochs=0.5))
    df = results.load(tmp_path, require=(results.UNIQUE_TOKENS,))
    assert list(df.unique_tokens) == [1000.0, 4000.0]
