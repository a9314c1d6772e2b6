"""The gallery (`scaling reproduce all`) and the fitting benchmark's pieces."""
import base64
import re

import numpy as np
import pandas as pd
import pytest

from analysis import gallery, law_benchmark, reproduce, reproduce_cli, workflows


@pytest.mark.slow
def test_gallery_of_one_reproduction_is_self_contained(shared_data, tmp_path):
    """A one-paper gallery (BNSL, few starts, no benchmark): index.md has the figure, the three
    protocol lines and the ours-vs-paper table; index.html embeds the PNG it names as base64."""
    out = tmp_path / "g"
    gallery.build(shared_data, out, lambda p, d, o, opt: reproduce_cli._REPRODUCE[p](
        d / reproduce_cli.PAPERS[p], o, opt), papers=("bnsl",), benchmark=None,
        options=workflows.FitOptions(n_bootstrap=0, n_starts=60), log=lambda *_: None)
    md = (out / "index.md").read_text()
    assert "![" in md and "bnsl/extrapolation.png" in md
    assert all(f"\n{i}. " in md for i in (1, 2, 3)) and "held-out RMSLE" in md
    html = (out / "index.html").read_text()
    png = (out / "bnsl" / "extrapolation.png").read_bytes()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert [base64.b64decode(e) for e in embedded] == [png]
    assert "src='bnsl" not in html and "src=\"" not in html  # nothing outside the file


def test_benchmark_epoch_set_is_hoffmanns_isoflop_points(shared_data):
    """The Epoch set holds the points on Hoffmann's nine budgets: the same 137 points `scaling
    reproduce chinchilla` fits Approach 2 on (its printed count), each with its nominal budget."""
    t = law_benchmark._epoch(shared_data)
    assert len(t) == 137 and set(t.budget) == set(reproduce.HOFFMANN_2022_ISOFLOP_BUDGETS)
    assert np.allclose(6 * t.n_params * t.tokens, t.flops_6nd)


def test_benchmark_table_rows_say_why_a_law_does_not_apply():
    df = pd.DataFrame([{"set": "s", "law": "bnsl", "note": "n/a: one model size"},
                       {"set": "s", "law": "chinchilla", "factor": "2-4x", "n": 4, "median_abs_error": 0.01,
                        "max_abs_error": 0.02, "coverage": 0.75, "coverage_lo": 0.3, "coverage_hi": 0.95,
                        "note": "2 cutoffs"}])
    header, rows = law_benchmark.markdown_rows(df)
    assert rows[0][-1] == "n/a: one model size" and rows[0][3] == ""
    assert rows[1][4:7] == ["1.000%", "2.000%", "0.75 (0.30, 0.95)"] and "Wilson" in header[6]
