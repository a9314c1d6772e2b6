"""Run a sweep's RunSpecs on this machine: resumable, retried, optionally parallel and packed.

    backend = LocalBackend(sweep_dir, parallel=2, max_attempts=2, on_event=print)
    results = backend.run(specs)          # {run_id: 'ok' | 'failed' | 'running elsewhere'}
    results.complete                      # False: some runs are still to do (see .incomplete)

Each run is `python -m scaling train --config RUN_DIR/<launch config> --workdir RUN_DIR` (the
command is a parameter, so tests can use a stand-in trainer), with stdout+stderr appended to
the run's log (file names and who writes what: scaling/rundir.py). By default the scaling commands
run in warm workers (launch/workers.py): one long-lived `python -m scaling worker` per device slot
takes run after run, so imports and compilation caches are paid once per slot, not once per run;
`warm=False` is one fresh process per run. With `pack_size` k > 1, runs equal up to per-member
scalars (scaling.packed.pack_key) go k at a time to one `train-pack` job (launch/packs.py). Per run:
  - finished (result.json status "ok") -> skipped; the trainer itself resumes an unfinished run
    from RUN_DIR/checkpoints, so rerunning a sweep after a crash or kill -9 just continues it;
  - RUN_DIR/.lock is flock()ed while the run executes, so two sweep processes never run one run at
    once (the kernel drops the lock when the holder dies: no stale locks); every child gets SIGKILL
    if the sweep process dies (PR_SET_PDEATHSIG), so no orphan keeps training unlocked;
  - a failed attempt (non-zero exit, no result.json, or result.json status "failed"; for a warm
    worker also its death: crash, kill -9) is retried up to max_attempts times per invocation,
    after the other runs, on a fresh worker; the sweep continues past failures; a result.json that
    does not parse is a failure with that reason, and is moved aside likewise;
  - the launch record records attempts, the last exit code and the failure reason; a packed run's
    record names its pack, and each member is settled from its own result.json;
  - the disk filling up (ENOSPC) stops the sweep: the runs in flight are stopped and recorded as
    failed with a one-line reason naming the file, the rest stay to do (`results.stopped`).
Parallel runs each get a disjoint device subset: CUDA_VISIBLE_DEVICES for GPUs, else a disjoint
set of CPU cores (sched_setaffinity, plus *_NUM_THREADS) so k runs do not oversubscribe the host.
`status_table(sweep_dir)` (launch/status.py) is `scaling status`.
"""
import collections
import dataclasses
import os
import pathlib
import selectors
import socket
import subprocess
import sys
import time
from typing import Callable

from launch import packs
from launch.runlock import RunLock, lock_holder  # noqa: F401  (re-exported for the runner's callers)
from launch.status import run_status, status_table, sweep_status  # noqa: F401  (re-exported likewise)
from launch.workers import (WORKER_COMMAND, Job, Worker, append_log, device_slots, exit_reason,  # noqa: F401
                            in_process_argv)
from scaling import rundir
from scaling.rundir import read_result, run_dir_of  # noqa: F401  (re-exported for the runner's callers)

DEFAULT_COMMAND = (sys.executable, "-m", "scaling", "train", "--config", "{config}", "--workdir", "{run_dir}")


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
    pack: tuple = ()  # the run ids sharing this run's packed job (start events); () when it runs alone



