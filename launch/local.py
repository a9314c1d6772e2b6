"""Run a sweep's RunSpecs on this machine as subprocesses: resumable, retried, optionally parallel.

    backend = LocalBackend(sweep_dir, parallel=2, max_attempts=2, on_event=print)
    results = backend.run(specs)          # {run_id: 'ok' | 'failed' | 'running elsewhere'}
    results.complete                      # False: some runs are still to do (see .incomplete)

Each run is `python -m scaling train --config RUN_DIR/<launch config> --workdir RUN_DIR` (the
command is a parameter, so tests can use a stand-in trainer), with stdout+stderr appended to
the run's log (file names and who writes what: scaling/rundir.py). Per run:
  - finished (result.json status "ok") -> skipped; the trainer itself resumes an unfinished run
    from RUN_DIR/checkpoints, so rerunning a sweep after a crash or kill -9 just continues it;
  - RUN_DIR/.lock is flock()ed while the run executes, so two sweep processes never run one run at
    once (the kernel drops the lock when the holder dies: no stale locks); the child gets SIGKILL
    if the sweep process dies (PR_SET_PDEATHSIG), so no orphan keeps training unlocked;
  - a failed attempt (non-zero exit, no result.json, or result.json status "failed") is retried up
    to max_attempts times per invocation, after the other runs; the sweep continues past failures;
    a result.json that does not parse is a failure with that reason, and is moved aside likewise;
  - the launch record records attempts, the last exit code and the failure reason;
  - the disk filling up (ENOSPC) stops the sweep: the runs in flight are stopped and recorded as
    failed with a one-line reason naming the file, the rest stay to do (`results.stopped`).
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

from scaling import rundir
from scaling.rundir import read_result, run_dir_of  # noqa: F401  (re-exported for the runner's callers)

DEFAULT_COMMAND = (sys.executable, "-m", "scaling", "train", "--config", "{config}", "--workdir", "{run_dir}")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS")


def is_done(run_dir) -> bool:
    """Finished ok; a corrupt result.json is not (the run is retried, its result moved aside)."""
    try:
        return rundir.is_finished(run_dir)
    except rundir.RunDirError:
        return False


def write_manifest(sweep_dir, specs, source: str = "") -> pathlib.Path:
    """The sweep manifest: the planned runs (so `scaling status` can list the pending ones).

    A directory planned by another sweep file is refused (its runs would be mixed with ours); the
    same sweep file, edited, replaces the plan (analysis then loads only the planned runs)."""
    old = rundir.read_manifest(sweep_dir)
    old_name, new_name = pathlib.Path((old or {}).get("source") or "").stem, pathlib.Path(str(source)).stem
    if old and old_name and new_name and old_name != new_name:
        raise ValueError(f"{sweep_dir} holds the sweep {old_name!r} ({rundir.SWEEP_MANIFEST}); this is "
                         f"{new_name!r}: use --sweep-dir sweeps/{new_name}, or delete {sweep_dir} to start over")
    return rundir.write_manifest(sweep_dir, {"source": str(source), "written_at": time.time(),
                                             "runs": [s.summary() for s in specs]})


def _launch_record(run_dir: pathlib.Path, run_id: str) -> dict:
    """The run's launch record, or a fresh record (with a note in its history when the old one was corrupt)."""
    fresh = {"run_id": run_id, "attempts": 0, "history": []}
    try:
        return rundir.read_json_object(run_dir / rundir.LAUNCH) or fresh
    except rundir.RunDirError as e:
        fresh["history"].append({"state": "corrupt", "error": f"replaced a corrupt launch record: {e}"})
        return fresh


def _write_log(log, data: bytes) -> None:
    log.write(data)
    log.flush()


def _append_log(log, data: bytes) -> None:
    """Append to a run's log; DiskFullError naming it when the disk is full."""
    try:
        _write_log(log, data)
    except OSError as e:
        if rundir.is_disk_full(e):
            raise rundir.DiskFullError(log.name) from e
        raise


class SweepResults(dict):
    """{run_id: 'ok' | 'failed' | 'running elsewhere'} for the runs this invocation settled, plus
    what a caller needs to say whether the sweep is complete."""

    def __init__(self, planned: list[str]):
        super().__init__()
        self.planned = planned  # run ids asked for, in order
        self.stopped: str | None = None  # why the sweep stopped early (disk full), None if it did not

    @property
    def incomplete(self) -> list[str]:
        """Runs not finished by this invocation nor found finished: running elsewhere, or never started."""
        return [r for r in self.planned if self.get(r) not in ("ok", "failed")]

    @property
    def complete(self) -> bool:
        """Every planned run settled here (ok or failed for good) and the sweep was not stopped."""
        return not self.incomplete and self.stopped is None


