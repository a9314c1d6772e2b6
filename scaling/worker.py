"""`python -m scaling worker`: a warm trainer process that runs job after job in-process.

The sweep runner (launch/workers.py) starts one per device slot and writes it one request per line
on stdin:

    {"id": "<nonce>", "argv": ["train", "--config", "RUN_DIR/launch_config.json", "--workdir", "RUN_DIR"]}

Each job runs as `python -m scaling ARGV...` would in a fresh process (same commands, same exit
codes, same output on stdout/stderr), but imports, the JAX backend and XLA's compiled-program
caches stay warm from one job to the next. After everything the job printed, the worker writes the
frame line `JOB_END <nonce> {"rc": N}` on stdout: that line, not the process's exit, tells the
runner the job is over. EOF on stdin ends the worker. A crash or kill of the worker is seen by the
runner as the process's exit: the job is recorded as failed and resumes on a fresh worker.
"""
import gc
import json
import os
import sys
import traceback

# The first word of a job's end frame; with the runner's per-job nonce after it, no trainer output
# can end a job by accident.
JOB_END = "\x1escaling-worker-job-end"


def end_frame(nonce: str, rc: int) -> bytes:
    """The line that ends job `nonce` with exit code `rc` (the runner parses it with parse_end_frame)."""
    return f"\n{JOB_END} {nonce} {json.dumps({'rc': rc})}\n".encode()


def parse_end_frame(line: str, nonce: str) -> int | None:
    """The exit code if `line` is job `nonce`'s end frame, else None."""
    head = f"{JOB_END} {nonce} "
    if not line.startswith(head):
        return None
    try:
        return int(json.loads(line[len(head):])["rc"])
    except (ValueError, KeyError, TypeError):
        return None


def run_job(argv: list[str]) -> int:
    """One job as `python -m scaling ARGV` would run it; its exit code (1 after an uncaught exception)."""
    from scaling import cli
    try:
        return int(cli.main(argv) or 0)
    except SystemExit as e:  # argparse errors and sys.exit() inside a command end the job, not the worker
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # a fresh process would print the traceback and exit 1
        traceback.print_exc()
        return 1


def main(argv: list[str]) -> int:
    """Serve the requests on stdin until EOF; 2 on a request that does not parse."""
    if argv:
        print(f"scaling worker: takes no arguments (got {' '.join(argv)}); requests come on stdin, one JSON "
              "object per line: {\"id\": ..., \"argv\": [...]}", file=sys.stderr)
        return 2
    # The request channel moves off fd 0, so no job (nor a data-loader child) can read it by accident.
    requests = os.fdopen(os.dup(0), "r")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for line in requests:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            nonce, job_argv = str(req["id"]), [str(a) for a in req["argv"]]
        except (ValueError, KeyError, TypeError) as e:
            print(f"scaling worker: bad request {line.strip()[:200]!r}: {e}", file=sys.stderr)
            return 2
        rc = run_job(job_argv)
        gc.collect()  # the finished run's arrays and compiled steps go now, not during the next run
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, end_frame(nonce, rc))
    return 0
