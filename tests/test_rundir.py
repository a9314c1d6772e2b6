"""scaling.rundir: the run-directory contract's writer, readers and rules (no JAX, no training)."""
import errno
import json
import os
import subprocess
import sys

import pytest

from scaling import rundir


def test_write_json_is_atomic_and_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    path = tmp_path / rundir.RESULT
    rundir.write_json(path, {"status": "ok", "x": [1, 2]})
    assert json.loads(path.read_text()) == {"status": "ok", "x": [1, 2]}
    assert os.listdir(tmp_path) == [rundir.RESULT]  # no temp file left behind
    # the data (through the temp file, renamed afterwards) and then the directory holding the rename
    assert len(synced) == 2 and synced[1] == str(tmp_path)


def test_write_json_disk_full_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / rundir.LAUNCH
    rundir.write_json(path, {"state": "ok"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(rundir.DiskFullError, match=f"disk full.*{path}") as e:
        rundir.write_json(path, {"state": "running"})
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert json.loads(path.read_text()) == {"state": "ok"}
    assert os.listdir(tmp_path) == [rundir.LAUNCH]


@pytest.mark.parametrize("text, reason", [('{"status": "ok", "tok', "does not parse as JSON"),
                                          ("[1, 2]", "holds a JSON list, expected an object")])
def test_corrupt_result_names_the_file(tmp_path, text, reason):
    (tmp_path / rundir.RESULT).write_text(text)
    with pytest.raises(rundir.RunDirError, match=f"{tmp_path / rundir.RESULT}: {reason}") as e:
        rundir.read_result(tmp_path)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(rundir.RunDirError):
        rundir.is_finished(tmp_path)


def test_result_absent_finished_and_failed(tmp_path):
    assert rundir.read_result(tmp_path) is None and not rundir.is_finished(tmp_path)
    rundir.write_json(tmp_path / rundir.RESULT, {"status": "failed", "error": "boom"})
    assert not rundir.is_finished(tmp_path)
    rundir.write_json(tmp_path / rundir.RESULT, {"status": "ok"})
    assert rundir.is_finished(tmp_path)


def test_an_ok_result_is_never_replaced(tmp_path):
    assert rundir.write_result(tmp_path, {"status": "ok", "loss": 1.0})
    assert not rundir.write_result(tmp_path, {"status": "failed", "error": "BrokenPipeError"})
    assert not rundir.write_result(tmp_path, {"status": "ok", "loss": 2.0})
    assert rundir.read_result(tmp_path) == {"status": "ok", "loss": 1.0}
    (tmp_path / rundir.RESULT).write_text("{")  # a corrupt one is no finished result: replaced
    assert rundir.write_result(tmp_path, {"status": "failed", "error": "x"})


def test_set_aside_moves_failed_and_corrupt_results_only(tmp_path):
    assert rundir.set_aside_failed_result(tmp_path) is None  # nothing there
    rundir.write_json(tmp_path / rundir.RESULT, {"status": "ok"})
    assert rundir.set_aside_failed_result(tmp_path) is None and rundir.is_finished(tmp_path)
    rundir.write_json(tmp_path / rundir.RESULT, {"status": "failed", "error": "NaN at step 3"})
    assert rundir.set_aside_failed_result(tmp_path) == "failed: NaN at step 3"
    assert not (tmp_path / rundir.RESULT).exists()
    assert json.loads((tmp_path / rundir.FAILED_RESULT).read_text())["error"] == "NaN at step 3"
    (tmp_path / rundir.RESULT).write_text("[]")
    assert rundir.set_aside_failed_result(tmp_path).startswith("corrupt: ")
    assert (tmp_path / rundir.FAILED_RESULT).read_text() == "[]"


def _metrics(tmp_path, text):
    rundir.metrics_path(tmp_path).write_text(text)


def test_metrics_rows_tail_cut_by_a_kill_is_skipped_a_corrupt_line_is_named(tmp_path):
    assert rundir.read_metrics(tmp_path) == [] and rundir.last_metrics_row(tmp_path) is None
    _metrics(tmp_path, '{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # no newline: a write cut short
    assert rundir.read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert rundir.last_metrics_row(tmp_path) == {"step": 2}
    _metrics(tmp_path, '{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(rundir.RunDirError, match=rf"{rundir.METRICS} line 2 does not parse"):
        rundir.read_metrics(tmp_path)
    assert rundir.last_metrics_row(tmp_path) == {"step": 3}
    _metrics(tmp_path, '{"step": 1}\n[3]\n')
    with pytest.raises(rundir.RunDirError, match="line 2 holds a JSON list"):
        rundir.read_metrics(tmp_path)


def test_sweep_run_dirs_and_manifest(tmp_path):
    assert rundir.run_dir_of(tmp_path, "a") == tmp_path / rundir.RUNS / "a"
    for rid, name in (("b", rundir.RESULT), ("a", rundir.CONFIG), ("c", rundir.LAUNCH)):
        rundir.run_dir_of(tmp_path, rid).mkdir(parents=True)
        (rundir.run_dir_of(tmp_path, rid) / name).write_text("{}")
    rundir.run_dir_of(tmp_path, "empty").mkdir()
    assert [p.name for p in rundir.run_dirs(tmp_path)] == ["a", "b", "c"]
    assert rundir.planned_runs(tmp_path) == {}
    rundir.write_manifest(tmp_path, {"runs": [{"run_id": "a", "budget": 1e13}]})
    assert rundir.planned_runs(tmp_path) == {"a": {"run_id": "a", "budget": 1e13}}
    (tmp_path / rundir.SWEEP_MANIFEST).write_text('{"runs": {"a": 1}}')
    with pytest.raises(rundir.RunDirError, match=rf"{rundir.SWEEP_MANIFEST}: expected"):
        rundir.planned_runs(tmp_path)


def test_rundir_imports_no_jax():
    code = "import sys, scaling.rundir; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
