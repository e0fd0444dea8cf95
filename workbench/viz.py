"""Plotly figures of attention heads.

* :func:`attention_map` / :func:`trace_attention_map`: one head's attention rows with token labels
  and hover values; long contexts are max-pooled (and optionally windowed), said in the title.
* :func:`layer_head_heatmap`: layer x head grid of any per-head score.
* :func:`received_attention_chart`, :func:`sink_chart`: attention sinks (Gu et al. 2024).
* :func:`massive_activation_chart`: massive activations (Sun et al. 2024).
* :func:`needle_heatmap`: needle-in-a-haystack accuracy over length x depth (Wu et al. 2024).
* :func:`intervention_maps`, :func:`next_token_chart`: before / after an intervention.
* :func:`write_html`: several figures in one page.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MAX_MAP_SIDE = 512  # larger maps are max-pooled to at most this many rows/columns for display


def _to_numpy(a) -> np.ndarray:
    return np.asarray(a.detach().float().cpu() if hasattr(a, "detach") else a, dtype=np.float32)


def _pool(a: np.ndarray, side: int) -> tuple[np.ndarray, int, int]:
    """Max-pool a 2-D array so neither side exceeds ``side``; returns (pooled, row factor, column factor).

    Max (not mean) pooling keeps a single strong key visible, which is what matters for sinks
    and retrieval heads. Rows and columns are pooled independently (a 128 x 2048 window becomes
    128 x 512, not 32 x 512).
    """
    fr = max(1, int(np.ceil(a.shape[0] / side)))
    fc = max(1, int(np.ceil(a.shape[1] / side)))
    if fr == 1 and fc == 1:
        return a, 1, 1
    r, c = (-(-a.shape[0] // fr)) * fr, (-(-a.shape[1] // fc)) * fc
    p = np.zeros((r, c), dtype=a.dtype)
    p[: a.shape[0], : a.shape[1]] = a
    return p.reshape(r // fr, fr, c // fc, fc).max(axis=(1, 3)), fr, fc


def _labels(start: int, n: int, f: int, stop: int, tokens: Sequence[str] | None) -> list[str]:
    if f == 1:
        if tokens is not None and start + n <= len(tokens):
            return [f"{start + i}:{tokens[start + i]}" for i in range(n)]
        return [str(start + i) for i in range(n)]
    return [f"{start + i * f}-{min(stop, start + (i + 1) * f) - 1}" for i in range(n)]


def attention_map(pattern, tokens: Sequence[str] | None = None, query_start: int = 0,
                  title: str = "attention", max_side: int = MAX_MAP_SIDE,
                  key_range: tuple[int, int] | None = None) -> go.Figure:
    """Heatmap of one head's attention rows A[i, j] with token labels and hover values.

    Args:
        pattern: (query, key) array of probabilities (torch tensor or numpy), rows are queries
            ``query_start ..``, columns keys ``0 ..`` (the layout of a trace's ``pattern``).
        tokens: token strings of the whole sequence (labels ``pos:token`` on both axes).
        query_start: absolute position of the first row.
        title: figure title.
        max_side: rows or columns beyond this are max-pooled for display (each axis on its own);
            the title then says so and hover labels give position ranges.
        key_range: (k0, k1) show only keys k0..k1-1 (a window; said in the title).

    Returns:
        plotly Figure (one Heatmap trace, probabilities in [0, 1]).
    """
    a = _to_numpy(pattern)
    if a.ndim != 2:
        raise ValueError(f"attention_map needs a (query, key) array, got shape {a.shape}")
    k0 = 0
    notes = []
    if key_range is not None:
        n_total = a.shape[1]
        k0, k1 = max(0, int(key_range[0])), min(n_total, int(key_range[1]))
        if k0 >= k1:
            raise ValueError(f"key_range {key_range} selects no keys of {n_total}")
        a = a[:, k0:k1]
        notes.append(f"keys {k0}..{k1 - 1} of {n_total}")
    nq, nk = a.shape
    a, fr, fc = _pool(a, max_side)
    x = _labels(k0, a.shape[1], fc, k0 + nk, tokens)
    y = _labels(query_start, a.shape[0], fr, query_start + nq, tokens)
    if fr > 1 or fc > 1:
        notes.append(f"max-pooled {fr}x{fc} for display")
    if notes:
        title += " (" + "; ".join(notes) + ")"
    fig = go.Figure(go.Heatmap(z=a, x=x, y=y, colorscale="Viridis", zmin=0,
                               hovertemplate="query %{y}<br>key %{x}<br>A=%{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="key", yaxis_title="query", yaxis_autorange="reversed")
    fig.update_xaxes(type="category", showticklabels=a.shape[1] <= 64)
    fig.update_yaxes(type="category", showticklabels=a.shape[0] <= 64)
    return fig


def trace_attention_map(trace, layer: int, head: int, batch: int = 0, max_side: int = MAX_MAP_SIDE,
                        key_range: tuple[int, int] | None = None) -> go.Figure:
    """:func:`attention_map` of head ``head`` of layer ``layer`` from a :class:`~workbench.trace.Trace`.

    Uses the trace's ``pattern`` (layer, batch, head, query, key), its ``query_start`` and token strings.

    Raises:
        KeyError: the trace has no ``pattern`` (trace with a ``pattern_window``).
        HeadIndexError: the layer or head was not recorded.
    """
    pat = trace["pattern"][trace.layer_index(layer), batch, trace.head_index(head)]
    tokens = (trace.meta.get("token_strings") or [None])[batch]
    return attention_map(pat, tokens, trace.meta.get("query_start", 0), title=f"layer {layer} head {head}",
                         max_side=max_side, key_range=key_range)


def layer_head_heatmap(df: pd.DataFrame, column: str, title: str | None = None, colorscale: str = "Viridis") -> go.Figure:
    """Layer x head heatmap of a per-head score; ``df`` has columns ``layer``, ``head`` and ``column``."""
    grid = df.pivot_table(index="layer", columns="head", values=column, aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale=colorscale,
                               hovertemplate="layer %{y} head %{x}<br>" + column + "=%{z:.4f}<extra></extra>"))
    fig.update_layout(title=title or column, xaxis_title="head", yaxis_title="layer")
    return fig


def received_attention_chart(received, tokens: Sequence[str] | None = None, title: str = "mean received attention",
                             top: int = 5, threshold: float | None = 0.3) -> go.Figure:
    """Mean received attention s_k per key position (Gu et al. 2024), with the top sinks labelled.

    Args:
        received: (key,) array of s_k = (1/(T-k)) sum_{i>=k} A[i,k] (a trace's ``received`` for one
            head, or its mean over heads).
        tokens: token strings (hover text and labels of the top keys).
        top: how many of the largest keys to label.
        threshold: draw a horizontal line at this sink threshold (Gu et al.'s eps = 0.3); None for none.

    An SVG line (no WebGL, which headless browsers emulate slowly) keeps long contexts responsive; no downsampling is needed for 1-D data.
    """
    r = _to_numpy(received).reshape(-1)
    pos = np.arange(len(r))
    text = [f"{j}:{tokens[j]}" for j in pos] if tokens is not None and len(tokens) >= len(r) else [str(j) for j in pos]
    fig = go.Figure(go.Scatter(x=pos, y=r, mode="lines+markers" if len(r) <= 256 else "lines", text=text,
                                 hovertemplate="key %{text}<br>s_k=%{y:.4f}<extra></extra>", name="s_k"))
    best = np.argsort(-r)[:top]
    fig.add_trace(go.Scatter(x=best, y=r[best], mode="markers+text", text=[text[j] for j in best],
                             textposition="top center", marker=dict(size=9, color="crimson"), name=f"top {top}",
                             hovertemplate="key %{text}<br>s_k=%{y:.4f}<extra></extra>"))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dot", annotation_text=f"sink threshold {threshold}")
    fig.update_layout(title=title, xaxis_title="key position", yaxis_title="mean received attention s_k")
    return fig


def sink_chart(df: pd.DataFrame, column: str, threshold: float = 0.3, title: str | None = None) -> go.Figure:
    """Attention sinks per head: a layer x head heatmap of ``column`` and the per-layer sink rate.

    Args:
        df: per-head table with columns ``layer``, ``head`` and ``column`` (e.g. ``first_token_mass``,
            the mean received attention of the first token, s_0).
        column: the sink score to plot.
        threshold: eps of Gu et al. 2024's sink rate: the right panel shows, per layer, the
            percentage of heads with score > eps.

    Raises:
        KeyError: a required column is missing.
    """
    from plotly.subplots import make_subplots

    _need(df, ["layer", "head", column], "sink_chart")
    grid = df.pivot_table(index="layer", columns="head", values=column, aggfunc="mean")
    rate = df.assign(_s=df[column] > threshold).groupby("layer")["_s"].mean() * 100
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
                        subplot_titles=(f"{column} per head", f"heads with {column} > {threshold} (%)"))
    fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="Viridis",
                             colorbar=dict(x=0.6), hovertemplate="layer %{y} head %{x}<br>" + column
                             + "=%{z:.4f}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=rate.values, y=list(rate.index), orientation="h", marker_color="indianred",
                         hovertemplate="layer %{y}: %{x:.1f}% of heads<extra></extra>", showlegend=False), 1, 2)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_xaxes(title_text="% heads", range=[0, 100], row=1, col=2)
    fig.update_layout(title=title or f"attention sinks: {column}")
    return fig


MASSIVE_COLUMNS = ["layer", "pos", "dim", "token", "value", "ratio_to_median"]


def massive_activation_chart(df: pd.DataFrame, title: str = "massive activations") -> go.Figure:
    """Massive activations (Sun et al. 2024): |value| of each reported residual entry by layer.

    Args:
        df: one row per residual-stream entry with columns ``layer``, ``pos``, ``dim``, ``token``,
            ``value`` (activation) and ``ratio_to_median`` (|value| / median |h| of that hidden state).
            Points are coloured by ``dim`` (massive activations sit on a few fixed dimensions);
            hover shows position, token and ratio. The y axis is logarithmic.

    Raises:
        KeyError: a required column is missing.
    """
    _need(df, MASSIVE_COLUMNS, "massive_activation_chart")
    fig = go.Figure()
    for dim, g in df.groupby("dim", sort=True):
        fig.add_trace(go.Scatter(
            x=g["layer"], y=g["value"].abs(), mode="markers", name=f"dim {dim}",
            customdata=np.stack([g["pos"], g["token"].astype(str), g["ratio_to_median"], g["value"]], axis=1),
            hovertemplate="layer %{x} dim " + str(dim) + "<br>pos %{customdata[0]} token %{customdata[1]}"
                          "<br>value %{customdata[3]:.1f} (%{customdata[2]:.0f}x median)<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="|activation|", yaxis_type="log",
                      legend_title="dimension")
    return fig


def needle_heatmap(df: pd.DataFrame, title: str = "needle in a haystack", value: str = "accuracy") -> go.Figure:
    """Needle-in-a-haystack grid: context length (x) x needle depth (y) coloured by accuracy.

    Args:
        df: one row per test (or per cell) with columns ``length`` (context tokens), ``depth``
            (percent of the context before the needle) and ``value`` (default ``accuracy``, in
            [0, 1] or percent); repeated cells are averaged.

    Raises:
        KeyError: a required column is missing.
    """
    _need(df, ["length", "depth", value], "needle_heatmap")
    grid = df.pivot_table(index="depth", columns="length", values=value, aggfunc="mean").sort_index()
    zmax = 100.0 if float(np.nanmax(grid.values)) > 1.0 else 1.0
    fig = go.Figure(go.Heatmap(z=grid.values, x=[str(c) for c in grid.columns], y=[str(i) for i in grid.index],
                               colorscale="RdYlGn", zmin=0, zmax=zmax, texttemplate="%{z:.2f}",
                               hovertemplate="length %{x} tokens<br>depth %{y}%<br>" + value
                               + "=%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth (%)")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def intervention_maps(before, after, tokens: Sequence[str] | None = None, query_start: int = 0,
                      title: str = "attention before / after the intervention",
                      max_side: int = MAX_MAP_SIDE) -> go.Figure:
    """Two attention maps of one head side by side (same colour scale), before and after an intervention.

    Args:
        before, after: (query, key) probabilities of the same head and window.
        tokens, query_start, max_side: as in :func:`attention_map` (pooling is said in the title).
    """
    from plotly.subplots import make_subplots

    a, b = _to_numpy(before), _to_numpy(after)
    if a.shape != b.shape:
        raise ValueError(f"before {a.shape} and after {b.shape} maps differ in shape")
    fa = attention_map(a, tokens, query_start, "", max_side)
    fb = attention_map(b, tokens, query_start, "", max_side)
    zmax = float(max(np.max(fa.data[0].z), np.max(fb.data[0].z), 1e-9))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("before", "after"))
    for i, f in enumerate((fa, fb)):
        t = f.data[0]
        t.update(zmax=zmax, showscale=i == 1)
        fig.add_trace(t, 1, i + 1)
    fig.update_yaxes(autorange="reversed", type="category", showticklabels=len(fa.data[0].y) <= 64)
    fig.update_xaxes(type="category", showticklabels=len(fa.data[0].x) <= 64, title_text="key")
    note = fa.layout.title.text.strip()
    fig.update_layout(title=title + (" " + note if note else ""))
    return fig


def next_token_chart(before, after, labels: Sequence[str], k: int = 10,
                     title: str = "next-token distribution before / after") -> go.Figure:
    """Grouped bars of next-token probabilities before and after an intervention.

    Args:
        before, after: (vocab,) probability vectors.
        labels: token strings indexed by id (length >= vocab) or a callable id -> string.
        k: the union of the top-k tokens of each distribution is shown.
    """
    p, q = _to_numpy(before).reshape(-1), _to_numpy(after).reshape(-1)
    ids = list(dict.fromkeys(list(np.argsort(-p)[:k]) + list(np.argsort(-q)[:k])))
    ids.sort(key=lambda i: -max(p[i], q[i]))
    name = labels if callable(labels) else (lambda i: labels[i])
    x = [f"{repr(name(int(i)))[1:-1]} ({int(i)})" for i in ids]
    fig = go.Figure([go.Bar(x=x, y=p[ids], name="before"), go.Bar(x=x, y=q[ids], name="after")])
    fig.update_layout(title=title, barmode="group", xaxis_title="token (id)", yaxis_title="probability")
    return fig


def _need(df: pd.DataFrame, cols: Sequence[str], who: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{who} needs columns {list(cols)}; missing {missing} (has {list(df.columns)})")


def write_html(figures: Sequence[tuple[str, go.Figure]], path, heading: str, intro: str = "",
               prov: dict | None = None) -> None:
    """Write figures into one HTML page; plotly.js is written once beside it (``plotly.min.js``).

    ``prov`` (:func:`workbench.provenance.collect`) adds the provenance footer (:func:`~workbench.provenance.footer_html`).
    """
    from pathlib import Path

    from .provenance import footer_html

    path = Path(path)
    parts = [f"<h1>{heading}</h1>", f"<p>{intro}</p>" if intro else ""]
    for i, (name, fig) in enumerate(figures):
        parts.append(f"<h2>{name}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="directory" if i == 0 else False))
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + heading + "</title></head><body>"
                    + "\n".join(parts) + (footer_html(prov) if prov is not None else "") + "</body></html>")
    if figures:
        # "directory" mode expects plotly.min.js next to the page
        from plotly.offline import get_plotlyjs

        js = path.parent / "plotly.min.js"
        if not js.exists():
            js.write_text(get_plotlyjs())
