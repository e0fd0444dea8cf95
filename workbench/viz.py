"""Plotly figures of attention: head maps with token labels and layer x head grids of scores."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MAX_MAP_SIDE = 512  # larger maps are max-pooled to this many rows/columns for display


def _pool(a: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    f = int(np.ceil(max(a.shape) / side))
    if f <= 1:
        return a, 1
    r, c = (-(-a.shape[0] // f)) * f, (-(-a.shape[1] // f)) * f
    p = np.zeros((r, c), dtype=a.dtype)
    p[: a.shape[0], : a.shape[1]] = a
    return p.reshape(r // f, f, c // f, f).max(axis=(1, 3)), f


def attention_map(pattern, tokens: Sequence[str] | None = None, query_start: int = 0,
                  title: str = "attention", max_side: int = MAX_MAP_SIDE) -> go.Figure:
    """Heatmap of one head's attention rows.

    Args:
        pattern: (query, key) array of probabilities (a torch tensor or numpy array).
        tokens: token strings of the sequence (labels for both axes).
        query_start: absolute position of the first row.
        max_side: maps with more rows or columns are max-pooled to this size (said in the title).
    """
    a = np.asarray(pattern.detach().float() if hasattr(pattern, "detach") else pattern, dtype=np.float32)
    a, f = _pool(a, max_side)
    if f == 1 and tokens is not None:
        x = [f"{j}:{tokens[j]}" for j in range(a.shape[1])]
        y = [f"{query_start + i}:{tokens[query_start + i]}" for i in range(a.shape[0])]
    else:
        x = list(range(0, a.shape[1] * f, f))
        y = list(range(query_start, query_start + a.shape[0] * f, f))
    if f > 1:
        title += f" (max-pooled {f}x{f} for display)"
    fig = go.Figure(go.Heatmap(z=a, x=x, y=y, colorscale="Viridis", zmin=0,
                               hovertemplate="query %{y}<br>key %{x}<br>A=%{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="key", yaxis_title="query", yaxis_autorange="reversed")
    return fig


def layer_head_heatmap(df: pd.DataFrame, column: str, title: str | None = None, colorscale: str = "Viridis") -> go.Figure:
    """Layer x head heatmap of a per-head score; ``df`` has columns ``layer``, ``head`` and ``column``."""
    grid = df.pivot_table(index="layer", columns="head", values=column, aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale=colorscale,
                               hovertemplate="layer %{y} head %{x}<br>" + column + "=%{z:.4f}<extra></extra>"))
    fig.update_layout(title=title or column, xaxis_title="head", yaxis_title="layer")
    return fig


def write_html(figures: Sequence[tuple[str, go.Figure]], path, heading: str, intro: str = "") -> None:
    """Write figures into one HTML page; plotly.js is written once beside it (``plotly.min.js``)."""
    from pathlib import Path

    path = Path(path)
    parts = [f"<h1>{heading}</h1>", f"<p>{intro}</p>" if intro else ""]
    for i, (name, fig) in enumerate(figures):
        parts.append(f"<h2>{name}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="directory" if i == 0 else False))
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + heading + "</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    if figures:
        # "directory" mode expects plotly.min.js next to the page
        from plotly.offline import get_plotlyjs

        js = path.parent / "plotly.min.js"
        if not js.exists():
            js.write_text(get_plotlyjs())