class LocalBackend:
    """Runs RunSpecs under SWEEP_DIR/runs/<run_id>; see the module docstring for the guarantees.

    command / pack_command: the trainer command for one run ({config}, {run_dir}, {run_id}) and for a
    pack ({members}); pack_size: runs per packed job (0 or 1: no packing); warm: run `python -m
    scaling` commands in warm workers (False, or a command of another program: a process per job)."""

    def __init__(self, sweep_dir, *, command=DEFAULT_COMMAND, pack_command=packs.PACK_COMMAND, pack_size: int = 1,
                 warm: bool = True, parallel: int = 1, max_attempts: int = 2, gpus: list[str] | None = None,
                 env: dict | None = None, on_event: Callable[[RunEvent], None] | None = None,
                 est_flops_per_s: float | None = None):
        if max_attempts < 1:
            raise ValueError(f"--max-attempts={max_attempts}: must be >= 1")
        if pack_size < 0:
            raise ValueError(f"sweep.pack_size={pack_size}: must be >= 0 (0 or 1: no packing)")
        packs.check_trainer(pack_command, pack_size)
        self.sweep_dir = pathlib.Path(sweep_dir)
        self.command, self.pack_command = tuple(command), tuple(pack_command)
        self.pack_size = pack_size
        self.warm = warm and in_process_argv(self.command) is not None and (
            pack_size <= 1 or in_process_argv(self.pack_command) is not None)
        self.slots = device_slots(parallel, gpus)
        self.max_attempts = max_attempts
        self.env = dict(env or {})
        self.on_event = on_event or (lambda e: None)
        self.est_flops_per_s = est_flops_per_s

    # -- one attempt ------------------------------------------------------------------------
    def _command(self, specs, cfg_paths) -> list[str]:
        """The trainer command line for these members: the run command alone, the pack command for several."""
        if len(specs) == 1:
            rd = run_dir_of(self.sweep_dir, specs[0].run_id)
            return [c.format(config=cfg_paths[0], run_dir=rd, run_id=specs[0].run_id) for c in self.command]
        return packs.pack_argv(self.pack_command,
                               [(p, run_dir_of(self.sweep_dir, s.run_id)) for s, p in zip(specs, cfg_paths)])

    def _prepare(self, spec):
        """A member's run dir ready for an attempt: launch config, failed result set aside, log with its
        header; -> (config path, launch record, open log)."""
        rd = run_dir_of(self.sweep_dir, spec.run_id)
        cfg_path = rd / rundir.LAUNCH_CONFIG
        rundir.write_json(cfg_path, spec.config.to_dict())
        rundir.set_aside_failed_result(rd)  # an earlier attempt's failed result: result.json = finished
        status = _launch_record(rd, spec.run_id)
        if status.get("state") == "running":  # we hold the lock, so that process died (kill -9, crash)
            status["history"].append({"attempt": status["attempts"], "state": "interrupted",
                                      "error": "the sweep process died while the run was executing",
                                      "started_at": status.get("started_at")})
        return cfg_path, status

    def _start(self, specs, slot_index: int, attempt: int, locks, on_line, idle: dict) -> Job:
        """Start one attempt of `specs` (one run, or a pack) on the slot; idle: {slot: warm Worker}."""
        prepared = [self._prepare(s) for s in specs]
        cmd = self._command(specs, [p for p, _ in prepared])
        pack = f" (pack of {len(specs)}: {' '.join(s.run_id for s in specs)})" if len(specs) > 1 else ""
        logs = []
        try:
            for spec, (_, status) in zip(specs, prepared):
                logs.append(open(run_dir_of(self.sweep_dir, spec.run_id) / rundir.TRAIN_LOG, "ab"))
                append_log(logs[-1], f"\n=== try {status['attempts'] + 1} (attempt {attempt} of this sweep "
                           f"invocation) at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}{pack}\n".encode())
        except BaseException:
            for log in logs:
                log.close()
            raise
        job = Job(specs, attempt, locks, logs, slot_index, on_line)
        worker = idle.pop(slot_index, None)
        if worker is not None and not worker.alive():
            worker = None  # died while idle; the loop reaps it
        if worker is None:
            worker = Worker.start(WORKER_COMMAND if self.warm else cmd, self.slots[slot_index], slot_index,
                                  self.env, self.warm)
        worker.take(job, in_process_argv(cmd))
        try:
            for spec, (_, status) in zip(specs, prepared):
                status.update(attempts=status["attempts"] + 1, state="running", pid=worker.proc.pid,
                              host=socket.gethostname(), started_at=time.time(), command=cmd,
                              worker="warm" if self.warm else "process",
                              device_slot={k: sorted(v) for k, v in self.slots[slot_index].items()})
                status.pop("pack", None)  # an earlier attempt's pack
                if len(specs) > 1:
                    status["pack"] = [s.run_id for s in specs]
                rundir.write_json(run_dir_of(self.sweep_dir, spec.run_id) / rundir.LAUNCH, status)
        except BaseException:  # no record of it, so no run: stop it (the caller releases the locks)
            worker.proc.kill()
            worker.proc.wait()
            job.close_logs()
            raise
        return job

    def _settle(self, job: Job, reason: str | None = None, interrupted: bool = False) -> list[tuple]:
        """-> [(spec, state 'ok'|'failed'|'interrupted', reason, result)] per member of a finished
        attempt; updates each member's launch record.

        `reason` overrides the failure reason (the sweep stopped the attempt). `interrupted`: the sweep
        itself was interrupted (Ctrl-C), so an unfinished attempt is 'interrupted' (to resume), not
        failed. With the disk full, the log line and the launch record are written if they still fit."""
        try:
            job.flush()
        except rundir.DiskFullError:
            pass
        rc, wall, out = job.returncode, time.time() - job.started, []
        for spec, log in zip(job.specs, job.logs):
            state, why, result = self._member_state(job, spec, reason, interrupted)
            rd = run_dir_of(self.sweep_dir, spec.run_id)
            status = _launch_record(rd, spec.run_id)
            status["history"].append({"attempt": job.attempt, "exit_code": rc, "state": state, "error": why,
                                      "wall_s": round(wall, 3), "started_at": job.started,
                                      "pid": job.worker.proc.pid if job.worker else None})
            status.update(state=state, last_exit_code=rc, error=why, finished_at=time.time(), pid=None)
            try:
                append_log(log, f"=== {state} after {wall:.1f}s (exit {rc}){': ' + why if why else ''}\n".encode())
            except rundir.DiskFullError:
                pass  # the reason goes to the launch record below, if that still fits
            try:
                rundir.write_json(rd / rundir.LAUNCH, status)
            except rundir.DiskFullError:
                pass  # it stays "running"; with the lock released, status shows the run as interrupted
            out.append((spec, state, why, result))
        job.close_logs()
        return out

    def _member_state(self, job: Job, spec, reason, interrupted) -> tuple:
        """(state, reason, result) of one member, from its own result.json and the job's end."""
        try:
            result = read_result(run_dir_of(self.sweep_dir, spec.run_id))
        except rundir.RunDirError as e:
            result, corrupt = None, f"corrupt result: {e}"
        else:
            corrupt = None
        if result is not None and result.get("status") == "ok" and reason is None:
            return "ok", None, result
        if reason is None and result is not None:
            reason = result.get("error") or f"{rundir.RESULT} status 'failed' with no error message"
        reason = reason or corrupt or exit_reason(job)
        state = "interrupted" if interrupted and corrupt is None and result is None else "failed"
        return state, reason, result

    # -- the sweep ------------------------------------------------------------------------------
    def run(self, specs) -> SweepResults:
        """Run every spec not yet finished; see SweepResults for what comes back."""
        return _Sweep(self, list(specs)).run()


