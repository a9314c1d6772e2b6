"""Trackers (scaling/tracking.py): a tiny sweep's runs read back from TensorBoard's HParams data (with
TensorBoard's own HParams backend) and from W&B offline files; a failing tracker never loses a run."""
import importlib.util
import io
import json
import os

import pytest

from scaling import accounting, rundir, tracking
from scaling import config as cfg_lib
from scaling.metrics import MetricsWriter
from scaling.train import train


def _need(module: str) -> None:
    """The test extra installs tensorboard and wandb; CI must have them, elsewhere the test skips."""
    if importlib.util.find_spec(module) is None:
        msg = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _session_groups(logdir: str, **col_filter) -> dict:
    """What TensorBoard's HParams view lists for `logdir`: {session group: (hparams, metrics)},
    through the plugin's own backend (the handler behind its /session_groups route)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    tb = base_plugin.TBContext(logdir=logdir, multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
    cols = [api_pb2.ColParams(hparam=k, filter_interval=api_pb2.Interval(min_value=lo, max_value=hi))
            for k, (lo, hi) in col_filter.items()]
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, col_params=cols,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING])
    response = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request).run()
    out = {}
    for g in response.session_groups:
        hp = {k: v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value")
              else v.bool_value for k, v in g.hparams.items()}
        metrics = {m.name.tag: m.value for m in g.metric_values}
        out[g.name] = (hp, metrics, [api_pb2.Status.Name(s.status) for s in g.sessions])
    return out


def _wandb_records(run_dir) -> dict:
    """The records of the run's W&B offline transaction log, by kind (W&B's own reader)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    store = datastore.DataStore()
    store.open_for_scan(str(files[0]))
    records: dict = {}
    while (data := store.scan_data()) is not None:  # whole records (a long one spans log blocks)
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        records.setdefault(record.WhichOneof("record_type"), []).append(record)
    return records


