"""launch.local: skip finished, resume after SIGKILL, bounded retries, locks, device slots, status.

A stand-in trainer (a tiny script written to tmp_path) takes the place of `scaling train`: it
'trains' a few steps (sleeping), checkpoints its state after every step, resumes from the
checkpoint, and writes result.json atomically last — the same contract as scaling.train, in
milliseconds. Every start and finish is appended to a shared event log, so the tests can count
how many times each run finished.
"""
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import pytest

from launch import local
from launch.sweep import RunSpec
from scaling import rundir

REPO = pathlib.Path(__file__).resolve().parents[1]

STANDIN = textwrap.dedent('''
    import hashlib, json, os, sys, time
    cfg_path, run_dir = sys.argv[1], sys.argv[2]
    cfg = json.load(open(cfg_path))
    rid = os.path.basename(run_dir)
    steps, sleep = int(os.environ.get("STANDIN_STEPS", 5)), float(os.environ.get("STANDIN_SLEEP", 0.05))
    def log(msg):
        fd = os.open(os.environ["STANDIN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (msg + "\\n").encode()); os.close(fd)
    def atomic(name, obj):
        tmp = os.path.join(run_dir, "." + name + ".tmp")
        open(tmp, "w").write(json.dumps(obj)); os.replace(tmp, os.path.join(run_dir, name))
    ck = os.path.join(run_dir, "ckpt.json")
    state = json.load(open(ck)) if os.path.exists(ck) else {"step": 0, "acc": 0.0}
    log(f"start {rid} {state['step']}")
    fail = os.environ.get("STANDIN_FAIL")
    if fail and fail in rid:
        once = os.path.join(run_dir, "failed_once")
        if os.environ.get("STANDIN_FAIL_ONCE") != "1" or not os.path.exists(once):
            open(once, "w").close()
            print("boom: injected failure", file=sys.stderr, flush=True); sys.exit(3)
    seed = int(hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8], 16)
    while state["step"] < steps:
        time.sleep(sleep)
        state = {"step": state["step"] + 1, "acc": 0.9 * state["acc"] + (seed % 997) / 997 + state["step"]}
        atomic("ckpt.json", state)
        print(f"step {state['step']}/{steps} loss {state['acc']:.4f}", flush=True)
    bad = os.environ.get("STANDIN_BAD_RESULT")  # "<run id part>=<raw text>": that run writes a corrupt result
    if bad and bad.split("=", 1)[0] in rid:
        open(os.path.join(run_dir, "result.json"), "w").write(bad.split("=", 1)[1]); sys.exit(0)
    atomic("result.json", {"status": "ok", "error": None, "final_eval_loss": state["acc"], "step": steps,
                           "affinity": sorted(os.sched_getaffinity(0)),
                           "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "threads": os.environ.get("OMP_NUM_THREADS")})
    log(f"finish {rid}")
''')

DRIVER = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_local import make_specs
    from launch import local
    n, sweep_dir, standin, parallel = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    backend = local.LocalBackend(sweep_dir, command=(sys.executable, standin, "{{config}}", "{{run_dir}}"),
                                 parallel=parallel)
    out = backend.run(make_specs(n))
    print("RESULTS " + json.dumps(out), flush=True)
