"""RUN_DIR/.lock: one process runs a run at a time; the kernel drops the lock when its holder dies.

    lock = RunLock(run_dir)
    if lock.acquire(): ...; lock.release()
    lock_holder(run_dir)      # {pid, host, since} of the process running it now, or None
"""
import fcntl
import json
import os
import pathlib
import socket
import time

from scaling import rundir


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