class RunLock:
    """An flock() on RUN_DIR/.lock, holding {pid, host, since} while held. Released by the kernel on death."""

    def __init__(self, run_dir):
        self.path = pathlib.Path(run_dir) / rundir.LOCK
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
    path = pathlib.Path(run_dir) / rundir.LOCK
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
        self.slot_index = None
        self.tail = collections.deque(maxlen=20)
        self.eof = False
        self.on_line = on_line

    def feed(self, chunk: bytes) -> None:
        _append_log(self.log, chunk)
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
        cfg_path = rd / rundir.LAUNCH_CONFIG
        rundir.write_json(cfg_path, spec.config.to_dict())
        rundir.set_aside_failed_result(rd)  # an earlier attempt's failed result: result.json = finished
        cmd = [c.format(config=cfg_path, run_dir=rd, run_id=spec.run_id) for c in self.command]
        status = _launch_record(rd, spec.run_id)
        if status.get("state") == "running":  # we hold the lock, so that process died (kill -9, crash)
            status["history"].append({"attempt": status["attempts"], "state": "interrupted",
                                      "error": "the sweep process died while the run was executing",
                                      "started_at": status.get("started_at")})
        log = open(rd / rundir.TRAIN_LOG, "ab")
        try:
            _append_log(log, f"\n=== try {status['attempts'] + 1} (attempt {attempt} of this sweep invocation) "
                             f"at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
        except OSError:
            log.close()
            raise
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self._child_env(slot), preexec_fn=_preexec(slot.get("cpus"), os.getpid()))
        status.update(attempts=status["attempts"] + 1, state="running", pid=proc.pid, host=socket.gethostname(),
                      started_at=time.time(), command=cmd, device_slot={k: sorted(v) for k, v in slot.items()})
        try:
            rundir.write_json(rd / rundir.LAUNCH, status)
        except BaseException:  # no record of it, so no run: stop it (the caller releases the lock)
            proc.kill()
            proc.wait()
            log.close()
            raise
        return _Active(spec, proc, log, slot, attempt, lock, on_line)

    def _settle(self, a: _Active, reason: str | None = None,
                interrupted: bool = False) -> tuple[str, str | None, dict | None]:
        """-> (state 'ok'|'failed'|'interrupted', reason, result) for a finished attempt; updates the
        launch record.

        `reason` overrides the failure reason (the sweep stopped the attempt). `interrupted`: the sweep
        itself was interrupted (Ctrl-C), so an unfinished attempt is 'interrupted' (to resume), not
        failed. With the disk full, the log line and the launch record are written if they still fit."""
        rd = run_dir_of(self.sweep_dir, a.spec.run_id)
        rc = a.proc.returncode
        try:
            result = read_result(rd)
        except rundir.RunDirError as e:
            result, corrupt = None, f"corrupt result: {e}"
        else:
            corrupt = None
        if result is not None and result.get("status") == "ok" and reason is None:
            state = "ok"
        else:
            state = "failed"
            if reason is None and result is not None:
                reason = result.get("error") or f"{rundir.RESULT} status 'failed' with no error message"
            reason = reason or corrupt or self._exit_reason(a)
            if interrupted and corrupt is None and result is None:
                state = "interrupted"
        wall = time.time() - a.started
        status = _launch_record(rd, a.spec.run_id)
        status["history"].append({"attempt": a.attempt, "exit_code": rc, "state": state, "error": reason,
                                  "wall_s": round(wall, 3), "started_at": a.started})
        status.update(state=state, last_exit_code=rc, error=reason, finished_at=time.time(), pid=None)
        try:
            _append_log(a.log, f"=== {state} after {wall:.1f}s (exit {rc}){': ' + reason if reason else ''}\n"
                        .encode())
        except rundir.DiskFullError:
            pass  # the reason goes to the launch record below, if that still fits
        finally:
            a.log.close()
        try:
            rundir.write_json(rd / rundir.LAUNCH, status)
        except rundir.DiskFullError:
            pass  # it stays "running"; with the lock released, status shows the run as interrupted
        return state, reason, result

    @staticmethod
    def _exit_reason(a: _Active) -> str:
        rc = a.proc.returncode
        if rc is not None and rc < 0:
            how = f"killed by {signal.Signals(-rc).name}"
        else:
            how = f"exit code {rc}" if rc else f"exited 0 without writing {rundir.RESULT}"
        return f"{how}; last output: {a.tail[-1] if a.tail else 'no output'}"

    # -- the sweep ------------------------------------------------------------------------------
    def run(self, specs) -> SweepResults:
        """Run every spec not yet finished; see SweepResults for what comes back."""
        specs = list(specs)
        total, done = len(specs), 0
        results = SweepResults([s.run_id for s in specs])
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

        def settle(a, reason=None, interrupted=False):
            state, reason, result = self._settle(a, reason, interrupted)
            a.lock.release()
            free.append(a.slot_index)
            return state, reason, result

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
                        emit(kind="skip", run_id=spec.run_id, status=skip, result=read_result(rd) if skip == "done"
                             else None)
                        continue
                    if is_done(rd):  # finished by another process between the check and the lock
                        lock.release()
                        queue.appendleft((spec, attempt))
                        continue
                    slot = free.pop(0)
                    emit(kind="start", run_id=spec.run_id, attempt=attempt)
                    try:
                        a = self._start(spec, self.slots[slot], attempt, lock, on_line)
                    except BaseException:
                        lock.release()
                        free.append(slot)
                        raise
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
                    state, reason, result = settle(a)
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
        except rundir.DiskFullError as e:  # every further write would fail too: stop, say what filled
            results.stopped = str(e)
        finally:  # stopped or interrupted (Ctrl-C, exception in a callback): stop children, leave resumable state
            for a in running.values():
                if a.proc.poll() is None:
                    a.proc.terminate()
                    try:
                        a.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        a.proc.kill()
                        a.proc.wait()
                if results.stopped is None:
                    a.tail.append("interrupted by the sweep process")
                    settle(a, interrupted=True)
                    continue
                _, reason, _ = settle(a, results.stopped)
                results[a.spec.run_id] = "failed"
                emit(kind="finish", run_id=a.spec.run_id, attempt=a.attempt, status="failed", error=reason,
                     wall_s=time.time() - a.started)
            sel.close()
        return results


