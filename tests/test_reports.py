"""Report pages a reader trusts: formatted numbers, definitions under figures, top-k tables, markdown,
fluid width, one shared offline plotly bundle per report tree, and a provenance footer."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from workbench.report import viz

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def test_sinks_page_from_the_committed_result(tmp_path):
    from workbench.report.sinks_report import write_sinks_html

    res = json.loads((REPORTS / "smollm2-135m" / "sinks.json").read_text())
    page = tmp_path / "reports" / "smollm2-135m" / "sinks.html"
    page.parent.mkdir(parents=True)
    write_sinks_html(res, pd.read_csv(REPORTS / "smollm2-135m" / "sinks_heads.csv"), page)
    html = page.read_text()
    big = max(r["perplexity"] for r in res["perplexity"])
    assert viz.format_number(big) in html and f"{big:.3f}" not in html  # 7.48e+06, not 7484689.545
    n_figs = html.count("class=\"plotly-graph-div\"")
    assert n_figs >= 3 and html.count("class='definition'") == n_figs  # a definition under every figure
    assert html.count("class='side'") == 2 and "<th>head</th>" in html  # top-k tables beside the heatmaps
    top = res["hidden_sink_heads"][0]
    assert f"{top['layer']}.{top['head']}" in html and not re.search(r"L\d+H\d+", html)
    assert "max-width: 1400px" in html and res["provenance"]["weights_sha256"][:12] in html  # the provenance footer
    # one bundle at the tree's root, referenced relatively, written once
    assert "src='../plotly.min.js'" in html and (tmp_path / "reports" / "plotly.min.js").exists()
    assert not (page.parent / "plotly.min.js").exists()
    # the right axis of the profile is a log axis with ticks at powers of ten only
    spec = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{\"responsive\"", html, re.S).group(2))
    assert spec["yaxis2"]["type"] == "log" and spec["yaxis2"]["dtick"] == 1


def test_write_html_shares_one_bundle_and_shows_provenance(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[1], y=[2]))
    for sub in ("a", "b/c"):
        p = tmp_path / "runs" / sub / "page.html"
        p.parent.mkdir(parents=True)
        viz.write_html([("f", fig, "what and units")], p, "T", provenance={"git_commit": "abc123", "seed": 0})
        assert "abc123" in p.read_text() and "what and units" in p.read_text()
    assert sorted(x.relative_to(tmp_path).as_posix() for x in tmp_path.rglob("plotly.min.js")) == ["runs/plotly.min.js"]
    assert "src='../../plotly.min.js'" in (tmp_path / "runs" / "b" / "c" / "page.html").read_text()


def test_markdown_is_rendered(tmp_path):
    viz.markdown_page("# T\n\nStudy `x` on **y**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", tmp_path / "r.html", "t")
    html = (tmp_path / "r.html").read_text()
    assert "<code>x</code>" in html and "<strong>y</strong>" in html and "<table>" in html and "`" not in html


def test_committed_report_tree_has_one_bundle():
    bundles = sorted(p.relative_to(REPORTS).as_posix() for p in REPORTS.rglob("plotly.min.js"))
    assert bundles == ["plotly.min.js"]
    for page in REPORTS.rglob("*.html"):
        for src in re.findall(r"src=[\"']([^\"']*plotly\.min\.js)[\"']", page.read_text()):
            assert (page.parent / src).resolve() == (REPORTS / "plotly.min.js").resolve(), page


def test_vision_page_defines_vhd_and_lists_top_heads(tmp_path):
    from workbench.report.vision_report import write_vision_html

    d = REPORTS / "effnet-smollm2-vqa"  # the reference vision results (the reproduce step's model)
    res = json.loads((d / "vision.json").read_text())
    per_head = pd.read_csv(d / "vhd_heads.csv")
    write_vision_html(res, per_head, tmp_path / "vision.html")
    html = (tmp_path / "vision.html").read_text()
    assert "||z_image - z_text||_2" in html and "units" in html
    best = per_head.sort_values("vhd", ascending=False).iloc[0]
    assert f"<td>{int(best['layer'])}.{int(best['head'])}</td>" in html


def test_census_page_defines_every_figure(tmp_path):
    from workbench.report.census import DEFINITIONS, write_census_html

    heads = pd.read_parquet(REPORTS / "smollm2-135m" / "heads.parquet")
    summary = json.loads((REPORTS / "smollm2-135m" / "summary.json").read_text())
    write_census_html(heads, summary, tmp_path / "census.html", "smollm2-135m")
    html = (tmp_path / "census.html").read_text()
    n_figs = html.count("class=\"plotly-graph-div\"")
    known = [c for c in DEFINITIONS if c in heads.columns]
    assert n_figs == len(known) >= 8 and html.count("class='definition'") == n_figs
    assert html.count("class='side'") == n_figs and "first_token_mass" in html
