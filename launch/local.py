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
The loop of one run() is launch/dispatch.py; `status_table(sweep_dir)` (launch/status.py) is
`scaling status`.
"""
import contextlib
import pathlib
import socket
import sys
import time
from typing import Callable

from launch import packs
from launch.dispatch import RunEvent, SweepLoop, SweepResults, is_done  # noqa: F401  (re-exported)
from launch.runlock import RunLock, lock_holder  # noqa: F401  (re-exported for the runner's callers)
from launch.status import run_status, status_table, sweep_status  # noqa: F401  (re-exported likewise)
from launch.workers import (WORKER_COMMAND, Job, Worker, WorkerPool, append_log, device_slots,  # noqa: F401
                            exit_reason, in_process_argv)
from scaling import rundir
from scaling.rundir import read_result, run_dir_of  # noqa: F401  (re-exported for the runner's callers)

DEFAULT_COMMAND = (sys.executable, "-m", "scaling", "train", "--config", "{config}", "--workdir", "{run_dir}")


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


@contextlib.contextmanager
def shared_workers(*backends):
    """One WorkerPool for these backends while the block runs (closed after it), when they are all
    LocalBackends with warm workers on the same device slots and environment; else nothing is shared."""
    same = all(isinstance(b, LocalBackend) and b.warm and b.pool is None and b.slots == backends[0].slots
               and b.env == backends[0].env for b in backends)
    if not (backends and same):
        yield
        return
    pool = WorkerPool()
    for b in backends:
        b.pool = pool
    try:
        yield
    finally:
        pool.close()
        for b in backends:
            b.pool = None


class LocalBackend:
    """Runs RunSpecs under SWEEP_DIR/runs/<run_id>; see the module docstring for the guarantees.

    command / pack_command: the trainer command for one run ({config}, {run_dir}, {run_id}) and for a
    pack ({members}); pack_size: runs per packed job (0 or 1: no packing); warm: run `python -m
    scaling` commands in warm workers (False, or a command of another program: a process per job);
    pool: a WorkerPool whose idle warm workers this run takes and leaves for the next (default: its own,
    shut down when the run ends; `shared_workers`)."""

    def __init__(self, sweep_dir, *, command=DEFAULT_COMMAND, pack_command=packs.PACK_COMMAND, pack_size: int = 1,
                 warm: bool = True, parallel: int = 1, max_attempts: int = 2, gpus: list[str] | None = None,
                 env: dict | None = None, on_event: Callable[[RunEvent], None] | None = None,
                 est_flops_per_s: float | None = None, pool: WorkerPool | None = None):
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
        self.pool = pool

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

    def start_job(self, specs, slot_index: int, attempt: int, locks, on_line, idle: dict) -> Job:
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

    def settle_job(self, job: Job, reason: str | None = None, interrupted: bool = False) -> list[tuple]:
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
        return SweepLoop(self, list(specs)).run()
