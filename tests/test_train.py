"""The training loop end to end on CPU: run-directory contract, learning, determinism, failures."""
import errno
import io
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from scaling import accounting, checkpoint, data, memory, rundir
from scaling import config as cfg_lib
from scaling.checkpoint import Checkpointer
from scaling.metrics import MetricsWriter, Progress
from scaling.rundir import read_metrics
from scaling.run_record import HostState, NonFiniteLossError
from scaling.train import train


def _curve(run_dir, split="train"):
    return [(r["step"], r["loss"], r.get("grad_norm"), r.get("lr")) for r in read_metrics(run_dir)
            if r["split"] == split]


def test_run_directory_contract(tiny_config, tmp_path):
    result = train(tiny_config, tmp_path / "run", verbose=False)
    run = tmp_path / "run"
    on_disk = json.loads((run / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert result["status"] == "ok" and result["step"] == 20
    # D and FLOPs follow from the config and the accounting module, not from anything measured.
    assert result["tokens"] == 20 * 8 * 32
    counts = accounting.param_counts(cfg_lib.resolve(tiny_config).model)
    assert result["n_params"] == counts["total"]
    assert result["n_params_nonembed"] == counts["nonembedding"]
    assert result["flops_6nd"] == 6 * result["n_params"] * result["tokens"]
    assert result["flops_6nd_nonembed"] == 6 * result["n_params_nonembed"] * result["tokens"]
    assert result["flops"] > result["flops_6nd_nonembed"]  # exact counts attention and the LM head
    rows = read_metrics(run)
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [10, 20]
    assert eval_rows[-1]["loss"] == result["final_eval_loss"]
    corpus = data.load(tiny_config.data)
    assert result["final_eval_bpb"] == pytest.approx(
        result["final_eval_loss"] / math.log(2) / corpus.bytes_per_token_eval)
    assert all(math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 for r in train_rows)
    assert (run / "tensorboard").is_dir()
    # the step's memory estimate (bytes per device, on the run's mesh); CPU reports no measured peak
    shape = memory.mesh_shape(tiny_config.mesh, result["num_devices"])
    assert result["memory"] == memory.estimate(cfg_lib.resolve(tiny_config), shape, platform="cpu").as_dict()
    assert result["peak_bytes_measured"] is None
    # a finished run is not redone
    assert train(tiny_config, run, verbose=False)["wall_time_s"] == result["wall_time_s"]


def test_same_config_and_seed_give_identical_metrics(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "a", verbose=False)
    train(tiny_config, tmp_path / "b", verbose=False)
    assert _curve(tmp_path / "a") == _curve(tmp_path / "b")
    assert _curve(tmp_path / "a", "eval") == _curve(tmp_path / "b", "eval")
    tiny_config.seed = 1
    train(tiny_config, tmp_path / "c", verbose=False)
    assert _curve(tmp_path / "a") != _curve(tmp_path / "c")


def test_resume_gives_bit_identical_metrics(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "full", verbose=False)
    out = train(tiny_config, tmp_path / "resumed", stop_after_steps=10, verbose=False)
    assert out["status"] == "stopped" and not (tmp_path / "resumed" / "result.json").exists()
    train(tiny_config, tmp_path / "resumed", verbose=False)
    assert _curve(tmp_path / "full") == _curve(tmp_path / "resumed")
    assert _curve(tmp_path / "full", "eval") == _curve(tmp_path / "resumed", "eval")


def test_non_finite_loss_stops_with_named_step(tiny_config, tmp_path):
    tiny_config.optim.update(lr=1e30, warmup_steps=0, clip_norm=0.0)
    tiny_config.model.init_std = 1e3
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train(tiny_config, tmp_path / "nan", verbose=False)
    result = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert result["status"] == "failed" and "non-finite" in result["error"]


def test_other_config_in_same_run_dir_is_refused(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "run", stop_after_steps=5, verbose=False)
    tiny_config.optim.lr = 1e-3
    with pytest.raises(ValueError, match="different config"):
        train(tiny_config, tmp_path / "run", verbose=False)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scaling", "train", "--config", "experiments/base.py",
                           "--config.model.n_heads=3", "--workdir", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "n_heads" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tiny_model_learns_real_text(tiny_config, tmp_path):
    """Eval loss falls well below the unigram entropy of the text within a few hundred steps."""
    c = tiny_config
    c.data.seq_len = 64
    c.model.update(d_model=64, n_heads=4, n_kv_heads=4)
    c.train.update(batch_size=16, tokens=16 * 64 * 300, eval_every=300, log_every=50, eval_tokens=16 * 64 * 8)
    c.optim.update(lr=3e-3, warmup_steps=20)
    result = train(c, tmp_path / "learn", verbose=False)
    corpus = data.load(c.data)
    p = np.bincount(np.asarray(corpus.eval_tokens), minlength=256) / len(corpus.eval_tokens)
    unigram_nats = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # ~3.0 nats/byte for English bytes
    # a model that learned only unigram statistics sits at unigram_nats; 0.5 nats below it means it
    # uses context (bigrams alone give ~0.6-0.7 nats less on English bytes).
    assert result["final_eval_loss"] < unigram_nats - 0.5, (result["final_eval_loss"], unigram_nats)


def test_resume_at_a_step_between_log_rows_is_bit_identical(tiny_config, tmp_path):
    """Stopped at step 7 (rows every 5, checkpoints every 10): the interval's losses travel in
    the checkpoint, so the resumed run writes the same rows as the uninterrupted one."""
    train(tiny_config, tmp_path / "full", verbose=False)
    train(tiny_config, tmp_path / "resumed", stop_after_steps=7, verbose=False)
    train(tiny_config, tmp_path / "resumed", verbose=False)
    assert _curve(tmp_path / "full") == _curve(tmp_path / "resumed")
    assert _curve(tmp_path / "full", "eval") == _curve(tmp_path / "resumed", "eval")


def test_killed_after_final_checkpoint_finishes_on_rerun(tiny_config, tmp_path):
    """A run killed between its final checkpoint and result.json completes on rerun, same numbers."""
    first = train(tiny_config, tmp_path / "run", verbose=False)
    (tmp_path / "run" / "result.json").unlink()
    t_rerun = time.time()
    again = train(tiny_config, tmp_path / "run", verbose=False)
    rerun_s = time.time() - t_rerun
    assert again["status"] == "ok"
    for key in ("final_eval_loss", "final_train_loss", "tokens", "flops"):
        assert again[key] == first[key]
    # the wall time counts both segments: the first's seconds, stored in the final checkpoint, plus
    # the rerun's own (which start inside the call, so they are at most rerun_s)
    ckpt = tmp_path / "run" / rundir.CHECKPOINTS
    final = max((d for d in ckpt.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    stored_s = json.loads((final / checkpoint.META / checkpoint.META_FILE).read_text())["host"]["elapsed_s"]
    assert stored_s > 0
    assert stored_s < again["wall_time_s"] <= stored_s + rerun_s


def test_finished_run_with_other_config_is_refused(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "run", verbose=False)
    tiny_config.optim.lr = 1e-3
    with pytest.raises(ValueError, match="different config"):
        train(tiny_config, tmp_path / "run", verbose=False)


def test_eval_loss_does_not_depend_on_batch_size(tiny_config, tmp_path):
    """The eval set is a fixed set of windows: the same params score the same whatever the batch."""
    from scaling import sharding
    from scaling.trainer import make_trainer

    c = cfg_lib.resolve(tiny_config)
    corpus = data.load(c.data)
    mesh = sharding.make_mesh(c.mesh)
    tr = make_trainer(c, mesh, sharding.logical_rules(mesh), steps=20)
    losses = []
    for batch in (8, 5, 3):  # 32 windows: 4 full batches of 8; 6x5 + 2 padded; 10x3 + 2 padded
        sums = [tr.eval_fn(tr.state["params"], b["inputs"], b["targets"], b["weights"])
                for b in data.eval_batches(corpus, seq_len=32, batch_size=batch, n_tokens=32 * 32)]
        losses.append(sum(float(n) for n, _ in sums) / sum(float(w) for _, w in sums))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] == pytest.approx(losses[2], rel=1e-6)


def test_an_ok_result_is_never_downgraded_by_a_late_error(tiny_config, tmp_path, monkeypatch):
    """The final progress line raising (stdout closed by `| head`) cannot turn the finished run into a failed one."""
    def message(self, text):
        if text.startswith("done"):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(Progress, "message", message)
    with pytest.raises(BrokenPipeError):
        train(tiny_config, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"


def test_progress_on_a_closed_stream_turns_itself_off():
    stream = io.StringIO()
    stream.close()
    progress = Progress(10, stream=stream)
    progress.message("hello")  # does not raise: progress is only a view of metrics.jsonl
    progress.log(1, 2.0, 100.0, None, steps_per_s=1.0)
    assert not progress.enabled


def test_resume_keeps_rows_truthful_about_a_corrupt_line_and_retries_a_corrupt_result(tiny_config, tmp_path, capsys):
    """A corrupt line before the checkpoint cannot be redone: the resumed run warns (file and line)
    and its result lists it. A corrupt result.json (here a list) is moved aside and the run retried."""
    train(tiny_config, tmp_path / "full", verbose=False)
    run = tmp_path / "run"
    train(tiny_config, run, stop_after_steps=10, verbose=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["step"] == 10 and json.loads(lines[1])["split"] == "train"
    lines[1] = '{"split": "train", "st'
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "result.json").write_text("[1]")
    result = train(tiny_config, run)
    out = capsys.readouterr().out
    note = f"{run / 'metrics.jsonl'} line 2 does not parse"
    assert note in out and "result.json: holds a JSON list" in out
    assert result["status"] == "ok" and len(result["metrics_lost"]) == 1 and note in result["metrics_lost"][0]
    assert (run / "result.failed.json").read_text() == "[1]"
    assert _curve(run) == [r for r in _curve(tmp_path / "full") if r[0] != 10]  # only the lost row differs
    assert _curve(run, "eval") == _curve(tmp_path / "full", "eval")


def test_metrics_reach_the_disk_before_each_checkpoint(tiny_config, tmp_path, monkeypatch):
    events = []
    sync, save = MetricsWriter.sync, Checkpointer.save
    monkeypatch.setattr(MetricsWriter, "sync", lambda self: (events.append("sync"), sync(self)))
    monkeypatch.setattr(Checkpointer, "save",
                        lambda self, step, *a, **k: (events.append(f"save {step}"), save(self, step, *a, **k))[1])
    train(tiny_config, tmp_path / "run", verbose=False)
    saves = [i for i, e in enumerate(events) if e.startswith("save")]
    assert [events[i] for i in saves] == ["save 10", "save 20"]
    assert all(events[i - 1] == "sync" for i in saves)


def _fill_disk_at(monkeypatch, names):
    """Writes (appends or atomic JSON) to files with these names fail as on a full disk."""
    real_open = pathlib.Path.open

    def open_(self, mode="r", *a, **k):
        if ("a" in mode or "w" in mode) and any(self.name.startswith(n) or self.name.startswith(f".{n}")
                                                for n in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *a, **k)
    monkeypatch.setattr(pathlib.Path, "open", open_)


def test_disk_full_during_training_says_what_filled_and_records_stay_truthful(tiny_config, tmp_path, monkeypatch):
    _fill_disk_at(monkeypatch, [rundir.METRICS])
    with pytest.raises(rundir.DiskFullError, match=f"^disk full .* while writing {tmp_path / 'a' / 'metrics.jsonl'};"):
        train(tiny_config, tmp_path / "a", verbose=False)
    failed = rundir.read_result(tmp_path / "a")
    assert failed["status"] == "failed" and failed["error"].startswith("DiskFullError: disk full")
    # when even the failed result does not fit, the run stays unfinished (rerun resumes it): no torn file
    _fill_disk_at(monkeypatch, [rundir.METRICS, rundir.RESULT])
    with pytest.raises(rundir.DiskFullError, match="metrics.jsonl"):
        train(tiny_config, tmp_path / "b", verbose=False)
    assert not (tmp_path / "b" / "result.json").exists()
    assert not [p for p in (tmp_path / "b").iterdir() if ".tmp" in p.name]


def test_host_state_reads_checkpoints_written_before_it_was_a_dataclass():
    old = {"host": {"interval_losses": [2.5], "last_train_loss": 2.0, "last_eval": 2.1, "elapsed_s": 3.0,
                    "timed_s": 1.5, "timed_tokens": 512}}
    host = HostState.from_meta(old)
    assert host == HostState([2.5], 2.0, 2.1, 3.0, 1.5, 512, [])
    assert HostState.from_meta({}) == HostState()
    assert HostState.from_meta(host.to_meta(elapsed_s=4.0)) == HostState([2.5], 2.0, 2.1, 4.0, 1.5, 512, [])


def test_a_run_that_would_not_fit_its_device_is_refused_before_compiling(tiny_config, tmp_path, monkeypatch):
    """On a device of known memory (faked here: CPU has none) the estimate is checked before the
    step is built; the error names the run directory, the estimate and what would fit."""
    import scaling.train as train_mod

    monkeypatch.setattr(train_mod.accounting, "device_memory_for", lambda device: 2 ** 20)  # 1 MiB
    monkeypatch.setattr(train_mod, "make_trainer", lambda *a: pytest.fail("compiled a refused run"))
    with pytest.raises(cfg_lib.ConfigError, match=r"run big does not fit: estimated peak .* what would fit"):
        train(tiny_config, tmp_path / "big", verbose=False)
    assert json.loads((tmp_path / "big" / "result.json").read_text())["status"] == "failed"


def test_first_progress_line_rate_excludes_compilation(tiny_config, tmp_path, monkeypatch, capsys):
    """A first step made 3 s slower (as a long compile is) leaves the first row's tokens/s untouched,
    and the pause is announced and timed on the progress stream instead of passing silently."""
    import time as time_mod

    from scaling import train as train_mod

    real = train_mod.make_trainer

    def slow_first_call(*a, **kw):
        t = real(*a, **kw)
        calls = []

        def step_fn(*args):
            if not calls:
                time_mod.sleep(3.0)
            calls.append(1)
            return t.step_fn(*args)
        return t._replace(step_fn=step_fn)

    monkeypatch.setattr(train_mod, "make_trainer", slow_first_call)
    tiny_config.train.tokens = 8 * 32 * 10
    train(tiny_config, tmp_path / "run", verbose=True)
    out = capsys.readouterr().out
    assert out.index("compiling the train step") < out.index("compiled and run once in") < out.index("step 5/10")
    first = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"][0]
    # rows at steps 5 and 10: the first covers steps 2..5 (4 steps); with the 3 s inside it would be < 342 tok/s
    assert first["step"] == 5 and first["tokens_per_s"] > 4 * 8 * 32 / 1.5
