"""The loop of one LocalBackend.run: jobs (a run, or a pack) onto free device slots, the children's
output to their runs, each finished job settled per member, retries queued, and on the way out
(Ctrl-C, disk full) the jobs in flight stopped and recorded so a rerun resumes them.

    SweepLoop(backend, specs).run() -> SweepResults     # what LocalBackend.run returns
"""
import collections
import dataclasses
import os
import selectors
import subprocess
import time

from launch import packs
from launch.runlock import RunLock
from launch.workers import Job, Worker, program_key
from scaling import branch, rundir
from scaling.rundir import read_result, run_dir_of


def is_done(run_dir) -> bool:
    """Finished ok; a corrupt result.json is not (the run is retried, its result moved aside)."""
    try:
        return rundir.is_finished(run_dir)
    except rundir.RunDirError:
        return False


def work_flops(spec) -> float:
    """The training FLOPs a run executes, for the ETA: its C, or a WSD branch's own steps' share of it
    (scaling.branch.executed_fraction: the trunk trained the rest)."""
    return spec.flops * branch.executed_fraction(spec.config)


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



class SweepLoop:
    """One invocation of LocalBackend.run: the queue of jobs (a run, or a pack), the free device
    slots, the workers and the counts behind the progress events."""

    def __init__(self, backend, specs: list):
        self.b = backend
        self.total, self.done = len(specs), 0
        self.results = SweepResults([s.run_id for s in specs])
        self.queue = collections.deque((p, 1) for p in packs.group(specs, backend.pack_size))
        self.free = list(range(len(backend.slots)))
        # slot -> warm worker waiting for its next job: the backend's pool (kept after this run) or this run's own
        self.idle: dict[int, Worker] = backend.pool.idle if backend.pool is not None else {}
        self.busy: list[Worker] = []  # workers running a job
        self.sel = selectors.DefaultSelector()
        self.done_flops = self.done_wall = 0.0
        self.remaining_flops = sum(work_flops(s) for s in specs)

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
                    self.dispatch(*self.next_job(self.free[0]))
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
        self.remaining_flops -= work_flops(spec)
        self.emit(kind="skip", run_id=spec.run_id, status=skip, result=read_result(rd) if finished else None)
        return None

    def next_job(self, slot: int) -> tuple:
        """The queue's first job whose step the slot's idle warm worker has compiled (same
        workers.program_key), else its head: a warm worker takes the runs of the shapes it has run."""
        worker = self.idle.get(slot)
        if worker is not None and worker.programs:
            for i, (members, _) in enumerate(self.queue):
                if program_key(members[0]) in worker.programs:
                    job = self.queue[i]
                    del self.queue[i]
                    return job
        return self.queue.popleft()

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
            job = self.b.start_job(todo, slot, attempt, locks, self.on_line, self.idle)
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
        out = self.b.settle_job(job, reason, interrupted)
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
                self.done_flops += work_flops(spec)
            if state == "failed" and job.attempt < self.b.max_attempts:
                retry.append(spec)
                self.emit(kind="finish", run_id=spec.run_id, attempt=job.attempt, status="retry", error=reason,
                          wall_s=wall, result=result)
                continue
            self.done += 1
            self.remaining_flops -= work_flops(spec)
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
        if self.b.pool is None:  # a pool's idle workers stay for its next run
            for w in self.idle.values():
                w.shut_down()
        self.sel.close()
