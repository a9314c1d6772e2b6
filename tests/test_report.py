"""The sweep report: its tables are the results table, its fits and extrapolation are computed."""
import base64
import html.parser
import json
import math
import re

import numpy as np
import pytest

from analysis import render, report, results, style

# A known law (roughly Chinchilla's exponents) generates every "run" of a fake isoFLOP sweep.
TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
BUDGETS = (1e15, 1e16, 1e17, 1e18)


def _law(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def fake_sweep(root, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for c in BUDGETS:
        n_opt = 0.1 * math.sqrt(c / 6)  # spans the optimum of this law on every budget
        for k in np.linspace(-1.2, 1.2, 7):
            n = int(n_opt * 10 ** k)
            d = int(c / (6 * n))
            loss = _law(n, d) * math.exp(rng.normal(0, noise))
            run_id = f"C{c:.0e}-n{n}"
            rd = root / "runs" / run_id
            rd.mkdir(parents=True)
            (rd / "config.json").write_text("{}")
            (rd / "metrics.jsonl").write_text(json.dumps({"split": "eval", "step": 1, "tokens": d,
                                                          "loss": loss}) + "\n")
            (rd / "result.json").write_text(json.dumps({
                "status": "ok", "error": None, "config_hash": run_id, "step": 1, "tokens": d, "budget": c,
                "n_params": n, "n_params_nonembed": int(0.9 * n), "n_params_embed": n - int(0.9 * n),
                "flops_6nd": 6.0 * n * d, "flops_6nd_nonembed": 6.0 * int(0.9 * n) * d, "flops": 6.6 * n * d,
                "final_train_loss": loss, "final_eval_loss": loss, "final_eval_bpb": loss / math.log(2),
                "epochs": 0.1, "wall_time_s": 1.0, "tokens_per_s": 1e4, "mfu": 0.3, "git_sha": "x"}))
            runs.append({"run_id": run_id, "budget": c, "n_params": n, "tokens": d})
    (root / "sweep.json").write_text(json.dumps({"runs": runs}))
    return runs


def _md_tables(text):
    """Every Markdown table in `text` as (header, rows) of stripped cell strings."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


@pytest.mark.slow
def test_report_tables_fits_and_extrapolation(tmp_path):
    runs = fake_sweep(tmp_path)
    summary = report.build(tmp_path, plan_text="PLAN", n_bootstrap=20, n_starts=300, log=lambda *a: None)
    md = (tmp_path / "report.md").read_text()
    fits = json.loads((tmp_path / "fit.json").read_text())
    # the runs table in the report is the results table, row for row and cell for cell
    header, rows = report.run_table(results.load(tmp_path))
    assert (header, rows) in _md_tables(md)
    assert len(rows) == len(runs)
    by_id = {r["run_id"]: r for r in runs}
    for row in rows:  # and it says what the runs recorded
        assert int(row[header.index("D (tokens)")].replace(",", "")) == by_id[row[0]]["tokens"]
    # Approach 3 recovers the generating law's exponents (0.3% noise on 28 points: within 0.05)
    p = fits["approach3"]["fit"]["params"]
    assert abs(p["alpha"] - TRUE["alpha"]) < 0.05 and abs(p["beta"] - TRUE["beta"]) < 0.05
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert abs(fits["approach3"]["allocation"]["a"] - a_true) < 0.05
    assert abs(fits["approach2"]["allocation"]["a"] - a_true) < 0.1  # parabola fits are cruder
    # extrapolation: fitted on 3 budgets, predicts the 4th within a few noise standard deviations
    ex = fits["extrapolation"]
    assert ex["held_out_budget"] == BUDGETS[-1] and len(ex["runs"]) == 7
    assert ex["mean_rel_error"] < 0.02
    # N_opt from the smaller budgets' parabola vertices, extrapolated one decade, lands within a
    # factor 2 of the held-out vertex (vertices of 7 points spaced 0.4 dex are rough estimates)
    o = ex["optimum"]
    assert 0.5 < o["n_opt_predicted"] / o["n_opt_measured"] < 2, o
    assert re.search(r"Mean absolute error [0-9.]+ nats/token", md)
    # each held-out run carries its prediction interval and whether the measured loss is inside
    for r in ex["runs"]:
        assert r["lo"] < r["predicted"] < r["hi"] and r["inside"] == (r["lo"] <= r["measured"] <= r["hi"])
    assert ex["n_inside"] == sum(r["inside"] for r in ex["runs"]) and ex["level"] == 0.9
    # the allocation table marks the rows above the largest budget as extrapolated, with intervals
    (alloc,) = [t for t in _md_tables(md) if t[0][0] == "C (FLOPs)"]
    for row, r in zip(alloc[1], fits["approach3"]["budgets"]):
        assert row[-1].startswith("extrapolated") == (r["C"] > BUDGETS[-1] * 1.000001), row
        lo, hi = r["N_opt_ci"]
        assert row[2] == f"{lo:.3g} – {hi:.3g}"
    assert any(row[-1].startswith("extrapolated") for row in alloc[1])
    assert "approach3/allocation.png" in md
    for name in ("approach3", "approach2", "kaplan_n", "kaplan_c", "extrapolation"):
        assert "error" not in fits[name]
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "PLAN" in page
    shown = _Page()
    shown.feed(page)
    assert "`" not in "".join(shown.prose) and str(tmp_path) in shown.code  # the path is a code span
    assert any(s.startswith("Approach 3") for s in summary)


class _Page(html.parser.HTMLParser):
    """What a browser would show: text outside <pre>, <code> contents, table cells, list items, images."""

    def __init__(self):
        super().__init__()
        self.stack, self.prose, self.code, self.cells, self.items, self.images, self.rows = [], [], [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag == "tr":
            self.rows += 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if "code" in self.stack:
            self.code.append(data)
        elif "pre" not in self.stack and "style" not in self.stack:
            self.prose.append(data)
        if "td" in self.stack or "th" in self.stack:
            self.cells.append(data)
        if "li" in self.stack:
            self.items.append(data)


def test_html_renders_code_spans_bold_tables_lists_and_embeds_figures(tmp_path):
    fig, ax = style.subplots()
    ax.plot([1, 2], [1, 2], label="x")
    ax.set(xlabel="x (unitless)", ylabel="y (unitless)")
    png, _ = style.save(fig, tmp_path / "figures" / "f")
    blocks = [("h1", "Study of `sweeps/x`"),
              ("p", "Run `scaling fit sweeps/x` and read **the warnings**; L = E + A/N^α."),
              ("ul", ["first `item`", "second **item**"]),
              ("pre", "keep `backticks` in a code block"),
              ("table", ["run", "loss (nats/token)"], [["`a`", "3.1"], ["b", "**no**"]]),
              ("img", "figures/f.png", "A figure with `code` in its caption")]
    page = _Page()
    page.feed(render.page(blocks, tmp_path, "t <title>"))
    prose = "".join(page.prose)
    assert "`" not in prose and "**" not in prose and "^" not in prose  # no literal Markdown shows
    assert page.code == ["sweeps/x", "scaling fit sweeps/x", "item", "a", "code"]
    assert "the warnings" in prose and "A/Nα" in prose.replace(" ", "")
    assert page.items == ["first ", "item", "second ", "item"]
    assert page.rows == 3 and page.cells == ["run", "loss (nats/token)", "a", "3.1", "b", "no"]
    (src,) = page.images  # self-contained: the PNG's own bytes, inline
    assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    md = render.markdown(blocks)  # the Markdown keeps its syntax for Markdown viewers
    assert "| `a` | 3.1 |" in md and "- first `item`" in md and "![A figure with `code` in its caption](figures/f.png)" in md


def test_a_fits_warnings_become_a_list_in_the_report():
    """A fit's warnings (e.g. Approach 2 leaving out a flat budget) are logged and listed; none, nothing.
    (The real demo's 49 points once crashed report.build here: the closure rebound `blocks`.)"""
    logged = []
    res = {"warnings": ["budget C=5e+10 left out: flat", "93 of 200 resamples left out"]}
    assert report.warning_blocks("approach2", res, logged.append) == [
        ("p", "**Warnings:**"), ("ul", ["budget C=5e+10 left out: flat.", "93 of 200 resamples left out."])]
    assert logged == ["   approach2: budget C=5e+10 left out: flat; 93 of 200 resamples left out"]
    assert report.warning_blocks("approach3", {"warnings": []}, logged.append) == [] and len(logged) == 1
