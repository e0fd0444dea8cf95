"""Pages: figures and tables written into one offline HTML page (shared ``plotly.min.js``, provenance
footer), markdown rendered in the same style, and how notebooks show figures."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .viz_charts import _need
from .viz_tokens import format_head, format_number

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 0 16px; max-width: 1400px; box-sizing: border-box; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.plotly-graph-div { max-width: 100%; }
.fig-row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.fig-row > .fig { flex: 3 1 600px; min-width: 0; } .fig-row > .side { flex: 1 1 260px; min-width: 0; overflow-x: auto; }
.definition { color: #444; font-size: 0.9em; margin: 0.2em 0 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
footer { border-top: 1px solid #ccc; margin-top: 2em; padding: 8px 0; color: #555; font-size: 0.8em; }
footer code { word-break: break-all; }
"""

def provenance_footer(prov: dict | None) -> str:
    """HTML footer saying which code, commit, model, settings and date made a page: the result's
    ``"provenance"`` object rendered by :func:`workbench.io.provenance.footer_html` (None or empty: "No
    provenance recorded for this page")."""
    from ..io.provenance import footer_html

    return footer_html(prov)


def table_html(df: pd.DataFrame, digits: int = 4, max_rows: int = 30) -> str:
    """A small HTML table of ``df`` with numbers formatted by :func:`format_number` (heads as ``layer.head``)."""
    import html as _html

    df = df.head(max_rows)
    if {"layer", "head"} <= set(df.columns):
        df = df.assign(head=[format_head(a, b) for a, b in zip(df["layer"], df["head"])]).drop(columns=["layer"])
    head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_html.escape(format_number(v, digits) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v))}</td>"
                                    for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


def display_heads(df: pd.DataFrame, digits: int | None = 3) -> pd.DataFrame:
    """A per-head table for display: ``layer`` and ``head`` become one ``head`` column written ``layer.head``
    (as the CLI flags take it), numbers rounded to ``digits``; the data's own columns are untouched."""
    out = df.copy()
    if {"layer", "head"} <= set(out.columns):
        out.insert(0, "head ", [format_head(a, b) for a, b in zip(out["layer"], out["head"])])
        out = out.drop(columns=["layer", "head"]).rename(columns={"head ": "head"})
    return out.round(digits) if digits is not None else out


def top_heads(df: pd.DataFrame, column: str, k: int = 10, ascending: bool = False) -> pd.DataFrame:
    """The ``k`` heads with the largest (or smallest) ``column``: columns ``layer``, ``head``, ``column``."""
    _need(df, ["layer", "head", column], "top_heads")
    return df[["layer", "head", column]].dropna().sort_values(column, ascending=ascending).head(k)


def plotly_bundle(page) -> "Path":
    """Where a page's shared offline ``plotly.min.js`` lives: one bundle per report tree.

    The tree's root is the nearest ancestor of the page's folder that already holds ``plotly.min.js``,
    else the outermost ancestor named ``reports`` or ``runs``, else the page's own folder.
    """
    from pathlib import Path

    folder = Path(page).resolve().parent
    chain = [folder, *folder.parents]
    for d in chain:
        if (d / "plotly.min.js").exists():
            return d / "plotly.min.js"
    roots = [d for d in chain if d.name in ("reports", "runs")]
    return (roots[-1] if roots else folder) / "plotly.min.js"


def write_html(figures: Sequence, path, heading: str, intro: str = "", provenance: dict | None = None,
               bundle=None) -> None:
    """Write figures into one page (fluid width up to 1400 px), with a provenance footer.

    Args:
        figures: ``(name, figure)``, or ``(name, figure, definition)`` (a line under the figure saying
            what is plotted and its units), or ``(name, figure, definition, side_html)`` (e.g. a top-k
            table from :func:`table_html`, drawn beside the figure).
        path: the HTML file.
        heading, intro: page title and an HTML paragraph under it.
        provenance: the result's provenance object (:func:`provenance_footer`).
        bundle: path of the shared ``plotly.min.js`` (default :func:`plotly_bundle`); written once, offline,
            and referenced relatively, so a report tree carries one copy.
    """
    import os
    from pathlib import Path

    from plotly.offline import get_plotlyjs

    path = Path(path)
    js = Path(bundle) if bundle is not None else plotly_bundle(path)
    src = Path(os.path.relpath(js.resolve(), path.resolve().parent)).as_posix()
    parts = [f"<h1>{heading}</h1>", f"<p>{intro}</p>" if intro else ""]
    for item in figures:
        name, fig = item[0], item[1]
        definition = item[2] if len(item) > 2 else ""
        side = item[3] if len(item) > 3 else ""
        fig.update_layout(autosize=True, width=None)
        body = fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                           config={"responsive": True, "displaylogo": False})
        block = f"<div class='fig'>{body}" + (f"<p class='definition'>{definition}</p>" if definition else "") + "</div>"
        if side:
            block = f"<div class='fig-row'>{block}<div class='side'>{side}</div></div>"
        parts.append(f"<h2>{name}</h2>{block}")
    parts.append(provenance_footer(provenance))
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                    "content='width=device-width, initial-scale=1'><title>" + heading + "</title>"
                    f"<style>{PAGE_STYLE}</style><script src='{src}'></script></head><body>"
                    + "\n".join(parts) + "</body></html>")
    if not js.exists():
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(get_plotlyjs())


def markdown_page(md: str, path, title: str, provenance: dict | None = None) -> None:
    """Write markdown (CommonMark with tables, rendered by markdown-it-py) as an HTML page with the
    report style (fluid width up to 1400 px) and a provenance footer."""
    from pathlib import Path

    from markdown_it import MarkdownIt

    from ..io.provenance import MD_MARK

    md = "\n".join(ln for ln in md.splitlines() if not ln.startswith(MD_MARK))  # the machine-readable copy: the footer shows it
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    Path(path).write_text("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                          "content='width=device-width, initial-scale=1'><title>" + title + "</title>"
                          f"<style>{PAGE_STYLE}</style></head><body>" + body + provenance_footer(provenance)
                          + "</body></html>")


NOTEBOOK_PNG_ENV = "WORKBENCH_NOTEBOOK_PNG"


def setup_notebook(png: bool | None = None) -> str:
    """Choose how notebook figures are written into their outputs; returns the plotly renderer name.

    Every figure goes out as plotly's interactive JSON (``application/vnd.plotly.v1+json``, drawn by
    Jupyter). With ``png`` (default: the environment variable ``WORKBENCH_NOTEBOOK_PNG=1``, which
    ``scripts/run_notebooks.py`` sets when it writes the committed outputs) a static PNG rendered by
    kaleido (headless Chromium) is added to the same output, so a code host that runs no JavaScript
    still shows the figure. Without it (CI) no browser is started.
    """
    import os
    import warnings

    import plotly.io as pio

    warnings.filterwarnings("ignore", message="The kopts argument is ignored")  # kaleido's server mode
    if png is None:
        png = os.environ.get(NOTEBOOK_PNG_ENV, "") == "1"
    name = "plotly_mimetype"
    if png:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        name = "plotly_mimetype+png"
        pio.renderers["png"].width, pio.renderers["png"].height = 1000, 560
    pio.renderers.default = name
    return name
