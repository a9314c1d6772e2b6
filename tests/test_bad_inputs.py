"""Bad inputs across the CLIs: one clear line on stderr (file or key, value, what is valid), a non-zero
exit, no traceback and no partial state (issue 12, "Tracebacks instead of errors" and their siblings).

Every case runs in process and stops before any training: config files that do not parse or raise,
JSON configs of the wrong shape, paths that are files where a directory is expected (and the
reverse), and Ctrl-C during a sweep (a stand-in trainer, as in test_local).
"""
import json
import pathlib
import sys

import pytest

from analysis import cli as analysis_cli
from launch import cli as launch_cli
from launch import local
from scaling import train_cli
from test_local import make_specs, standin  # noqa: F401  (standin: the stand-in trainer fixture)

TINY_SWEEP = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(seq_len=32)
    c.train = dict(batch_size=8, eval_tokens=1024, peak_flops=1e11)
    c.optim = dict(warmup_steps=5)
    c.sweep = dict(kind="grid", tokens=(5120,), shapes=dict(explicit=((1, 16),), head_dim=8))
    return c
"""

BAD_CONFIGS = [  # (file name, content, words the one line must hold)
    ("syntax.py", "def get_config(:\n", ["syntax.py", "line 1", "SyntaxError"]),
    ("raises.py", "def get_config():\n    raise RuntimeError('boom')\n", ["raises.py", "RuntimeError: boom", "line 2"]),
    ("top.py", "import nonexistent_module_xyz\n", ["top.py", "ModuleNotFoundError", "while loading"]),
    ("returns.py", "def get_config():\n    return 5\n", ["returns.py", "returned 5", "int", "mapping"]),
    ("noget.py", "x = 1\n", ["noget.py", "get_config()"]),
    ("list.json", "[1, 2]", ["list.json", "[1, 2]", "list", "mapping"]),
    ("null.json", "null", ["null.json", "None", "mapping"]),
    ("bad.json", "{\"train\": ", ["bad.json", "not valid JSON"]),
    ("type.json", '{"train": {"tokens": "lots"}}', ["type.json", "train.tokens='lots'", "int"]),
    ("section.json", '{"train": 5}', ["section.json", "train=5", "section"]),
]


def _one_error_line(err: str, *words) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.parametrize("name,content,words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_train_bad_config_files_are_one_line_and_leave_no_workdir(tmp_path, capsys, name, content, words):
    (tmp_path / name).write_text(content)
    rc = train_cli.main(["--config", str(tmp_path / name), "--workdir", str(tmp_path / "w")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, *words)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name,content,words", [c for c in BAD_CONFIGS if c[0].endswith(".py")],
                         ids=[c[0] for c in BAD_CONFIGS if c[0].endswith(".py")])
def test_sweep_bad_config_files_are_one_line(tmp_path, capsys, name, content, words):
    (tmp_path / name).write_text(content)
    rc = launch_cli.sweep_main([str(tmp_path / name), "--sweep-dir", str(tmp_path / "sw")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, *words)
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("body,words", [
    ("c = ml_collections.ConfigDict()\n    c.sweep = 5", ["sweep holds 5", "int", "mapping"]),
    ("c = ml_collections.ConfigDict()\n    c.sweep = dict(shapes=3)", ["sweep.shapes=3", "section"]),
])
def test_sweep_section_that_is_not_a_mapping(tmp_path, capsys, body, words):
    path = tmp_path / "s.py"
    path.write_text(f"import ml_collections\ndef get_config():\n    {body}\n    return c\n")
    assert launch_cli.sweep_main([str(path), "--dry-run"]) == 2
    _one_error_line(capsys.readouterr().err, "s.py", *words)


def test_sweep_of_a_json_file_is_refused(tmp_path, capsys):
    (tmp_path / "s.json").write_text("[]")
    assert launch_cli.sweep_main([str(tmp_path / "s.json"), "--dry-run"]) == 2
    _one_error_line(capsys.readouterr().err, "s.json", ".py")


def test_workdir_and_sweep_dir_that_are_files(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "s.py").write_text(TINY_SWEEP)
    with pytest.raises(SystemExit) as e:  # argparse's usage error: exit 2
        train_cli.main(["--config", str(tmp_path / "s.py"), "--workdir", str(tmp_path / "afile")])
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, "--workdir", "afile", "existing file")
    assert launch_cli.sweep_main([str(tmp_path / "s.py"), "--sweep-dir", str(tmp_path / "afile")]) == 2
    _one_error_line(capsys.readouterr().err, "afile", "existing file", "--sweep-dir")
    assert (tmp_path / "afile").read_text() == "x"


def test_status_of_a_file_and_of_a_list_result(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert launch_cli.status_main([str(tmp_path / "afile")]) == 2
    _one_error_line(capsys.readouterr().err, "afile")
    rd = tmp_path / "sw" / "runs" / "r0"
    rd.mkdir(parents=True)
    (rd / "result.json").write_text("[]")
    assert launch_cli.status_main([str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "corrupt" in out and "result.json" in out and "list" in out


@pytest.fixture
def points_csv(tmp_path):
    """20 (N, D, loss) rows of a Chinchilla-form law on a grid: enough for every fit."""
    rows = ["n_params,tokens,loss"] + [f"{n},{d},{1.7 + 400 / n ** 0.34 + 410 / d ** 0.28}"
                                       for n in (1e6, 2e6, 4e6, 8e6, 1.6e7) for d in (2e7, 4e7, 8e7, 1.6e8)]
    path = tmp_path / "points.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_fit_out_that_is_a_file(tmp_path, capsys, points_csv):
    (tmp_path / "afile").write_text("x")
    rc = analysis_cli.fit_main([str(points_csv), "--law", "kaplan-d", "--bootstrap", "0", "--out",
                                str(tmp_path / "afile")])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "--out", "afile", "existing file")


def test_a_failed_fit_leaves_no_output_directory(tmp_path, capsys, points_csv):
    out = tmp_path / "fit-out"  # isoflop needs >= 3 budgets; this grid has no interior minima
    assert analysis_cli.fit_main([str(points_csv), "--law", "isoflop", "--bootstrap", "0", "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "approach2")
    assert not out.exists()


@pytest.mark.parametrize("make,words", [
    (lambda p: None, ["data.csv", "not found"]),
    (lambda p: p.mkdir(), ["data.csv", "not found"]),
    (lambda p: p.write_text(""), ["--data", "empty file"]),
    (lambda p: p.write_text("a,b\n1,2\n"), ["lacks column"]),
])
def test_reproduce_bad_data_files_leave_no_output(tmp_path, capsys, make, words):
    data, out = tmp_path / "data.csv", tmp_path / "out"
    make(data)
    assert analysis_cli.reproduce_main(["chinchilla", "--data", str(data), "--out", str(out),
                                        "--bootstrap", "0"]) == 2
    _one_error_line(capsys.readouterr().err, *words)
    assert not out.exists()


def test_reproduce_out_that_is_a_file(tmp_path, capsys, shared_data):
    (tmp_path / "afile").write_text("x")
    rc = analysis_cli.reproduce_main(["bnsl", "--data", str(shared_data / analysis_cli.PAPERS["bnsl"]),
                                      "--out", str(tmp_path / "afile"), "--bootstrap", "0"])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "--out", "afile", "existing file")


def test_ctrl_c_during_a_sweep_records_the_run_as_interrupted_not_failed(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("STANDIN_STEPS", "200")

    def on_event(e):  # Ctrl-C arrives while r0 is training
        if e.kind == "output" and e.line.startswith("step 3/"):
            raise KeyboardInterrupt

    backend = local.LocalBackend(tmp_path / "sw", command=(sys.executable, str(standin), "{config}", "{run_dir}"),
                                 on_event=on_event)
    with pytest.raises(KeyboardInterrupt):
        backend.run(make_specs(2))
    rd = local.run_dir_of(tmp_path / "sw", "r0")
    launch = json.loads((rd / "launch.json").read_text())
    assert launch["state"] == "interrupted" and launch["history"][-1]["state"] == "interrupted"
    status = local.run_status(rd)
    assert status["state"] == "pending" and "resumes" in status["note"]
    assert not (rd / "result.json").exists()


def test_ctrl_c_in_the_sweep_command_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "s.py").write_text(TINY_SWEEP)

    def interrupted(self, specs):
        raise KeyboardInterrupt

    monkeypatch.setattr(local.LocalBackend, "run", interrupted)
    assert launch_cli.sweep_main([str(tmp_path / "s.py"), "--sweep-dir", str(tmp_path / "sw")]) == 130
    _one_error_line(capsys.readouterr().err, "interrupted", "rerun", f"--sweep-dir {tmp_path / 'sw'}")
    assert json.loads(pathlib.Path(tmp_path / "sw" / "sweep.json").read_text())["runs"]  # the plan stays


def test_train_that_fails_before_its_first_checkpoint_leaves_no_run_dir(tmp_path, capsys):
    """A corpus that does not load: one line, and no config.json left to refuse the corrected config."""
    (tmp_path / "c.json").write_text(json.dumps({"data": {"corpus": str(tmp_path / "missing")}}))
    rc = train_cli.main(["--config", str(tmp_path / "c.json"), "--workdir", str(tmp_path / "w"), "--quiet"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "data.corpus", "missing", "valid sources")
    assert not (tmp_path / "w").exists()
