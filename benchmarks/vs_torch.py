"""Our train step vs a PyTorch eager implementation of the same model, side by side on this CPU.

    python benchmarks/vs_torch.py                                  # 3 rounds at d256xL4 and d512xL8
    python benchmarks/vs_torch.py --rounds 5 --components          # + the per-component breakdown
    python benchmarks/vs_torch.py --torch-python /path/to/python   # an existing torch environment

Each measurement is its own process (ours: benchmarks/train_step.py --json; torch:
benchmarks/torch_gpt.py in a separate virtual environment, created on first use with
`python3.11 -m venv` + `pip install torch==2.13.0`: torch is never a dependency of the project).
Rounds interleave the two implementations (the order alternates per round) so a shared machine's
load hits both alike; each round prints ours/torch = the ratio of tokens/s (= ratio of FLOP/s:
same model, same FLOPs per token), and `uptime`'s load average before the round. float32, AdamW,
batch 16 x seq 256, vocab 8192, heads of 64. Ours runs with the project's XLA:CPU options
(scaling/xla_cpu.py, set when `scaling` is imported), as every run of the trainer does.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
DEFAULT_ENV = pathlib.Path("/tmp/torchenv")
COMPONENTS = ("attention core", "mlp", "projections", "norms", "head+loss", "optimizer")


def torch_python(args) -> str:
    """The torch environment's interpreter; creates the environment when it does not exist."""
    if args.torch_python:
        return args.torch_python
    py = DEFAULT_ENV / "bin" / "python"
    if not py.exists():
        print(f"creating {DEFAULT_ENV} with torch=={TORCH_VERSION} (one time)", flush=True)
        subprocess.run([args.venv_python, "-m", "venv", str(DEFAULT_ENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"], check=True)
    return str(py)


def run_json(cmd: list[str]) -> dict:
    """Run one measurement process; its last stdout line is a JSON object."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def commands(shape: tuple[int, int], args, tpy: str, mode: str) -> dict:
    d, L = shape
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--vocab", str(args.vocab)]
    if mode == "step":
        ours = [sys.executable, "benchmarks/train_step.py", "--json", "--sizes", f"{d}x{L}",
                "--steps", str(args.steps), *common]
    else:
        ours = [sys.executable, "benchmarks/components.py", "--d-model", str(d), "--n-layers", str(L),
                "--steps", str(args.steps), *common]
    theirs = [tpy, "benchmarks/torch_gpt.py", mode, "--d-model", str(d), "--n-layers", str(L),
              "--steps", str(args.steps), *common]
    return {"ours": ours, "torch": theirs}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def rounds(shapes, args, tpy: str) -> None:
    print(f"{'round':>5} {'shape':>9} {'ours tok/s':>11} {'torch tok/s':>12} {'ours/torch':>11}  load before (1/5/15 min)")
    ratios = {s: [] for s in shapes}
    for r in range(args.rounds):
        for shape in shapes:
            before = load()
            cmds = commands(shape, args, tpy, "step")
            order = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
            res = {name: run_json(cmds[name]) for name in order}
            ratio = res["ours"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
            ratios[shape].append(ratio)
            print(f"{r + 1:>5} {f'd{shape[0]}xL{shape[1]}':>9} {res['ours']['tokens_per_s']:>11,.0f} "
                  f"{res['torch']['tokens_per_s']:>12,.0f} {ratio:>11.3f}  {before}", flush=True)
    for shape, rs in ratios.items():
        print(f"d{shape[0]}xL{shape[1]}: ours/torch min {min(rs):.3f} max {max(rs):.3f} over {len(rs)} rounds")


def components(shapes, args, tpy: str) -> None:
    """Forward and backward seconds per component (whole model: per-block parts x n_layers)."""
    for shape in shapes:
        cmds = commands(shape, args, tpy, "components")
        res = {name: run_json(cmds[name])["components"] for name in ("ours", "torch")}
        print(f"\nd{shape[0]}xL{shape[1]} per step (ms; load {load()}):")
        print(f"{'component':>15} {'ours fwd':>9} {'torch fwd':>10} {'ours bwd':>9} {'torch bwd':>10} {'ours/torch time':>16}")
        for name in COMPONENTS:
            o, t = res["ours"][name], res["torch"][name]
            tot_o, tot_t = o["forward"] + o["backward"], t["forward"] + t["backward"]
            print(f"{name:>15} {1e3 * o['forward']:>9.1f} {1e3 * t['forward']:>10.1f} {1e3 * o['backward']:>9.1f} "
                  f"{1e3 * t['backward']:>10.1f} {tot_o / tot_t:>16.2f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x4,512x8", help="comma list of d_modelxn_layers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after a warm-up)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--components", action="store_true", help="also the per-component breakdown")
    p.add_argument("--no-rounds", action="store_true", help="only the breakdown")
    p.add_argument("--torch-python", help="interpreter of an existing torch environment")
    p.add_argument("--venv-python", default="python3.11", help="creates the torch environment")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    tpy = torch_python(args)
    print(f"ours: {sys.executable}; torch: {tpy}; {os.cpu_count()} CPUs")
    if not args.no_rounds:
        rounds(shapes, args, tpy)
    if args.components or args.no_rounds:
        components(shapes, args, tpy)


if __name__ == "__main__":
    main()
