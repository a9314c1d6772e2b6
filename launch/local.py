"""Run a sweep's RunSpecs on this machine as subprocesses: resumable, retried, optionally parallel.

    backend = LocalBackend(sweep_dir, parallel=2, max_attempts=2, on_event=print)
    results = backend.run(specs)          # {run_id: 'ok' | 'failed' | 'running elsewhere'}

Each run is `python -m scaling train --config RUN_DIR/launch_config.json --workdir RUN_DIR` (the
command is a parameter, so tests can use a stand-in trainer), with stdout+stderr appended to
RUN_DIR/train.log. Per run:
  - finished (result.json status "ok") -> skipped; the trainer itself resumes an unfinished run
    from RUN_DIR/checkpoints, so rerunning a sweep after a crash or kill -9 just continues it;
  - RUN_DIR/.lock is flock()ed while the run executes, so two sweep processes never run one run at
    once (the kernel drops the lock when the holder dies: no stale locks); the child gets SIGKILL
    if the sweep process dies (PR_SET_PDEATHSIG), so no orphan keeps training unlocked;
  - a failed attempt (non-zero exit, no result.json, or result.json status "failed") is retried up
    to max_attempts times per invocation, after the other runs; the sweep continues past failures;
  - RUN_DIR/launch.json records attempts, the last exit code and the failure reason.
Parallel runs each get a disjoint device subset: CUDA_VISIBLE_DEVICES for GPUs, else a disjoint
set of CPU cores (sched_setaffinity, plus *_NUM_THREADS) so k runs do not oversubscribe the host.
`status_table(sweep_dir)` is `scaling status`: done / running / failed (reason) / pending.
"""
import collections
import ctypes
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

DEFAULT_COMMAND = (sys.executable, "-m", "scaling", "train", "--config", "{config}", "--workdir", "{run_dir}")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS")


def run_dir_of(sweep_dir, run_id: str) -> pathlib.Path:
    return pathlib.Path(sweep_dir) / "runs" / run_id


