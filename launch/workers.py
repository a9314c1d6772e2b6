"""The sweep runner's processes: device slots, trainer processes, warm workers, and the job running on each.

    slots = device_slots(parallel=2)                         # disjoint CPU cores or GPUs per slot
    w = Worker.start(cmd, slots[0], env, warm=True)          # `python -m scaling worker`, kept between jobs
    job = Job(specs, attempt, locks, logs, on_line); w.take(job, ["train", "--config", C, "--workdir", R])
    ... w.read(chunk) for each chunk of its stdout; job.ended / w.proc.poll() say when the job is over

A cold worker is one trainer process per job (its exit ends the job). A warm worker
(scaling/worker.py) takes job after job on stdin and ends each with a frame line carrying the exit
code; its death (crash, kill -9) ends its job as that exit would. Either way every child gets
SIGKILL if the sweep process dies (PR_SET_PDEATHSIG) and runs pinned to its slot's devices.
"""
import collections
import ctypes
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time

from scaling import rundir, worker

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTEROP_THREADS")
# The prefix of a command a warm worker can run in-process (the rest is its argv).
SCALING_PREFIX = (sys.executable, "-m", "scaling")
WORKER_COMMAND = SCALING_PREFIX + ("worker",)


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


def child_env(slot: dict, extra: dict) -> dict:
    """The environment of a child on `slot`: its devices, thread counts to match, then `extra`."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if "gpus" in slot:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot["gpus"])
    if "cpus" in slot:
        for k in _THREAD_ENV:
            env[k] = str(len(slot["cpus"]))
    env.update(extra)
    return env


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


def in_process_argv(command) -> list[str] | None:
    """The argv a warm worker runs for `command`, or None when it is not a `python -m scaling` command."""
    command = tuple(command)
    return list(command[len(SCALING_PREFIX):]) if command[:len(SCALING_PREFIX)] == SCALING_PREFIX else None


def _write_log(log, data: bytes) -> None:
    log.write(data)
    log.flush()


def append_log(log, data: bytes) -> None:
    """Append to a run's log; DiskFullError naming it when the disk is full."""
    try:
        _write_log(log, data)
    except OSError as e:
        if rundir.is_disk_full(e):
            raise rundir.DiskFullError(log.name) from e
        raise


class Job:
    """One attempt of one run, or of a pack of runs sharing one trainer: its members, their locks and
    logs (every member's log gets the job's output), the output tail, and how it ended."""

    def __init__(self, specs, attempt: int, locks, logs, slot_index: int, on_line):
        self.specs, self.attempt, self.locks, self.logs = list(specs), attempt, list(locks), list(logs)
        self.slot_index, self.on_line = slot_index, on_line
        self.started = time.time()
        self.nonce = secrets.token_hex(8)
        self.buf = b""
        self.tail = collections.deque(maxlen=20)
        self.frame_rc: int | None = None  # the exit code from a warm worker's end frame
        self.worker: "Worker | None" = None

    @property
    def ended(self) -> bool:
        """A warm worker said the job is over (a cold one says so by exiting)."""
        return self.frame_rc is not None

    @property
    def returncode(self) -> int | None:
        return self.frame_rc if self.ended else self.worker.proc.returncode

    def write(self, data: bytes) -> None:
        for log in self.logs:
            append_log(log, data)

    def feed(self, chunk: bytes) -> None:
        """Output of the job: complete lines go to the logs and on_line; the end frame ends the job."""
        self.buf += chunk
        parts = re.split(rb"(?<=[\r\n])", self.buf)
        self.buf = parts.pop()  # a partial last line waits for the rest (or for flush())
        for raw in parts:
            line = raw.decode(errors="replace").rstrip()
            rc = worker.parse_end_frame(line, self.nonce)
            if rc is not None:
                self.frame_rc = rc
                continue
            self.write(raw)
            if line:
                self.tail.append(line)
                self.on_line(self, line)

    def flush(self) -> None:
        """A last line without its newline (a crash mid-print) still reaches the logs."""
        if self.buf:
            buf, self.buf = self.buf, b""
            self.feed(buf + b"\n")

    def close_logs(self) -> None:
        for log in self.logs:
            log.close()


def program_key(spec) -> str:
    """What decides a run's compiled train step, as far as a plan can tell without JAX: its model
    config, batch size and sequence length (scaling/trainer.py's cache key also has the optimizer's
    constants and the mesh, which a sweep's runs of one shape share). Runs with one key that go to a
    worker that compiled it skip compilation."""
    c = spec.config
    return json.dumps([c.model.to_dict(), c.train.batch_size, c.data.seq_len], sort_keys=True, default=str)


class Worker:
    """A child process on one device slot: cold (one job, then it exits) or warm (job after job)."""

    def __init__(self, proc: subprocess.Popen, slot_index: int, warm: bool):
        self.proc, self.slot_index, self.warm = proc, slot_index, warm
        self.job: Job | None = None
        self.programs: set[str] = set()  # program_key of every run it took (warm: steps it has compiled)
        self.eof = False  # its stdout is closed
        self.exited_at: float | None = None
        os.set_blocking(proc.stdout.fileno(), False)

    @classmethod
    def start(cls, command, slot: dict, slot_index: int, env: dict, warm: bool) -> "Worker":
        proc = subprocess.Popen(list(command), stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(slot, env),
                                preexec_fn=_preexec(slot.get("cpus"), os.getpid()))
        return cls(proc, slot_index, warm)

    def take(self, job: Job, argv: list[str] | None = None) -> None:
        """Run `job` here: a warm worker gets the request for `argv`; a cold one is already running it."""
        self.job, job.worker = job, self
        self.programs.update(program_key(s) for s in job.specs)
        if self.warm:
            try:
                self.proc.stdin.write((json.dumps({"id": job.nonce, "argv": argv}) + "\n").encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass  # it died while idle: its exit ends the job like any death

    def read(self, chunk: bytes) -> None:
        """A chunk of the child's stdout: the job's output (output while idle has no run to go to)."""
        if self.job is not None:
            self.job.feed(chunk)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def shut_down(self) -> None:
        """An idle warm worker: EOF on its requests ends it; stopped if it does not go within 5 s."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.stop()
        self.proc.stdout.close()


class WorkerPool:
    """Idle warm workers by device slot, outliving one LocalBackend.run: a branched sweep runs its trunks,
    then its branches, as two runs, and the branches reuse the workers (and the compiled steps) the trunks
    warmed. Whoever made the pool closes it."""

    def __init__(self):
        self.idle: dict[int, Worker] = {}
        """slot index -> a warm worker waiting for its next job."""

    def close(self) -> None:
        """EOF to every idle worker (each ends; stopped if it does not within 5 s)."""
        for w in self.idle.values():
            w.shut_down()
        self.idle.clear()


def exit_reason(job: Job) -> str:
    """Why an attempt ended without a result: the exit (or the signal that killed its process) and its last line."""
    rc = job.returncode
    if rc is not None and rc < 0:
        how = f"killed by {signal.Signals(-rc).name}"
        if job.worker is not None and job.worker.warm:
            how += f" (warm worker pid {job.worker.proc.pid})"
    else:
        how = f"exit code {rc}" if rc else f"exited 0 without writing {rundir.RESULT}"
    return f"{how}; last output: {job.tail[-1] if job.tail else 'no output'}"
