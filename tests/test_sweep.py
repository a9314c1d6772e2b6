"""launch.sweep: deterministic expansion, stable ids, ladder and hyperparameter rules, plan table.

The N, D, C checks compare against scaling.accounting on each run's resolved config and against
the model actually built (parameter count of the NNX model); the slow test at the end runs the
real trainer on two tiny runs and compares what result.json records with the plan.
"""
import hashlib
import math
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest
from flax import nnx

from launch import cli, local, plan, skypilot, sweep
from scaling import accounting
from scaling import config as cfg_lib
from scaling.model import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_FILE = REPO / "experiments" / "demo_cpu.py"  # the demo itself: a branched WSD sweep
DEMO = f"{DEMO_FILE}:classic"  # its one-run-per-point grid: the base of the planner's mechanics tests


def tiny_sweep(kind="isoflop") -> ml_collections.ConfigDict:
    c = sweep.load_sweep(DEMO)
    c.sweep.kind = kind
    c.sweep.budgets = (2e10, 6e10)
    c.sweep.tokens = (40_960, 81_920)
    c.sweep.shapes.n_targets = (30e3, 95e3)
    c.sweep.shapes.explicit = ()
    c.sweep.tokens_per_param = ()
    c.sweep.min_steps = 5
    return c


def test_expansion_is_deterministic_and_ids_derive_from_config():
    a, b = sweep.expand(tiny_sweep()), sweep.expand(tiny_sweep())
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert [s.config.to_dict() for s in a] == [s.config.to_dict() for s in b]
    for s in a:
        assert s.run_id.endswith(cfg_lib.config_hash(s.config)[:8])
        m = s.config.model
        assert s.run_id.startswith(f"C{sweep._fmt_flops(s.budget)}-L{m.n_layers}-d{m.d_model}-D")
        assert "sweep" not in s.config and "cloud" not in s.config
        assert cfg_lib.resolve(s.config).to_dict() == s.config.to_dict()  # already resolved
    assert len({s.run_id for s in a}) == len(a) == 4


