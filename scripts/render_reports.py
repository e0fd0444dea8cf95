"""Re-render the committed report pages from the results they were made from (no model run).

    python scripts/render_reports.py [REPORTS_DIR]

* ``<model>/sinks.html`` from ``sinks.json`` + ``sinks_heads.csv`` (:func:`workbench.report.sinks_report.write_sinks_html`);
* ``<model>/vision.html`` from ``vision.json`` + ``vhd_heads.csv`` (:func:`workbench.report.vision_report.write_vision_html`);
* ``<model>/census.html`` from ``heads.parquet`` + ``summary.json`` (a heatmap, definition and top-10 table
  per known column: :func:`workbench.report.census.write_census_html`);
* ``<model>/studies/*/report.html`` from ``report.md`` (:func:`workbench.report.viz.markdown_page`);
* every other page keeps its figures; its ``<script src=...plotly.min.js>`` is pointed at the tree's one
  shared bundle ``REPORTS_DIR/plotly.min.js`` and per-folder copies are removed.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(reports: Path) -> None:
    from plotly.offline import get_plotlyjs

    from workbench.report.sinks_report import write_sinks_html
    from workbench.report.viz import markdown_page

    bundle = reports / "plotly.min.js"
    if not bundle.exists():
        bundle.write_text(get_plotlyjs())
    for js in reports.rglob("plotly.min.js"):  # one bundle per tree: drop the per-folder copies first
        if js != bundle:
            js.unlink()
    done = set()
    for js in reports.glob("*/sinks.json"):
        write_sinks_html(json.loads(js.read_text()), pd.read_csv(js.parent / "sinks_heads.csv"), js.parent / "sinks.html")
        done.add(js.parent / "sinks.html")
    for js in reports.glob("*/vision.json"):
        from workbench.report.vision_report import write_vision_html

        share = js.parent / "image_attention_heads.csv"
        write_vision_html(json.loads(js.read_text()), pd.read_csv(js.parent / "vhd_heads.csv"), js.parent / "vision.html",
                          pd.read_csv(share) if share.exists() else None)
        done.add(js.parent / "vision.html")
    for hp in reports.glob("*/heads.parquet"):
        from workbench.report.census import write_census_html

        summary = json.loads((hp.parent / "summary.json").read_text()) if (hp.parent / "summary.json").exists() else {}
        write_census_html(pd.read_parquet(hp), summary, hp.parent / "census.html", hp.parent.name)
        done.add(hp.parent / "census.html")
    for md in reports.glob("*/studies/*/report.md"):
        text = re.sub(r"\bL(\d+)H(\d+)\b", r"\1.\2", md.read_text())  # heads as the flags take them
        md.write_text(text)
        spec = json.loads((md.parent / "spec.json").read_text()) if (md.parent / "spec.json").exists() else {}
        markdown_page(text, md.parent / "report.html", f"Study {md.parent.name}", spec.get("provenance"))
        done.add(md.parent / "report.html")
    for page in reports.rglob("*.html"):
        if page in done:
            continue
        src = Path(os.path.relpath(bundle, page.parent)).as_posix()
        html = page.read_text()
        new = re.sub(r"src=([\"'])(?:\.\./)*plotly\.min\.js\1", f'src="{src}"', html)
        if new != html:
            page.write_text(new)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "reports")