# -- status -----------------------------------------------------------------------------------------
def run_status(run_dir, planned: dict | None = None) -> dict:
    """{run_id, state: done|running|failed|pending, attempts, step, steps, loss, note} of one run dir.
    A run-dir file that does not parse makes the run "failed" with the note "corrupt: FILE: reason"."""
    rd = pathlib.Path(run_dir)
    planned = planned or {}
    corrupt = []
    try:
        result = read_result(rd)
    except rundir.RunDirError as e:
        result = None
        corrupt.append(str(e))
    try:
        launch = rundir.read_json_object(rd / rundir.LAUNCH) or {}
    except rundir.RunDirError as e:
        launch = {}
        corrupt.append(str(e))
    row = rundir.last_metrics_row(rd) or {}
    out = {"run_id": rd.name, "attempts": launch.get("attempts", 0), "steps": planned.get("steps"),
           "step": row.get("step"), "loss": None, "note": ""}
    holder = lock_holder(rd) if rd.exists() else None
    if result is not None and result.get("status") == "ok":
        out.update(state="done", step=result.get("step"), loss=result.get("final_eval_loss"),
                   note=f"eval loss {result.get('final_eval_loss', float('nan')):.4f} nats/token")
    elif holder is not None:
        out.update(state="running", note=f"pid {holder.get('pid')} on {holder.get('host')}")
    elif corrupt:
        out.update(state="failed", note="; ".join(f"corrupt: {c}" for c in corrupt))
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
    """Status rows for the runs the manifest plans, then any other run dir found in the sweep."""
    sweep_dir = pathlib.Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist; run `scaling sweep CONFIG "
                                f"--sweep-dir {sweep_dir}` first (default sweep dir: sweeps/<config stem>)")
    planned = rundir.planned_runs(sweep_dir)  # RunDirError (a ValueError naming the file) when corrupt
    found = [p.name for p in rundir.run_dirs(sweep_dir) if p.parent.name == rundir.RUNS]
    if not planned and not found:
        raise FileNotFoundError(f"{sweep_dir} holds no {rundir.SWEEP_MANIFEST} and no run directories under "
                                f"{rundir.RUNS}/: not a sweep directory")
    order = list(planned) + [r for r in found if r not in planned]
    return [run_status(run_dir_of(sweep_dir, rid), planned.get(rid)) for rid in order]


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