def test_ids_are_stable_across_processes():
    """The id is a content hash (sha256 of canonical JSON), not Python's per-process hash()."""
    code = ("import sys; sys.path.insert(0, %r); from tests.test_sweep import tiny_sweep; "
            "from launch import sweep; print(' '.join(s.run_id for s in sweep.expand(tiny_sweep())))" % str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONHASHSEED": "123", "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == [s.run_id for s in sweep.expand(tiny_sweep())]


def test_replicate_seeds_go_to_the_small_shapes_only_and_keep_the_other_ids():
    base = sweep.expand(tiny_sweep())
    c = tiny_sweep()
    c.sweep.replicate_seeds, c.sweep.replicate_max_params = (1, 2), 50e3  # between the two shapes
    specs = sweep.expand(c)
    small = [s for s in base if s.n_params <= 50e3]
    assert 0 < len(small) < len(base)
    assert len(specs) == len(base) + 2 * len(small)
    assert {s.run_id for s in base} <= {s.run_id for s in specs}  # seed 0's runs keep their ids
    extra = [s for s in specs if s.seed != 0]
    assert sorted((s.n_params, s.tokens, s.seed) for s in extra) == sorted(
        (s.n_params, s.tokens, k) for s in small for k in (1, 2))
    for s in extra:
        assert s.config.seed == s.seed and f"-s{s.seed}-" in s.run_id


def test_ids_change_when_the_config_changes():
    base = {s.run_id for s in sweep.expand(tiny_sweep())}
    c = tiny_sweep()
    c.optim.weight_decay = 0.05  # a base key: every run changes
    assert not base & {s.run_id for s in sweep.expand(c)}
    c = tiny_sweep()
    c.sweep.seeds = (0, 1)  # replicates: the seed-0 runs keep their ids, seed-1 runs are new
    ids = [s.run_id for s in sweep.expand(c)]
    assert len(ids) == 8 and base < set(ids)
    c = tiny_sweep()
    c.sweep.rules.lr_exponent = -0.5  # a rule: runs whose lr changes get new ids
    changed = {s.run_id for s in sweep.expand(c)} - base
    assert changed  # (the N = n_ref run could keep its lr; the others must not)


def test_isoflop_tokens_follow_the_named_convention():
    for convention in ("6nd", "exact"):
        c = tiny_sweep()
        c.sweep.flop_convention = convention
        for s in sweep.expand(c):
            m, T = s.config.model, s.config.data.seq_len
            step_tokens = s.config.train.batch_size * T
            fpt = accounting.flops_per_token(m, T)
            per_token = fpt["6n_total"] if convention == "6nd" else fpt["train"]
            # D is C / per_token rounded DOWN to whole steps: within one step of the budget
            assert 0 <= s.budget - per_token * s.tokens < per_token * step_tokens
            assert s.tokens % step_tokens == 0 and s.steps == s.tokens // step_tokens


def test_plan_numbers_match_accounting_and_the_built_model():
    for s in sweep.expand(tiny_sweep("grid")):
        counts = accounting.param_counts(s.config.model)
        fl = accounting.run_flops(s.config.model, s.config.data.seq_len, s.tokens)
        assert (s.n_params, s.n_params_nonembed, s.n_params_embed) == (
            counts["total"], counts["nonembedding"], counts["embedding"])
        assert (s.flops, s.flops_6nd, s.flops_6nd_nonembed) == (fl["flops"], fl["flops_6nd"],
                                                                fl["flops_6nd_nonembed"])
        assert s.flops_6nd == 6 * s.n_params * s.tokens
        assert s.tokens == s.config.train.tokens
        with nnx.use_eager_sharding(False):  # independent check: count the real model's parameters
            model = nnx.eval_shape(lambda: build_model(s.config.model, 0))
        built = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert built == s.n_params


def test_ladder_rule_and_hyperparameter_rules():
    c = tiny_sweep("grid")
    c.sweep.shapes.n_targets = (30e3, 95e3, 230e3)
    c.sweep.rules.lr_exponent = -0.5
    c.sweep.rules.batch_ref = 16
    c.sweep.rules.batch_d_ref = 40_960
    c.sweep.rules.batch_exponent = 1.0
    specs = sweep.expand(c)
    h, r = c.sweep.shapes, c.sweep.rules
    for s in specs:
        m = s.config.model
        assert m.d_model == h.head_dim * round(h.aspect * m.n_layers / h.head_dim)
        assert m.n_heads == m.d_model // h.head_dim and m.n_kv_heads == m.n_heads
        assert s.config.optim.lr == pytest.approx(r.lr_ref * (s.n_params_nonembed / r.n_ref) ** -0.5, rel=1e-12)
        # batch = 16 * (D / 40960) rounded to a multiple of 8: 16 at D=40960, 32 at D=81920
        assert s.config.train.batch_size == (16 if s.tokens <= 40_960 else 32)
        assert s.config.optim.warmup_steps == max(1, round(r.warmup_fraction * s.steps))
    # each target N picks the closest shape on the ladder (in log N)
    for target, s in zip(h.n_targets, [s for s in specs if s.tokens == specs[0].tokens]):
        for L in range(1, 8):
            other = ml_collections.ConfigDict(s.config.model.to_dict())
            other.n_layers, other.d_model = L, max(h.head_dim, h.head_dim * round(h.aspect * L / h.head_dim))
            other.n_heads = other.n_kv_heads = other.d_model // h.head_dim
            other.d_ff = 0
            other.d_ff = cfg_lib.resolve(ml_collections.ConfigDict({"model": other.to_dict(),
                                                                    "data": {"seq_len": 64}})).model.d_ff
            n = accounting.param_counts(other)["total"]
            assert abs(math.log(s.n_params / target)) <= abs(math.log(n / target)) + 1e-12


def test_filters_report_dropped_points():
    c = tiny_sweep()
    c.sweep.tokens_per_param = (1.0, 1e9)
    c.sweep.min_steps = 20
    dropped = []
    specs = sweep.expand(c, dropped)
    assert len(specs) + len(dropped) == 4 and dropped
    assert all("min_steps" in d or "tokens_per_param" in d for d in dropped)
    for s in specs:
        assert s.steps >= 20 and s.tokens / s.n_params >= 1.0


@pytest.mark.parametrize("key,value,match", [
    ("kind", "random", "sweep.kind='random'"),
    ("flop_convention", "6n", "sweep.flop_convention='6n'"),
    ("budgets", (), "needs sweep.budgets"),
    ("seeds", (), "sweep.seeds is empty"),
    ("replicate_seeds", (1,), "needs sweep.replicate_max_params > 0"),
])
def test_bad_sweep_values_are_named(key, value, match):
    c = tiny_sweep()
    with c.sweep.ignore_type():
        c.sweep[key] = value
    with pytest.raises(ValueError, match=match):
        sweep.expand(c)


def test_bad_shapes_are_named():
    c = tiny_sweep()
    c.sweep.shapes.n_targets = (30e3, 31e3)
    with pytest.raises(ValueError, match="appears twice"):
        sweep.expand(c)
    c.sweep.shapes.n_targets = (1e12,)
    with pytest.raises(ValueError, match="within 2x of N=1e\\+12"):
        sweep.expand(c)
    with pytest.raises(ValueError, match="no 'sweep' section"):
        sweep.load_sweep(REPO / "experiments" / "base.py")


def test_shipped_demo_sweep_shape():
    """The demo: >= 12 runs, >= 3 budgets, >= 3 shapes per budget, each budget's shapes spanning >= 4x in N."""
    specs = sweep.expand(sweep.load_sweep(DEMO_FILE))
    assert len(specs) >= 12
    budgets = sorted({s.budget for s in specs})
    assert len(budgets) >= 3
    for c in budgets:
        n = sorted(s.n_params for s in specs if s.budget == c)
        assert len(n) >= 3 and n[-1] / n[0] >= 4


def test_plan_table_and_cli_dry_run(capsys):
    specs = sweep.expand(tiny_sweep())
    table = plan.plan_table(specs, 1e9, overhead_s=5.0, parallel=2)
    for s in specs:
        row = next(ln for ln in table.splitlines() if ln.startswith(s.run_id))
        assert sweep.fmt_si(s.n_params) in row and sweep.fmt_si(s.tokens) in row and f"{s.flops:.3g}" in row
    total_t = sum(5.0 + s.flops / 1e9 for s in specs)
    assert f"{plan._fmt_time(total_t)} sequential" in table
    with pytest.raises(ValueError, match="backend_flops_per_s"):
        plan.plan_table(specs, 0)
    assert cli.sweep_main([str(DEMO), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run_id" in out and "total C" in out and "sequential" in out
    assert cli.sweep_main(["nope.py", "--dry-run"]) == 2
    assert "sweep config nope.py not found" in capsys.readouterr().err
    assert cli.sweep_main([str(DEMO), "--dry-run", "--parallel", "0"]) == 2
    assert "--parallel=0: must be >= 1" in capsys.readouterr().err


def test_cli_refuses_a_sweep_of_zero_runs(tmp_path, capsys):
    cfg = tmp_path / "empty_sweep.py"
    cfg.write_text(f"from experiments.demo_cpu import get_config as g\n\n\ndef get_config():\n"
                   f"    c = g()\n    c.sweep.min_steps = 10**9\n    return c\n")
    assert cli.sweep_main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "expands to 0 runs" in err and "grid points dropped" in err


def test_train_cli_refuses_a_negative_stop_step(capsys):
    from scaling import train_cli
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(DEMO), "--workdir", "x", "--stop-after-steps", "-3"])
    assert e.value.code == 2 and "--stop-after-steps=-3: must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_real_trainer_records_the_planned_numbers(tmp_path, capsys, monkeypatch):
    """Two tiny runs through `scaling sweep` with the real trainer; result.json must match the plan."""
    monkeypatch.setenv("XLA_FLAGS", "")  # the trainer subprocesses: 1 CPU device, not the tests' 8
    cfg_path = tmp_path / "tiny.py"
    cfg_path.write_text(
        "from experiments.demo_cpu import get_config as demo\n"
        "def get_config():\n"
        "    c = demo('classic')\n"
        "    c.data.cache_dir = %r\n"
        "    c.sweep.budgets = (2e10,)\n"
        "    c.sweep.shapes.n_targets = (30e3, 95e3)\n"
        "    c.sweep.shapes.explicit = ()\n"
        "    c.sweep.min_steps = 5\n"
        "    c.train.peak_flops = 1e11\n"
        "    return c\n" % str(tmp_path / "data_cache"))
    specs = sweep.expand(sweep.load_sweep(cfg_path))
    assert len(specs) == 2
    sweep_dir = tmp_path / "sw"
    rc = cli.sweep_main([str(cfg_path), "--sweep-dir", str(sweep_dir), "--parallel", "2"])
    assert rc == 0, capsys.readouterr()
    for s in specs:
        r = local.read_result(local.run_dir_of(sweep_dir, s.run_id))
        assert r["status"] == "ok"
        assert (r["n_params"], r["n_params_nonembed"], r["n_params_embed"]) == (
            s.n_params, s.n_params_nonembed, s.n_params_embed)
        assert r["tokens"] == s.tokens and r["step"] == s.steps
        # flops are floats in JSON: equal to float precision
        for key in ("flops", "flops_6nd", "flops_6nd_nonembed"):
            assert r[key] == pytest.approx(getattr(s, key), rel=1e-12)
        assert r["config_hash"][:8] == s.run_id[-8:], (r["config_hash"], s.run_id)
    assert cli.status_main([str(sweep_dir)]) == 0
    assert "2 done, 0 running, 0 failed, 0 pending (of 2)" in capsys.readouterr().out


# The identity contract: run ids of the shipped sweeps as the code before experiments-as-data computed
# them (count, sha256 of the ids joined by spaces, first and last id). demo_cpu's were computed with
# train.peak_flops = 0 (the file then hard-coded 1.19e11, which is part of a run's identity).
IDS_BEFORE = {
    "demo_cpu": (23, "b8e2bb3d20d4f34601e764bf60a9e8c8588970906b1d50469579de37e24d21b5",
                 "C5e10-L1-d8-D2.16M-3705bd9c", "C8e11-L5-d64-D471k-415f3d6c"),
    "chinchilla_isoflop": (26, "35e5ff1709032ae1e097bbda3a2e99e7d851a630be10debd8ba7a424aeb124c3",
                           "C1e18-L6-d384-D4.66G-3e7e8384", "C1e20-L34-d2176-D8.01G-f6b11552"),
    "kaplan_n": (8, "48c4b2ada7b1e605b506fe6ddff02ccc0985da63d588ac3c63dba145080891ca",
                 "L3-d192-D20G-a6a529aa", "L27-d1728-D20G-7a774718"),
    "kaplan_d": (7, "8f82ead13f1824642b13a6094cb2b1a406d894160282bd5c2044ea0193dc25dd",
                 "L24-d1280-D300M-8b672bc2", "L24-d1280-D20G-5338363d"),
}


@pytest.mark.parametrize("name", sorted(IDS_BEFORE))
def test_shipped_sweeps_keep_their_run_ids(name):
    # the demo's one-run-per-point grid lives on as its 'classic' variant (the default now branches)
    cfg = sweep.load_sweep(f"{REPO / 'experiments' / name}.py" + (":classic" if name == "demo_cpu" else ""))
    if name == "demo_cpu":  # the demo's fifth budget became its forecast target: with it, the same ids
        assert tuple(cfg.sweep.budgets) == (5e10, 1e11, 2e11, 4e11)
        cfg.sweep.budgets = (*cfg.sweep.budgets, 8e11)
    ids = [s.run_id for s in sweep.expand(cfg)]
    n, digest, first, last = IDS_BEFORE[name]
    assert (len(ids), ids[0], ids[-1]) == (n, first, last)
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest() == digest


def test_shipped_configs_leave_the_peak_to_the_host():
    """MFU is against the measured or looked-up peak of the machine that runs, never one machine's number."""
    for path in sorted((REPO / "experiments").glob("[!_]*.py")):
        c = sweep.load_sweep(path) if path.stem != "base" else cfg_lib.load(path)
        assert c.train.peak_flops == 0.0, path.name


def test_each_isoflop_run_records_its_nominal_budget():
    specs = sweep.expand(tiny_sweep())
    assert {s.config.meta.budget for s in specs} == {2e10, 6e10}
    assert all(s.config.meta.budget == s.budget for s in specs)
    assert {s.config.meta.budget for s in sweep.expand(tiny_sweep("grid"))} == {0.0}
    for s in specs:  # a label: the id is the hash of the config without it
        unlabelled = ml_collections.ConfigDict(s.config.to_dict())
        unlabelled.meta.budget = 0.0
        assert s.run_id.endswith(cfg_lib.config_hash(unlabelled)[:8])


def test_load_sweep_lays_sections_over_their_defaults(tmp_path):
    p = tmp_path / "mini.py"
    p.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                 "    c.data = dict(seq_len=64)\n"
                 "    c.sweep = dict(budgets=(1e10,), shapes=dict(explicit=((1, 16),)))\n"
                 "    c.cloud = dict(chips=8)\n    return c\n")
    c = sweep.load_sweep(p)
    expect_sweep = sweep.sweep_defaults()
    expect_sweep.budgets, expect_sweep.shapes.explicit = (1e10,), ((1, 16),)
    assert c.sweep.to_dict() == expect_sweep.to_dict()
    assert c.cloud.to_dict() == skypilot.cloud_config(chips=8).to_dict()
    expect_run = cfg_lib.defaults()
    expect_run.data.seq_len = 64
    assert sweep.run_config(c).to_dict() == expect_run.to_dict()
    p.write_text(p.read_text().replace("explicit=", "explict="))
    with pytest.raises(cfg_lib.ConfigError, match=r"mini.py: unknown config key 'sweep.shapes.explict'"):
        sweep.load_sweep(p)