class _Sweep:
    """One invocation of LocalBackend.run: the queue of jobs (a run, or a pack), the free device
    slots, the workers and the counts behind the progress events."""

    def __init__(self, backend: LocalBackend, specs: list):
        self.b = backend
        self.total, self.done = len(specs), 0
        self.results = SweepResults([s.run_id for s in specs])
        self.queue = collections.deque((p, 1) for p in packs.group(specs, backend.pack_size))
        self.free = list(range(len(backend.slots)))
        self.idle: dict[int, Worker] = {}  # slot -> warm worker waiting for its next job
        self.busy: list[Worker] = []  # workers running a job
        self.sel = selectors.DefaultSelector()
        self.done_flops = self.done_wall = 0.0
        self.remaining_flops = sum(s.flops for s in specs)

    def eta(self) -> float | None:
        rate = self.done_flops / self.done_wall if self.done_wall > 0 else self.b.est_flops_per_s
        return self.remaining_flops / rate / len(self.b.slots) if rate else None

    def emit(self, **kw) -> None:
        self.b.on_event(RunEvent(done=self.done, total=self.total, eta_s=self.eta(), **kw))

    def on_line(self, job: Job, line: str) -> None:
        for s in job.specs:
            self.emit(kind="output", run_id=s.run_id, attempt=job.attempt, line=line)

    def run(self) -> SweepResults:
        try:
            while self.queue or self.busy:
                while self.queue and self.free:
                    self.dispatch(*self.queue.popleft())
                self.read()
                for w in list(self.busy):
                    self.check(w)
        except rundir.DiskFullError as e:  # every further write would fail too: stop, say what filled
            self.results.stopped = str(e)
        finally:  # stopped or interrupted (Ctrl-C, exception in a callback): stop children, leave resumable state
            self.stop_all()
        return self.results

    # -- starting -------------------------------------------------------------------------------
    def claim(self, spec) -> RunLock | None:
        """The run's lock, or None after a skip event (finished, or locked by another sweep process)."""
        rd = run_dir_of(self.b.sweep_dir, spec.run_id)
        rd.mkdir(parents=True, exist_ok=True)
        lock, finished = RunLock(rd), is_done(rd)
        if not finished and lock.acquire():
            if not is_done(rd):
                return lock
            lock.release()  # finished by another process between the check and the lock
            finished = True
        skip = "done" if finished else "running elsewhere"
        self.results[spec.run_id] = "ok" if finished else skip
        self.done += 1
        self.remaining_flops -= spec.flops
        self.emit(kind="skip", run_id=spec.run_id, status=skip, result=read_result(rd) if finished else None)
        return None

    def dispatch(self, members: list, attempt: int) -> None:
        """Start the members still to do as one job on a free slot (a pack of one is an ordinary run)."""
        todo, locks = [], []
        for spec in members:
            lock = self.claim(spec)
            if lock is not None:
                todo.append(spec)
                locks.append(lock)
        if not todo:
            return
        slot = self.free.pop(0)
        pack = tuple(s.run_id for s in todo) if len(todo) > 1 else ()
        for s in todo:
            self.emit(kind="start", run_id=s.run_id, attempt=attempt, pack=pack)
        try:
            job = self.b._start(todo, slot, attempt, locks, self.on_line, self.idle)
        except BaseException:
            for lock in locks:
                lock.release()
            self.free.append(slot)
            raise
        w = job.worker
        self.busy.append(w)
        if w.proc.stdout.fileno() not in self.sel.get_map():  # a new worker (a warm one stays registered)
            self.sel.register(w.proc.stdout, selectors.EVENT_READ, w)

    # -- watching -------------------------------------------------------------------------------
    def read(self) -> None:
        """Route what the children printed to their jobs (up to 0.5 s of waiting)."""
        for key, _ in self.sel.select(timeout=0.5):
            w = key.data
            try:
                chunk = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                w.read(chunk)
                continue
            self.sel.unregister(key.fileobj)
            w.eof = True
            try:  # stdout closed: the child is exiting
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if w.job is None:  # an idle warm worker died: forget it (its slot starts a fresh one)
                if self.idle.get(w.slot_index) is w:
                    del self.idle[w.slot_index]
                w.proc.stdout.close()

    def check(self, w: Worker) -> None:
        """Settle w's job if it is over: its end frame (warm), or its process's exit (cold, or a death)."""
        job = w.job
        if job.ended:
            w.job = None
            self.busy.remove(w)
            if job.frame_rc == 0:
                self.idle[w.slot_index] = w
            else:  # a failed job may have left the process in a bad state: the next job gets a fresh one
                if not w.eof:
                    self.sel.unregister(w.proc.stdout)
                w.shut_down()
            self.finish(job)
            return
        if w.proc.poll() is None:
            return
        if not w.eof:  # exited, but a grandchild may still hold the pipe: give it 2 s
            w.exited_at = w.exited_at or time.time()
            if time.time() - w.exited_at < 2:
                return
            self.sel.unregister(w.proc.stdout)
        self.busy.remove(w)
        w.proc.stdout.close()
        self.finish(job)

    def settle(self, job: Job, reason=None, interrupted=False) -> list[tuple]:
        out = self.b._settle(job, reason, interrupted)
        for lock in job.locks:
            lock.release()
        self.free.append(job.slot_index)
        return out

    def finish(self, job: Job) -> None:
        """Settle each member from its own result; failed members go back to the queue (as one job) while
        attempts remain."""
        wall = time.time() - job.started
        retry = []
        settled = self.settle(job)
        self.done_wall += wall
        for spec, state, reason, result in settled:
            if state == "ok":
                self.done_flops += spec.flops
            if state == "failed" and job.attempt < self.b.max_attempts:
                retry.append(spec)
                self.emit(kind="finish", run_id=spec.run_id, attempt=job.attempt, status="retry", error=reason,
                          wall_s=wall, result=result)
                continue
            self.done += 1
            self.remaining_flops -= spec.flops
            self.results[spec.run_id] = state
            self.emit(kind="finish", run_id=spec.run_id, attempt=job.attempt, status=state, error=reason,
                      wall_s=wall, result=result)
        if retry:
            self.queue.append((retry, job.attempt + 1))

    def stop_all(self) -> None:
        """Stop the jobs in flight and record them (interrupted to resume, or failed with the stop's
        reason); idle workers get EOF."""
        for w in self.busy:
            w.stop()
            w.proc.stdout.close()
            job = w.job
            if self.results.stopped is None:
                job.tail.append("interrupted by the sweep process")
                self.settle(job, interrupted=True)
                continue
            for spec, _, reason, _ in self.settle(job, self.results.stopped):
                self.results[spec.run_id] = "failed"
                self.emit(kind="finish", run_id=spec.run_id, attempt=job.attempt, status="failed", error=reason,
                          wall_s=time.time() - job.started)
        for w in self.idle.values():
            w.shut_down()
        self.sel.close()
