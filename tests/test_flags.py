"""Config flags in absl / ml_collections forms (scaling/flags.py) for `scaling train` and `scaling sweep`,
get_config(ARG) variants, flagfiles, their errors, and `scaling --version`."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from launch import cli as launch_cli
from launch import sweep
from scaling import config as cfg_lib
from scaling import flags
from scaling.config_files import apply_override

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "base.py"
DEMO = REPO / "experiments" / "demo_cpu.py"

VARIANTS = """
import ml_collections

def get_config(variant):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"d_model": {"small": 32, "wide": 96}[variant]})
    return c
"""


def test_space_and_equals_forms_give_the_same_config():
    spaced = flags.split(["--config", str(BASE), "--config.model.d_model", "64", "--workdir", "w",
                          "--config.optim.lr", "-1e-3", "--quiet"])
    equals = flags.split([f"--config={BASE}", "--config.model.d_model=64", "--workdir", "w",
                          "--config.optim.lr=-1e-3", "--quiet"])
    assert spaced == equals  # a negative number is a value, not a flag
    assert spaced.rest == ["--workdir", "w", "--quiet"]
    c = cfg_lib.load(spaced.config, spaced.overrides)
    assert c.model.d_model == 64 and c.optim.lr == -1e-3


def test_config_arg_is_passed_to_get_config(tmp_path):
    (tmp_path / "v.py").write_text(VARIANTS)
    assert cfg_lib.load(f"{tmp_path}/v.py:small").model.d_model == 32
    assert cfg_lib.load(f"{tmp_path}/v.py:wide", ["--config.model.d_model=48"]).model.d_model == 48


def test_flagfile_with_comments_nesting_and_order(tmp_path):
    inner = tmp_path / "inner.flags"
    inner.write_text("--config.train.tokens=3e5  # D\n")
    outer = tmp_path / "run.flags"
    outer.write_text(textwrap.dedent(f"""\
        # the base config, made narrower
        --config {BASE}
        // absl's other comment form
        --config.model.d_model 48
        --flagfile={inner}
        --workdir "runs/a b"
        """))
    got = flags.split(["--flagfile", str(outer), "--config.model.d_model=64"])
    assert got.config == str(BASE) and got.rest == ["--workdir", "runs/a b"]
    c = cfg_lib.load(got.config, got.overrides)
    assert c.model.d_model == 64 and c.train.tokens == 300_000  # the command line comes after the file


@pytest.mark.parametrize("argv, words", [
    (["--config.model.d_model"], ["--config.model.d_model", "missing a value"]),
    (["--config.model.d_model", "--workdir", "w"], ["missing a value"]),
    (["--config"], ["--config", "missing a config file"]),
    (["--config", "a.py", "--config=b.py"], ["twice", "a.py", "b.py"]),
    (["--flagfile", "no/such.flags"], ["no/such.flags", "not found"]),
    (["--flagfile"], ["--flagfile", "missing"]),
])
def test_flag_errors_are_named(argv, words):
    with pytest.raises(flags.FlagError) as e:
        flags.split(argv)
    for w in words:
        assert w in str(e.value)


def test_flagfile_cycle_and_bad_quote_are_errors(tmp_path):
    loop = tmp_path / "loop.flags"
    loop.write_text(f"--flagfile={loop}\n")
    with pytest.raises(flags.FlagError, match="includes itself"):
        flags.split([f"--flagfile={loop}"])
    bad = tmp_path / "bad.flags"
    bad.write_text("--config.data.corpus='unclosed\n")
    with pytest.raises(flags.FlagError, match="line 1"):
        flags.split([f"--flagfile={bad}"])


def test_get_config_arg_errors(tmp_path):
    (tmp_path / "v.py").write_text(VARIANTS)
    with pytest.raises(cfg_lib.ConfigError, match="takes no argument, but 'x' was given"):
        cfg_lib.load(f"{BASE}:x")
    with pytest.raises(cfg_lib.ConfigError, match=r"needs an argument; pass it as --config=.*v\.py:ARG"):
        cfg_lib.load(tmp_path / "v.py")
    with pytest.raises(cfg_lib.ConfigError, match=r"get_config\('huge'\) raised KeyError"):
        cfg_lib.load(f"{tmp_path}/v.py:huge")
    with pytest.raises(cfg_lib.ConfigError, match="nothing after ':'"):
        cfg_lib.load(f"{tmp_path}/v.py:")


def _scaling(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_train_cli_reports_flag_errors_without_traceback(tmp_path):
    """Each bad command line ends in one `scaling train: ...` line and exit status 2, before any JAX."""
    cases = [
        (["--config", str(BASE), "--config.model.d_model", "--workdir", str(tmp_path / "r")], "missing a value"),
        (["--workdir", str(tmp_path / "r")], "--config is required"),
        (["--flagfile", str(tmp_path / "none.flags")], "none.flags: file not found"),
        (["--config", f"{BASE}:x", "--workdir", str(tmp_path / "r")], "takes no argument"),
        (["--config", str(BASE), "--config.model.d_modle", "8", "--workdir", str(tmp_path / "r")], "d_modle"),
        (["--config", str(BASE), "--workdir", str(tmp_path / "r"), "--oops"], "unrecognized arguments: --oops"),
    ]
    for argv, words in cases:
        out = _scaling("train", *argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert words in out.stderr and "Traceback" not in out.stderr, (argv, out.stderr)
    assert not (tmp_path / "r").exists()


def test_sweep_takes_overrides_variants_and_flagfiles(tmp_path, capsys):
    """`scaling sweep` reads the same forms: an override of sweep.seeds doubles the plan's runs."""
    def plan_rows(*argv):
        assert launch_cli.sweep_main([*argv, "--dry-run"]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("C")]

    plain = plan_rows(str(DEMO))
    flagfile = tmp_path / "sweep.flags"
    flagfile.write_text(f"--config {DEMO}\n--config.sweep.seeds (0,1)   # two replicates\n"
                        "--config.sweep.replicate_seeds ()\n")
    doubled = plan_rows("--flagfile", str(flagfile))
    assert len(doubled) == 2 * len([r for r in plain if "-s" not in r.split()[0]])  # every point twice
    # a tracker override reaches every run and leaves the run ids (the runs' identities) as they were
    assert plan_rows(str(DEMO), "--config.track.wandb", "true") == plain
    cfg = sweep.load_sweep(DEMO)
    apply_override(cfg, "--config.track.wandb=true")
    assert all(spec.config.track.wandb is True for spec in sweep.expand(cfg))
    assert launch_cli.sweep_main([str(DEMO), "--config.sweep.seedz", "3", "--dry-run"]) == 2
    assert "unknown config key 'sweep.seedz'" in capsys.readouterr().err
    args = launch_cli._parse_sweep_args(["--config=x.py:big", "--cloud.bucket", "gs://b/s", "--config.seed=1"])
    assert (args.config, args.overrides, args.cloud_overrides) == ("x.py:big", ["--config.seed=1"],
                                                                    ["--cloud.bucket=gs://b/s"])
    assert launch_cli._default_sweep_dir("x.py:big") == pathlib.Path("sweeps/x-big")


def test_version_names_package_version_and_commit():
    out = _scaling("--version")
    assert out.returncode == 0, out.stderr
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    import importlib.metadata
    version = importlib.metadata.version("scaling")
    assert out.stdout.strip() == (f"scaling {version} (git {sha}, "
                                  f"{'uncommitted changes' if dirty else 'clean'})")