def test_sweep_problems_are_listed_at_once():
    c = tiny_sweep()
    c.sweep.kind, c.sweep.seeds, c.sweep.shapes.n_kind = "random", (), "embed"
    with pytest.raises(ValueError) as e:
        sweep.expand(c)
    for words in ("sweep.kind='random'", "sweep.seeds is empty", "sweep.shapes.n_kind='embed'"):
        assert words in str(e.value)


def test_planning_the_demo_sweep_imports_no_jax():
    """`scaling sweep experiments/demo_cpu.py --dry-run` through the real entry point, in a fresh process."""
    code = ("import sys\nfrom cli.main import main\nrc = main(['sweep', 'experiments/demo_cpu.py', '--dry-run'])\n"
            "print('RC', rc, 'JAX', 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert "64 runs" in out.stdout and "WSD branches: 64 points from 10 trunks" in out.stdout
    assert out.stdout.strip().endswith("RC 0 JAX False"), out.stdout + out.stderr


def test_an_oversized_run_is_refused_before_anything_launches(tmp_path, capsys):
    """A sweep whose device memory (sweep.device_memory_gb) holds the demo's runs but the largest
    one(s): the plan prints the mem/dev column, then the error names exactly those runs with
    their estimate (scaling.memory, computed here on the 1-device mesh), the limit and what would fit."""
    from scaling import memory

    specs = sweep.expand(sweep.load_sweep(DEMO))
    peak = {s.run_id: memory.estimate(s.config, (1, 1, 1)).peak for s in specs}
    top, second = sorted(set(peak.values()))[-1], sorted(set(peak.values()))[-2]
    big = [s.run_id for s in specs if peak[s.run_id] == top]
    limit_gb = (top + second) / 2 / memory.USABLE_FRACTION / 1e9
    assert big and all(peak[r] > memory.USABLE_FRACTION * limit_gb * 1e9 for r in big)  # really oversized
    path = tmp_path / "oversized.py"
    path.write_text("from experiments.demo_cpu import get_config as g\n\n\ndef get_config():\n    c = g('classic')\n"
                    f"    c.sweep.device_memory_gb = {limit_gb!r}\n    return c\n")
    for extra in (["--dry-run"], ["--sweep-dir", str(tmp_path / "out")]):
        assert cli.sweep_main([str(path), *extra]) == 2
        out, err = capsys.readouterr()
        assert "mem/dev" in out and f"{peak[big[0]] / 2 ** 30:.2f}!" in out
        assert f"{len(big)} of {len(specs)} runs would not fit in device memory" in err
        refused = [ln for ln in err.splitlines() if "does not fit" in ln]
        assert [ln.split()[1] for ln in refused] == big
        assert memory.gib(peak[big[0]]) in refused[0] and memory.gib(limit_gb * 1e9) in refused[0]
        assert "what would fit: train.batch_size <=" in refused[0] and "--config.model.remat=full" in refused[0]
    assert not (tmp_path / "out").exists()  # refused before the sweep directory was written


def test_the_shipped_chinchilla_sweep_fits_its_tpu_slice():
    """experiments/chinchilla_isoflop.py on v5e-64 (16 GiB per chip): every run fits with remat 'full';
    the same sweep without remat is refused (16 runs, the largest at ~103 GiB)."""
    cfg = sweep.load_sweep(REPO / "experiments" / "chinchilla_isoflop.py")
    specs = sweep.expand(cfg)
    mem = plan.memory_plan(cfg)
    assert (mem.n_devices, mem.device_bytes) == (64, accounting.DEVICE_MEMORY["tpu v5 lite"])
    plan.check_memory(specs, mem)
    table = plan.plan_table(specs, 1e15, memory_on=mem)
    assert all(not ln.endswith("!") for ln in table.splitlines()) and "limit 14.40 GiB usable of 16.00 GiB" in table
    for s in specs:
        s.config.model.remat = "none"
    with pytest.raises(ValueError, match="16 of 26 runs would not fit"):
        plan.check_memory(specs, mem)
