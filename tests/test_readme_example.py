"""The README's notebook example runs as written, and its corpus-size table is the sweeps' own."""
import contextlib
import io
import json
import pathlib
import re
import time

import pytest

from tests.test_report import TRUE, fake_sweep

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)
    return text[start:end if end > 0 else None]


def _python_block(section: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_notebook_example_runs_on_a_synthetic_sweep(tmp_path, monkeypatch):
    """Load a sweep, fit, forecast, plot: the block runs, recovers the generating law and writes
    what it says (a frozen forecast, the isoFLOP figure as PNG + PDF)."""
    fake_sweep(tmp_path / "sweeps" / "demo_cpu")  # 4 budgets x 7 sizes from a known L(N, D)
    monkeypatch.chdir(tmp_path)
    ns, out = {}, io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        exec(compile(_python_block(_section("## Use `analysis` from a notebook or script")), "README", "exec"), ns)
    wall = time.perf_counter() - t0
    printed = out.getvalue()
    # Approach 3 on 0.3%-noise data recovers the exponents (as tests/test_report.py's full report does)
    p = ns["a3"].fit.params
    assert abs(p["alpha"] - TRUE["alpha"]) < 0.05 and abs(p["beta"] - TRUE["beta"]) < 0.05
    assert re.search(r"alpha = 0\.3\d+ +\(95% bootstrap percentile CI 0\.\d+ - 0\.\d+\)", printed), printed
    # the forecast is frozen at 8x the largest budget and its interval holds the generating law
    doc = json.loads((tmp_path / "forecast.json").read_text())
    assert doc["target_flops"] == 8 * 1e18
    n, l_ = doc["optimum"]["N"]["value"], doc["optimum"]["L"]
    d = doc["target_flops"] / (6 * n)
    true_l = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    assert l_["lo"] <= true_l <= l_["hi"] and "nats/token" in printed
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "figures" / f"isoflop{suffix}").stat().st_size > 2000
    print(f"README example: {wall:.1f} s")


def test_corpus_table_is_the_sweep_expansion():
    """Every shipped sweep is in the table with its run count and largest D, recomputed here."""
    from launch import sweep
    rows = re.findall(r"^\| `(experiments/\w+\.py)` \| `([^`]+)` \(([^)]+)\) \| (\d+) \| ([\d,]+) \(\S+\) \| (\S+) \|$",
                      _section("### Corpus size each shipped sweep needs"), flags=re.M)
    shipped = sorted(str(p.relative_to(README.parent)) for p in (README.parent / "experiments").glob("*.py")
                     if "c.sweep = " in p.read_text())  # files with a sweep section
    assert sorted(r[0] for r in rows) == shipped
    for path, corpus, tokenizer, n_runs, largest, run in rows:
        cfg = sweep.load_sweep(README.parent / path)
        specs = sweep.expand(cfg)
        big = max(specs, key=lambda s: s.tokens)
        assert (cfg.data.corpus, cfg.data.tokenizer) == (corpus, tokenizer), path
        assert (len(specs), big.tokens) == (int(n_runs), int(largest.replace(",", ""))), path
        assert big.run_id.rsplit("-", 1)[0] == run, path  # the id without its config hash