def _key(item) -> str:
    """A W&B record item's key (newer W&B writes it as nested_key parts)."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_tiny_sweep_in_tensorboard_hparams_and_wandb_offline(tiny_config, tmp_path, monkeypatch):
    _need("tensorboard")
    _need("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: W&B writes its files for a later sync
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # no crash reports sent anywhere
    sweep = tmp_path / "sweeps" / "tiny"
    results = {}
    for seed in (0, 1):  # two replicates of one sweep, laid out as `scaling sweep` lays them (one
        c = tiny_config.copy_and_resolve_references()  # compiled shape for both: the test stays light)
        c.seed, c.train.tokens, c.track.wandb = seed, 8 * 32 * 10, True
        results[seed] = train(c, rundir.run_dir_of(sweep, f"s{seed}"), verbose=False)
    import wandb
    wandb.teardown()  # end W&B's service process started by this test

    groups = _session_groups(str(sweep))
    assert sorted(groups) == ["runs/s0/tensorboard", "runs/s1/tensorboard"]
    train_fpt = accounting.flops_per_token(cfg_lib.resolve(tiny_config).model, 32)["train"]
    for seed, result in results.items():
        hp, metrics, statuses = groups[f"runs/s{seed}/tensorboard"]
        assert statuses == ["STATUS_SUCCESS"]
        assert (hp["sweep"], hp["run_id"], hp["seed"], hp["model.d_model"]) == ("tiny", f"s{seed}", seed, 32)
        # N, D, C as result.json reports them (itself checked against scaling.accounting in test_train)
        for key in ("n_params", "n_params_nonembed", "tokens", "flops", "flops_6nd"):
            assert hp[key] == result[key], key
        assert hp["tokens_per_param"] == pytest.approx(result["tokens"] / result["n_params"])
        assert hp["config_hash"] == result["config_hash"]
        assert (hp["mfu_peak_flops"], hp["mfu_peak_source"]) == (1e11, "config train.peak_flops")
        assert metrics["final/eval_loss"] == pytest.approx(result["final_eval_loss"], rel=1e-6)  # float32 scalars
        assert metrics["final/mfu"] == pytest.approx(result["mfu"], rel=1e-6)
        assert metrics["eval/loss"] == pytest.approx(result["final_eval_loss"], rel=1e-6)
        rows = [r for r in rundir.read_metrics(sweep / "runs" / f"s{seed}") if r["split"] == "train"]
        assert all(r["mfu_peak_flops"] == 1e11 and r["mfu_peak_source"] == "config train.peak_flops"
                   for r in rows)
        assert rows[-1]["mfu"] == pytest.approx(accounting.mfu(rows[-1]["tokens_per_s"], train_fpt, 1e11))
    assert results[0]["final_eval_loss"] != results[1]["final_eval_loss"]  # two sessions, not one twice
    # the HParams view filters: a seed interval keeps the second replicate only
    assert list(_session_groups(str(sweep), seed=(0.5, 2))) == ["runs/s1/tensorboard"]

    for seed, result in results.items():
        records = _wandb_records(sweep / "runs" / f"s{seed}")
        run = records["run"][0].run
        assert (run.project, run.run_group, run.display_name) == ("scaling", "tiny", f"s{seed}")
        config = {_key(item): json.loads(item.value_json) for item in run.config.update}
        assert config["n_params"] == result["n_params"] and config["seed"] == seed
        assert config["mfu_peak_source"] == "config train.peak_flops"
        summary = {_key(i): json.loads(i.value_json) for r in records["summary"] for i in r.summary.update}
        assert summary["final/eval_loss"] == pytest.approx(result["final_eval_loss"])
        logged = {_key(item) for r in records["history"] for item in r.history.item}
        assert {"train/loss", "eval/loss", "train/mfu"} <= logged


def test_a_run_under_a_second_keeps_its_session_start(tiny_config, tmp_path):
    """The session-start events and publish()'s end events go to two files even within one second
    (tensorboardX names files by the second and host; a warm worker's run can take under a second,
    and the second file then replaced the first: its HParams session vanished)."""
    _need("tensorboard")
    c = cfg_lib.resolve(tiny_config)
    tracker = tracking.TensorBoardTracker(tmp_path, tracking.run_view(c, tmp_path, 1e11, "test"))
    tracker.close()
    tracker.publish({"step": 1, "final_eval_loss": 2.0})
    assert len(list((tmp_path / rundir.TENSORBOARD).glob("*tfevents*"))) == 2
    assert list(_session_groups(str(tmp_path))) == ["tensorboard"]


def test_flatten_and_group():
    flat = tracking.flatten({"model": {"d_model": 8, "mlp": "gelu"}, "sweep": {"seeds": (0, 1)}, "seed": 0})
    assert flat == {"model.d_model": 8, "model.mlp": "gelu", "sweep.seeds": "(0, 1)", "seed": 0}
    assert tracking.group_of("/x/sweeps/iso/runs/C1e13-abc", {}) == "iso"
    assert tracking.group_of("/x/runs_elsewhere/one", {}) == ""
    assert tracking.group_of("/x/sweeps/iso/runs/r", {"group": "mine"}) == "mine"


def test_view_headline_matches_accounting(tiny_config, tmp_path):
    c = cfg_lib.resolve(tiny_config)
    view = tracking.run_view(c, tmp_path / "sweeps" / "s" / "runs" / "r1", 2e12, "table X")
    counts = accounting.param_counts(c.model)
    tokens = cfg_lib.num_steps(c) * c.train.batch_size * c.data.seq_len
    assert view.hparams["n_params"] == counts["total"] and view.hparams["tokens"] == tokens
    assert view.hparams["flops"] == accounting.flops_per_token(c.model, c.data.seq_len)["train"] * tokens
    assert view.hparams["tokens_per_param"] == tokens / counts["total"]
    assert (view.run_id, view.group, view.hparams["sweep"]) == ("r1", "s", "s")
    assert not any(k.startswith("track.") for k in view.hparams)  # the views are not hyperparameters
    assert cfg_lib.config_hash(cfg_lib.load(_dump(tmp_path, c, wandb=True))) == cfg_lib.config_hash(c)  # not identity


def _dump(tmp_path, c, **track) -> str:
    d = c.to_dict()
    d["track"].update(track)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    return str(path)


class _Broken:
    def __init__(self, *a, **k):
        pass

    def log(self, row):
        raise OSError("disk gone")

    def close(self):
        pass

    def publish(self, result):
        raise RuntimeError("no")


def test_a_failing_tracker_warns_and_the_run_directory_keeps_everything(tiny_config, tmp_path, monkeypatch):
    """W&B missing at start and a tracker that fails mid-run: one warning each, every row still written."""
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setattr(tracking, "TensorBoardTracker", _Broken)
    c = cfg_lib.resolve(tiny_config)
    c.track.wandb = True
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    writer = MetricsWriter(tmp_path, view=tracking.run_view(c, tmp_path, None, None))
    for step in (1, 2):
        writer.write({"split": "train", "step": step, "loss": 1.0 / step, "mfu": None})
    writer.close()
    writer.publish({"final_eval_loss": 1.0, "step": 2})
    warnings = err.getvalue().splitlines()
    assert len(warnings) == 2, warnings
    assert "Weights & Biases tracker failed to start" in warnings[0] and "[wandb]" in warnings[0]
    assert "TensorBoard tracker failed to log a metrics row (OSError: disk gone)" in warnings[1]
    rows = rundir.read_metrics(tmp_path)
    assert [r["loss"] for r in rows] == [1.0, 0.5]
    assert rows[0]["mfu_peak_source"] == "none (MFU not computed)" and rows[0]["mfu_peak_flops"] is None