def _write_json_atomic(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_result(run_dir) -> dict | None:
    return _read_json(pathlib.Path(run_dir) / "result.json")


def is_done(run_dir) -> bool:
    r = read_result(run_dir)
    return r is not None and r.get("status") == "ok"


def write_manifest(sweep_dir, specs, source: str = "") -> pathlib.Path:
    """SWEEP_DIR/sweep.json: the planned runs (so `scaling status` can list the pending ones)."""
    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "sweep.json"
    _write_json_atomic(path, {"source": str(source), "written_at": time.time(),
                              "runs": [s.summary() for s in specs]})
    return path


class RunLock:
    """An flock() on RUN_DIR/.lock, holding {pid, host, since} while held. Released by the kernel on death."""

    def __init__(self, run_dir):
        self.path = pathlib.Path(run_dir) / ".lock"
        self.fd = None

    def acquire(self, tries: int = 5, wait_s: float = 0.1) -> bool:
        """Non-blocking; a few short retries so a `scaling status` probe never makes us skip a run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for i in range(tries):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if i == tries - 1:
                    os.close(fd)
                    return False
                time.sleep(wait_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.time()}).encode(), 0)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_holder(run_dir) -> dict | None:
    """{pid, host, since} of the process running this run now, or None (probe: a brief try-lock)."""
    path = pathlib.Path(run_dir) / ".lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 4096, 0) or b"{}")
            except json.JSONDecodeError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclasses.dataclass
class RunEvent:
    """Progress hook payload. kind: 'skip' | 'start' | 'output' | 'finish'.

    skip: status 'done' (already finished) or 'running elsewhere' (locked by another sweep process).
    finish: status 'ok' | 'failed' (for good) | 'retry' (will run again). done/total count runs
    settled (ok, failed for good, or skipped); eta_s is a wall-time estimate for the rest.
    """
    kind: str
    run_id: str
    done: int
    total: int
    attempt: int = 0
    line: str = ""
    status: str = ""
    error: str | None = None
    wall_s: float = 0.0
    eta_s: float | None = None
    result: dict | None = None


def device_slots(parallel: int, gpus: list[str] | None = None) -> list[dict]:
    """Split the devices into `parallel` disjoint slots: {'gpus': [...]} or {'cpus': {...}} each."""
    if parallel < 1:
        raise ValueError(f"--parallel={parallel}: must be >= 1")
    if gpus:
        if parallel > len(gpus):
            raise ValueError(f"--parallel={parallel} but only {len(gpus)} GPUs ({','.join(gpus)}); "
                             f"use --parallel <= {len(gpus)}")
        per = len(gpus) // parallel
        return [{"gpus": gpus[i * per:(i + 1) * per]} for i in range(parallel)]
    if parallel == 1:
        return [{}]
    cpus = sorted(os.sched_getaffinity(0))
    if parallel > len(cpus):  # more runs than cores: share cores round-robin (oversubscribed, but allowed)
        return [{"cpus": {cpus[i % len(cpus)]}} for i in range(parallel)]
    per = len(cpus) // parallel
    return [{"cpus": set(cpus[i * per:(i + 1) * per])} for i in range(parallel)]


try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _preexec(cpus, parent_pid: int):
    def fn():
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent_pid:  # the sweep died before prctl took effect
                os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)
    return fn


class _Active:
    """A running attempt: process, log file, line buffer."""

    def __init__(self, spec, proc, log, slot, attempt, lock, on_line):
        self.spec, self.proc, self.log, self.slot, self.attempt, self.lock = spec, proc, log, slot, attempt, lock
        self.started = time.time()
        self.buf = b""
        self.tail = collections.deque(maxlen=20)
        self.eof = False
        self.on_line = on_line

    def feed(self, chunk: bytes) -> None:
        self.log.write(chunk)
        self.log.flush()
        self.buf += chunk
        *lines, self.buf = re.split(rb"[\r\n]", self.buf)
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)
                self.on_line(self, line)


class LocalBackend:
    """Runs RunSpecs under SWEEP_DIR/runs/<run_id>; see the module docstring for the guarantees."""

    def __init__(self, sweep_dir, *, command=DEFAULT_COMMAND, parallel: int = 1, max_attempts: int = 2,
                 gpus: list[str] | None = None, env: dict | None = None,
                 on_event: Callable[[RunEvent], None] | None = None, est_flops_per_s: float | None = None):
        if max_attempts < 1:
            raise ValueError(f"--max-attempts={max_attempts}: must be >= 1")
        self.sweep_dir = pathlib.Path(sweep_dir)
        self.command = tuple(command)
        self.slots = device_slots(parallel, gpus)
        self.max_attempts = max_attempts
        self.env = dict(env or {})
        self.on_event = on_event or (lambda e: None)
        self.est_flops_per_s = est_flops_per_s

    # -- one attempt ------------------------------------------------------------------------
    def _child_env(self, slot: dict) -> dict:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if "gpus" in slot:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot["gpus"])
        if "cpus" in slot:
            for k in _THREAD_ENV:
                env[k] = str(len(slot["cpus"]))
        env.update(self.env)
        return env

    def _start(self, spec, slot, attempt: int, lock: RunLock, on_line) -> _Active:
        rd = run_dir_of(self.sweep_dir, spec.run_id)
        cfg_path = rd / "launch_config.json"
        _write_json_atomic(cfg_path, spec.config.to_dict())
        old = read_result(rd)
        if old is not None:  # a failed result from an earlier attempt: keep it aside, result.json = finished
            os.replace(rd / "result.json", rd / "result.failed.json")
        cmd = [c.format(config=cfg_path, run_dir=rd, run_id=spec.run_id) for c in self.command]
        status = _read_json(rd / "launch.json") or {"run_id": spec.run_id, "attempts": 0, "history": []}
        if status.get("state") == "running":  # we hold the lock, so that process died (kill -9, crash)
            status["history"].append({"attempt": status["attempts"], "state": "interrupted",
                                      "error": "the sweep process died while the run was executing",
                                      "started_at": status.get("started_at")})
        log = open(rd / "train.log", "ab")
        log.write(f"\n=== try {status['attempts'] + 1} (attempt {attempt} of this sweep invocation) at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self._child_env(slot), preexec_fn=_preexec(slot.get("cpus"), os.getpid()))
        status.update(attempts=status["attempts"] + 1, state="running", pid=proc.pid, host=socket.gethostname(),
                      started_at=time.time(), command=cmd, device_slot={k: sorted(v) for k, v in slot.items()})
        _write_json_atomic(rd / "launch.json", status)
        return _Active(spec, proc, log, slot, attempt, lock, on_line)

    def _settle(self, a: _Active) -> tuple[str, str | None, dict | None]:
        """-> (state 'ok'|'failed', reason, result) for a finished attempt; updates launch.json."""
        rd = run_dir_of(self.sweep_dir, a.spec.run_id)
        rc = a.proc.returncode
        result = read_result(rd)
        if result is not None and result.get("status") == "ok":
            state, reason = "ok", None
        elif result is not None:
            state, reason = "failed", result.get("error") or "result.json status 'failed' with no error message"
        else:
            state = "failed"
            if rc is not None and rc < 0:
                how = f"killed by {signal.Signals(-rc).name}"
            else:
                how = f"exit code {rc}" if rc else "exited 0 without writing result.json"
            last = a.tail[-1] if a.tail else "no output"
            reason = f"{how}; last output: {last}"
        wall = time.time() - a.started
        a.log.write(f"=== {state} after {wall:.1f}s (exit {rc})"
                    f"{': ' + reason if reason else ''}\n".encode())
        a.log.close()
        status = _read_json(rd / "launch.json") or {"run_id": a.spec.run_id, "attempts": 1, "history": []}
        status["history"].append({"attempt": a.attempt, "exit_code": rc, "state": state, "error": reason,
                                  "wall_s": round(wall, 3), "started_at": a.started})
        status.update(state=state, last_exit_code=rc, error=reason, finished_at=time.time(), pid=None)
        _write_json_atomic(rd / "launch.json", status)
        return state, reason, result

    # -- the sweep ------------------------------------------------------------------------------
    def run(self, specs) -> dict[str, str]:
        """Run every spec not yet finished. Returns {run_id: 'ok' | 'failed' | 'running elsewhere'}."""
        specs = list(specs)
        total, done = len(specs), 0
        results: dict[str, str] = {}
        queue = collections.deque((s, 1) for s in specs)
        free = list(range(len(self.slots)))
        running: dict[int, _Active] = {}
        sel = selectors.DefaultSelector()
        done_flops = done_wall = 0.0
        remaining_flops = sum(s.flops for s in specs)

        def eta():
            rate = done_flops / done_wall if done_wall > 0 else self.est_flops_per_s
            return remaining_flops / rate / len(self.slots) if rate else None

        def emit(**kw):
            self.on_event(RunEvent(done=done, total=total, eta_s=eta(), **kw))

        def on_line(a, line):
            emit(kind="output", run_id=a.spec.run_id, attempt=a.attempt, line=line)

        try:
            while queue or running:
                while queue and free:
                    spec, attempt = queue.popleft()
                    rd = run_dir_of(self.sweep_dir, spec.run_id)
                    rd.mkdir(parents=True, exist_ok=True)
                    lock = RunLock(rd)
                    if is_done(rd) or not lock.acquire():
                        skip = "done" if is_done(rd) else "running elsewhere"
                        results[spec.run_id] = "ok" if skip == "done" else skip
                        done += 1
                        remaining_flops -= spec.flops
                        emit(kind="skip", run_id=spec.run_id, status=skip, result=read_result(rd))
                        continue
                    if is_done(rd):  # finished by another process between the check and the lock
                        lock.release()
                        queue.appendleft((spec, attempt))
                        continue
                    slot = free.pop(0)
                    emit(kind="start", run_id=spec.run_id, attempt=attempt)
                    a = self._start(spec, self.slots[slot], attempt, lock, on_line)
                    a.slot_index = slot
                    running[a.proc.stdout.fileno()] = a
                    os.set_blocking(a.proc.stdout.fileno(), False)
                    sel.register(a.proc.stdout, selectors.EVENT_READ, a)
                for key, _ in sel.select(timeout=0.5):
                    a = key.data
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if chunk:
                        a.feed(chunk)
                    else:
                        sel.unregister(key.fileobj)
                        a.eof = True
                        try:  # stdout closed: the trainer is exiting
                            a.proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            pass
                for fd, a in list(running.items()):
                    if a.proc.poll() is None:
                        continue
                    if not a.eof:  # exited, but a grandchild may still hold the pipe: give it 2 s
                        a.exited_at = getattr(a, "exited_at", None) or time.time()
                        if time.time() - a.exited_at < 2:
                            continue
                        sel.unregister(a.proc.stdout)
                    del running[fd]
                    a.proc.stdout.close()
                    state, reason, result = self._settle(a)
                    a.lock.release()
                    free.append(a.slot_index)
                    wall = time.time() - a.started
                    if state == "ok":
                        done_flops += a.spec.flops
                        done_wall += wall
                    if state == "failed" and a.attempt < self.max_attempts:
                        queue.append((a.spec, a.attempt + 1))
                        emit(kind="finish", run_id=a.spec.run_id, attempt=a.attempt, status="retry",
                             error=reason, wall_s=wall, result=result)
                        continue
                    done += 1
                    remaining_flops -= a.spec.flops
                    results[a.spec.run_id] = state
                    emit(kind="finish", run_id=a.spec.run_id, attempt=a.attempt, status=state, error=reason,
                         wall_s=wall, result=result)
        finally:  # interrupted (Ctrl-C, exception in a callback): stop children, leave resumable state
            for a in running.values():
                if a.proc.poll() is None:
                    a.proc.terminate()
                    try:
                        a.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        a.proc.kill()
                        a.proc.wait()
                a.tail.append("interrupted by the sweep process")
                self._settle(a)
                a.lock.release()
            sel.close()
        return results


# -- status -----------------------------------------------------------------------------------------
def _last_metrics_row(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    for ln in reversed(lines):
        try:
            return json.loads(ln)
        except json.JSONDecodeError:
            continue
    return None


def run_status(run_dir, planned: dict | None = None) -> dict:
    """{run_id, state: done|running|failed|pending, attempts, step, steps, loss, note} of one run dir."""
    rd = pathlib.Path(run_dir)
    planned = planned or {}
    result = read_result(rd)
    launch = _read_json(rd / "launch.json") or {}
    row = _last_metrics_row(rd) or {}
    out = {"run_id": rd.name, "attempts": launch.get("attempts", 0), "steps": planned.get("steps"),
           "step": row.get("step"), "loss": None, "note": ""}
    holder = lock_holder(rd) if rd.exists() else None
    if result is not None and result.get("status") == "ok":
        out.update(state="done", step=result.get("step"), loss=result.get("final_eval_loss"),
                   note=f"eval loss {result.get('final_eval_loss', float('nan')):.4f} nats/token")
    elif holder is not None:
        out.update(state="running", note=f"pid {holder.get('pid')} on {holder.get('host')}")
    elif result is not None or launch.get("state") == "failed":
        reason = (result or {}).get("error") or launch.get("error") or "unknown"
        out.update(state="failed", note=reason)
    else:
        note = ""
        if launch:  # started before, stopped without finishing (killed): the trainer will resume it
            note = f"interrupted at step {row.get('step', 0)}; resumes from its last checkpoint"
        out.update(state="pending", note=note)
    return out


def sweep_status(sweep_dir) -> list[dict]:
    """Status rows for the runs in SWEEP_DIR/sweep.json, then any other run dir found under runs/."""
    sweep_dir = pathlib.Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist; run `scaling sweep CONFIG "
                                f"--sweep-dir {sweep_dir}` first (default sweep dir: sweeps/<config stem>)")
    manifest = _read_json(sweep_dir / "sweep.json") or {"runs": []}
    planned = {r["run_id"]: r for r in manifest["runs"]}
    runs_dir = sweep_dir / "runs"
    found = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not planned and not found:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep.json and no runs/ directory: not a sweep directory")
    order = list(planned) + [r for r in found if r not in planned]
    return [run_status(runs_dir / rid, planned.get(rid)) for rid in order]


def status_table(sweep_dir) -> str:
    rows = sweep_status(sweep_dir)
    counts = collections.Counter(r["state"] for r in rows)
    head = ("run_id", "state", "tries", "step", "note")
    table = [head] + [(r["run_id"], r["state"], str(r["attempts"]),
                       f"{r['step'] if r['step'] is not None else '-'}/{r['steps'] or '?'}", r["note"])
                      for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(t[:-1], widths)] + [t[-1]]) for t in table]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    lines.append("")
    lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "failed", "pending"))
                 + f" (of {len(rows)})")
    return "\n".join(lines)