''')


def make_specs(n: int) -> list[RunSpec]:
    """n RunSpecs r0..r{n-1} with distinct small configs (no accounting needed: the stand-in ignores N)."""
    specs = []
    for i in range(n):
        cfg = ml_collections.ConfigDict({"model": {"n_layers": 1, "d_model": 8 * (i + 1), "n_heads": 1},
                                         "train": {"tokens": 1000 * (i + 1), "batch_size": 4},
                                         "data": {"seq_len": 8}, "optim": {"lr": 1e-3}, "seed": 0})
        specs.append(RunSpec(run_id=f"r{i}", config=cfg, n_params=100 * (i + 1), n_params_nonembed=80 * (i + 1),
                             n_params_embed=20 * (i + 1), tokens=1000 * (i + 1), flops=6e5 * (i + 1) ** 2,
                             flops_6nd=6e5 * (i + 1) ** 2, flops_6nd_nonembed=4.8e5 * (i + 1) ** 2, budget=None,
                             seed=0, steps=5))
    return specs


@pytest.fixture
def standin(tmp_path, monkeypatch):
    path = tmp_path / "standin.py"
    path.write_text(STANDIN)
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "events.log"))
    monkeypatch.setenv("STANDIN_STEPS", "5")
    monkeypatch.setenv("STANDIN_SLEEP", "0.03")
    monkeypatch.delenv("STANDIN_FAIL", raising=False)
    monkeypatch.delenv("STANDIN_FAIL_ONCE", raising=False)
    monkeypatch.delenv("STANDIN_BAD_RESULT", raising=False)
    return path


def _events(tmp_path) -> list[list[str]]:
    path = tmp_path / "events.log"
    return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def _backend(sweep_dir, standin, **kw):
    return local.LocalBackend(sweep_dir, command=(sys.executable, str(standin), "{config}", "{run_dir}"), **kw)


def _losses(sweep_dir, n) -> dict:
    return {f"r{i}": local.read_result(local.run_dir_of(sweep_dir, f"r{i}"))["final_eval_loss"] for i in range(n)}


def test_runs_all_then_skips_finished(tmp_path, standin):
    events = []
    specs = make_specs(3)
    out = _backend(tmp_path / "sw", standin, on_event=events.append).run(specs)
    assert out == {"r0": "ok", "r1": "ok", "r2": "ok"}
    kinds = [(e.kind, e.run_id) for e in events if e.kind != "output"]
    assert kinds == [("start", "r0"), ("finish", "r0"), ("start", "r1"), ("finish", "r1"),
                     ("start", "r2"), ("finish", "r2")]
    assert [e.done for e in events if e.kind == "finish"] == [1, 2, 3]
    assert any(e.kind == "output" and e.line.startswith("step 5/5") for e in events)  # forwarded progress
    rd = local.run_dir_of(tmp_path / "sw", "r1")
    assert json.loads((rd / "launch_config.json").read_text()) == specs[1].config.to_dict()
    assert "step 5/5" in (rd / "train.log").read_text()
    launch = json.loads((rd / "launch.json").read_text())
    assert launch["attempts"] == 1 and launch["state"] == "ok" and launch["last_exit_code"] == 0
    # rerun: nothing is executed again
    events.clear()
    out = _backend(tmp_path / "sw", standin, on_event=events.append).run(specs)
    assert out == {"r0": "ok", "r1": "ok", "r2": "ok"}
    assert {e.kind for e in events} == {"skip"}
    assert sum(1 for e in _events(tmp_path) if e[0] == "finish") == 3


def test_failure_is_reported_rest_continue_retries_bounded(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "r1")
    events = []
    out = _backend(tmp_path / "sw", standin, max_attempts=3, on_event=events.append).run(make_specs(3))
    assert out == {"r0": "ok", "r1": "failed", "r2": "ok"}
    starts = [e[1] for e in _events(tmp_path) if e[0] == "start"]
    assert starts.count("r1") == 3  # bounded: exactly max_attempts attempts
    assert starts.index("r2") < len(starts) - 1  # retries go after the other runs, which continue
    launch = json.loads((local.run_dir_of(tmp_path / "sw", "r1") / "launch.json").read_text())
    assert launch["attempts"] == 3 and launch["state"] == "failed" and launch["last_exit_code"] == 3
    assert "exit code 3" in launch["error"] and "boom: injected failure" in launch["error"]
    finals = [e for e in events if e.kind == "finish" and e.run_id == "r1"]
    assert [e.status for e in finals] == ["retry", "retry", "failed"]
    rows = {r["run_id"]: r for r in local.sweep_status(tmp_path / "sw")}
    assert rows["r1"]["state"] == "failed" and "boom" in rows["r1"]["note"]
    assert rows["r0"]["state"] == "done"


def test_transient_failure_succeeds_on_retry(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "r0")
    monkeypatch.setenv("STANDIN_FAIL_ONCE", "1")
    out = _backend(tmp_path / "sw", standin, max_attempts=2).run(make_specs(2))
    assert out == {"r0": "ok", "r1": "ok"}
    launch = json.loads((local.run_dir_of(tmp_path / "sw", "r0") / "launch.json").read_text())
    assert [h["state"] for h in launch["history"]] == ["failed", "ok"]


def test_trainer_reported_failure_is_kept_aside(tmp_path, standin):
    """A result.json with status 'failed' is moved to result.failed.json before the retry."""
    sweep_dir = tmp_path / "sw"
    rd = local.run_dir_of(sweep_dir, "r0")
    rd.mkdir(parents=True)
    (rd / "result.json").write_text(json.dumps({"status": "failed", "error": "NonFiniteLossError: step 3"}))
    assert local.run_status(rd)["state"] == "failed"
    assert _backend(sweep_dir, standin).run(make_specs(1)) == {"r0": "ok"}
    assert json.loads((rd / "result.failed.json").read_text())["error"].startswith("NonFiniteLossError")


def _driver(tmp_path, n, sweep_dir, standin, parallel=1):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(repo=str(REPO), tests=str(REPO / "tests")))
    return subprocess.Popen([sys.executable, str(path), str(n), str(sweep_dir), str(standin), str(parallel)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_rerun_finishes_each_run_exactly_once(tmp_path, standin, monkeypatch):
    n = 5
    monkeypatch.setenv("STANDIN_STEPS", "8")
    # reference: an uninterrupted sweep
    assert _backend(tmp_path / "ref", standin).run(make_specs(n)) == {f"r{i}": "ok" for i in range(n)}
    reference = _losses(tmp_path / "ref", n)
    (tmp_path / "events.log").unlink()

    sweep_dir = tmp_path / "sw"
    proc = _driver(tmp_path, n, sweep_dir, standin)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once 2 runs finished and the 3rd is past step 2
        ck = local.run_dir_of(sweep_dir, "r2") / "ckpt.json"
        if ck.exists() and json.loads(ck.read_text())["step"] >= 2:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rd2 = local.run_dir_of(sweep_dir, "r2")
    time.sleep(0.3)  # PDEATHSIG delivery
    assert local.lock_holder(rd2) is None  # the kernel dropped the lock
    step_at_kill = json.loads((rd2 / "ckpt.json").read_text())["step"]
    time.sleep(0.3)
    assert json.loads((rd2 / "ckpt.json").read_text())["step"] == step_at_kill  # the trainer died with the sweep
    assert not (rd2 / "result.json").exists()
    assert local.run_status(rd2)["state"] == "pending" and "interrupted" in local.run_status(rd2)["note"]
    assert json.loads((rd2 / "launch.json").read_text())["state"] == "running"  # left as the kill found it

    proc = _driver(tmp_path, n, sweep_dir, standin)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    results = json.loads(out.split("RESULTS ", 1)[1])
    assert results == {f"r{i}": "ok" for i in range(n)}
    ev = _events(tmp_path)
    finishes = [e[1] for e in ev if e[0] == "finish"]
    assert sorted(finishes) == [f"r{i}" for i in range(n)]  # exactly once each: none lost, none twice
    assert ["start", "r2", str(step_at_kill)] in ev  # the interrupted run resumed from its checkpoint
    assert _losses(sweep_dir, n) == reference  # same results as the uninterrupted sweep
    history = json.loads((rd2 / "launch.json").read_text())["history"]
    assert [h["state"] for h in history] == ["interrupted", "ok"]


def test_two_sweep_processes_never_run_the_same_run(tmp_path, standin):
    n = 6
    a = _driver(tmp_path, n, tmp_path / "sw", standin)
    b = _driver(tmp_path, n, tmp_path / "sw", standin)
    outs = [json.loads(p.communicate(timeout=60)[0].split("RESULTS ", 1)[1]) for p in (a, b)]
    finishes = sorted(e[1] for e in _events(tmp_path) if e[0] == "finish")
    assert finishes == sorted(f"r{i}" for i in range(n))
    for rid in finishes:
        assert "ok" in (outs[0][rid], outs[1][rid])


def test_parallel_slots_get_disjoint_devices(tmp_path, standin):
    specs = make_specs(4)
    out = _backend(tmp_path / "gpu", standin, parallel=2, gpus=["0", "1", "2", "3"]).run(specs)
    assert set(out.values()) == {"ok"}
    cuda = {local.read_result(local.run_dir_of(tmp_path / "gpu", s.run_id))["cuda"] for s in specs}
    assert cuda == {"0,1", "2,3"}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs >= 2 CPU cores to check disjoint CPU sets")
    _backend(tmp_path / "cpu", standin, parallel=2).run(specs)
    sets = {tuple(local.read_result(local.run_dir_of(tmp_path / "cpu", s.run_id))["affinity"]) for s in specs}
    assert len(sets) == 2 and not set(sets.pop()) & set(sets.pop())
    threads = local.read_result(local.run_dir_of(tmp_path / "cpu", "r0"))["threads"]
    assert threads == str(len(cpus) // 2)


def test_device_slots_errors():
    with pytest.raises(ValueError, match="--parallel=3 but only 2 GPUs"):
        local.device_slots(3, ["0", "1"])
    with pytest.raises(ValueError, match="--parallel=0"):
        local.device_slots(0)
    with pytest.raises(ValueError, match="max-attempts"):
        local.LocalBackend("x", max_attempts=0)


def test_status_table_states(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "r1")
    specs = make_specs(4)
    sweep_dir = tmp_path / "sw"
    local.write_manifest(sweep_dir, specs, "test")
    _backend(sweep_dir, standin, max_attempts=1).run(specs[:2])
    lock = local.RunLock(local.run_dir_of(sweep_dir, "r2"))
    assert lock.acquire()
    try:
        assert not local.RunLock(local.run_dir_of(sweep_dir, "r2")).acquire(tries=1)
        table = local.status_table(sweep_dir)
    finally:
        lock.release()
    states = {ln.split()[0]: ln.split()[1] for ln in table.splitlines()[2:6]}
    assert states == {"r0": "done", "r1": "failed", "r2": "running", "r3": "pending"}
    assert "boom: injected failure" in table and f"pid {os.getpid()}" in table
    assert "1 done, 1 running, 1 failed, 1 pending (of 4)" in table
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local.sweep_status(tmp_path / "nope")


def test_corrupt_result_is_a_failure_with_its_reason_and_status_shows_it(tmp_path, standin, monkeypatch):
    """A result.json that is a list: the runner records a failure naming the file, never crashes;
    `scaling status` shows the run as corrupt instead of skipping it; a rerun sets it aside."""
    sweep_dir = tmp_path / "sw"
    specs = make_specs(2)
    local.write_manifest(sweep_dir, specs, "test")
    monkeypatch.setenv("STANDIN_BAD_RESULT", "r1=[1, 2]")
    out = _backend(sweep_dir, standin, max_attempts=1).run(specs)
    assert out == {"r0": "ok", "r1": "failed"}
    rd = local.run_dir_of(sweep_dir, "r1")
    launch = json.loads((rd / "launch.json").read_text())
    assert launch["state"] == "failed"
    assert launch["error"] == f"corrupt result: {rd / 'result.json'}: holds a JSON list, expected an object {{...}}"
    (local.run_dir_of(sweep_dir, "r0") / "launch.json").write_text('{"attempts": ')
    table = local.status_table(sweep_dir)
    rows = {ln.split()[0]: ln for ln in table.splitlines()[2:4]}
    assert "failed" in rows["r1"] and f"corrupt: {rd / 'result.json'}: holds a JSON list" in rows["r1"]
    assert "done" in rows["r0"]  # its result is ok; the corrupt launch record does not hide that
    monkeypatch.delenv("STANDIN_BAD_RESULT")
    assert _backend(sweep_dir, standin).run(specs) == {"r0": "ok", "r1": "ok"}
    assert (rd / "result.failed.json").read_text() == "[1, 2]"
    (sweep_dir / "sweep.json").write_text("{")
    with pytest.raises(ValueError, match="sweep.json: does not parse as JSON"):
        local.status_table(sweep_dir)


def test_disk_full_in_the_sweep_log_stops_with_a_reason_and_truthful_records(tmp_path, standin, monkeypatch):
    from launch import workers
    real = workers._write_log

    def write_log(log, data):
        if not data.startswith(b"\n=== try"):  # the trainer's output fills the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(log, data)
    monkeypatch.setattr(workers, "_write_log", write_log)
    events = []
    out = _backend(tmp_path / "sw", standin, on_event=events.append).run(make_specs(3))
    rd = local.run_dir_of(tmp_path / "sw", "r0")
    assert out == {"r0": "failed"} and not out.complete and out.incomplete == ["r1", "r2"]
    assert out.stopped.startswith("disk full") and str(rd / "train.log") in out.stopped
    launch = json.loads((rd / "launch.json").read_text())
    assert launch["state"] == "failed" and launch["error"] == out.stopped and launch["pid"] is None
    assert [e.error for e in events if e.kind == "finish"] == [out.stopped]
    assert local.lock_holder(rd) is None and local.run_status(rd)["state"] == "failed"
    assert not local.run_dir_of(tmp_path / "sw", "r1").exists()  # nothing else was started


def test_runs_locked_elsewhere_leave_the_sweep_incomplete(tmp_path, standin):
    sweep_dir = tmp_path / "sw"
    lock = local.RunLock(local.run_dir_of(sweep_dir, "r1"))
    assert lock.acquire()
    try:
        out = _backend(sweep_dir, standin).run(make_specs(3))
    finally:
        lock.release()
    assert out == {"r0": "ok", "r1": "running elsewhere", "r2": "ok"}
    assert out.incomplete == ["r1"] and not out.complete and out.stopped is None
    again = _backend(sweep_dir, standin).run(make_specs(3))
    assert again.complete and again.incomplete == []


def test_bookkeeping_files_go_through_the_durable_writer(tmp_path, standin, monkeypatch):
    written = []
    real = rundir.write_json
    monkeypatch.setattr(rundir, "write_json", lambda path, obj: (written.append(path.name), real(path, obj)))
    local.write_manifest(tmp_path / "sw", make_specs(1), "test")
    _backend(tmp_path / "sw", standin).run(make_specs(1))
    assert written == ["sweep.json", "launch_config.json", "launch.json", "launch.json"]


def test_manifest_of_another_sweep_is_refused_an_edited_one_replaces_it(tmp_path):
    """A second, different sweep file on an occupied directory is refused with what to do; the same
    sweep file (edited) writes the new plan."""
    specs = make_specs(2)
    local.write_manifest(tmp_path / "s", specs, "experiments/demo_cpu.py")
    with pytest.raises(ValueError, match=r"holds the sweep 'demo_cpu' \(sweep.json\); this is 'kaplan_n': "
                                         r"use --sweep-dir sweeps/kaplan_n"):
        local.write_manifest(tmp_path / "s", specs, "experiments/kaplan_n.py")
    local.write_manifest(tmp_path / "s", specs[:1], "/elsewhere/demo_cpu.py")
    assert [r["run_id"] for r in json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]] == \
        [specs[0].run_id]


PACK_STANDIN = textwrap.dedent('''
    import os, subprocess, sys
    args = sys.argv[2:]  # --config C --workdir R, per member
    members = [(args[i + 1], args[i + 3]) for i in range(0, len(args), 4)]
    fd = os.open(os.environ["STANDIN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, ("pack " + " ".join(os.path.basename(r) for _, r in members) + "\\n").encode()); os.close(fd)
    rcs = [subprocess.call([sys.executable, sys.argv[1], c, r]) for c, r in members]
    sys.exit(max(rcs))
''')


def _pack_specs() -> list[RunSpec]:
    """r0..r4 one shape with different LRs and seeds (packable together), r5 another shape."""
    specs = make_specs(6)
    for i, s in enumerate(specs):
        s.config.model.d_model = 8 if i < 5 else 16
        s.config.train.tokens = 1000
        s.config.optim.lr = 1e-3 * (i + 1)
        s.config.seed = i
    return specs


def test_packs_are_one_job_each_member_settled_from_its_own_result(tmp_path, standin, monkeypatch):
    pack_standin = tmp_path / "pack_standin.py"
    pack_standin.write_text(PACK_STANDIN)
    sweep_dir, specs, events = tmp_path / "sw", _pack_specs(), []
    backend = _backend(sweep_dir, standin, pack_size=2, on_event=events.append,
                       pack_command=(sys.executable, str(pack_standin), str(standin), "{members}"))
    assert backend.run([specs[2]]) == {"r2": "ok"}  # finished before: left out of its pack
    events.clear()
    monkeypatch.setenv("STANDIN_FAIL", "r1")  # one member of the first pack fails (every time)
    out = backend.run(specs)
    assert out == {"r0": "ok", "r1": "failed", "r2": "ok", "r3": "ok", "r4": "ok", "r5": "ok"}
    # packs [r0 r1], [r2 r3] (r2 done: r3 alone), [r4], [r5] (another shape); r1's retry runs alone
    assert [e for e in _events(tmp_path) if e[0] == "pack"] == [["pack", "r0", "r1"]]
    assert [e.run_id for e in events if e.kind == "start" and e.pack] == ["r0", "r1"]
    assert {e.pack for e in events if e.kind == "start" and e.pack} == {("r0", "r1")}
    assert [e.run_id for e in events if e.kind == "skip"] == ["r2"]
    assert [(e.run_id, e.status) for e in events if e.kind == "finish"][:2] == [("r0", "ok"), ("r1", "retry")]
    launch = {r: json.loads((local.run_dir_of(sweep_dir, r) / "launch.json").read_text()) for r in ("r0", "r1", "r3")}
    assert launch["r0"]["pack"] == ["r0", "r1"] and "pack" not in launch["r3"]
    assert launch["r0"]["history"][-1]["pid"] == launch["r1"]["history"][0]["pid"]  # one process for the pack
    assert launch["r1"]["history"][0]["error"].startswith("exit code 3")
    assert launch["r1"]["attempts"] == 2 and launch["r1"]["command"][1] == str(standin)  # the retry: alone
    assert "boom: injected failure" in (local.run_dir_of(sweep_dir, "r0") / "train.log").read_text()  # shared log


def test_packing_with_a_missing_pack_trainer_is_refused_up_front(tmp_path):
    missing = (sys.executable, "-m", "scaling", "no-such-command", "{members}")
    with pytest.raises(ValueError, match="sweep.pack_size=4 needs the packed trainer"):
        local.LocalBackend(tmp_path, pack_size=4, pack_command=missing)
    local.LocalBackend(tmp_path, pack_size=1, pack_command=missing)  # packing off: not needed
