"""`scaling status` for a local sweep: each planned run done / running / failed (reason) / pending.

    status_table(sweep_dir)   # the printed table
    sweep_status(sweep_dir)   # its rows as dicts
"""
import collections
import pathlib

from launch.runlock import lock_holder
from scaling import rundir
from scaling.rundir import read_result, run_dir_of


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
    """The table of the sweep's runs and a count per state; then, for a branched sweep, the same for
    its WSD trunks (SWEEP/trunks: the shared warmup + stable phases the branches start from)."""
    table = _table(sweep_status(sweep_dir))
    trunks = rundir.trunks_dir(sweep_dir)
    if (trunks / rundir.RUNS).is_dir():
        table += f"\n\ntrunks ({trunks}: each branch above restores its trunk's checkpoint):\n" + _table(sweep_status(trunks))
    return table


def _table(rows: list[dict]) -> str:
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
