"""Charts of per-head and per-position scores: layer x head heatmaps, received attention and sinks,
massive activations, needle-in-a-haystack grids and next-token distributions."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .viz_maps import _to_numpy
from .viz_tokens import display_tokens


def layer_head_heatmap(df: pd.DataFrame, column: str, title: str | None = None, colorscale: str = "Viridis",
                       zmid: float | None = None) -> go.Figure:
    """Layer x head heatmap of a per-head score; ``df`` has columns ``layer``, ``head`` and ``column``.

    Layer 0 is at the top (as in every heatmap of the workbench); hover says ``layer.head`` (the way
    the CLI flags take a head) and the value.
    """
    _need(df, ["layer", "head", column], "layer_head_heatmap")
    grid = df.pivot_table(index="layer", columns="head", values=column, aggfunc="mean").sort_index()
    fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale=colorscale,
                               zmid=zmid, colorbar=dict(title=dict(text=column, side="right")),
                               hovertemplate="head %{y}.%{x}<br>" + column + "=%{z:.4g}<extra></extra>"))
    fig.update_layout(title=title or column, xaxis_title="head", yaxis_title="layer")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(dtick=1 if grid.shape[1] <= 32 else None)
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
    text = [f"{j} {tokens[j]}" for j in pos] if tokens is not None and len(tokens) >= len(r) else [str(j) for j in pos]
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


def received_maxima(received, counts=None, n_queries: int | None = None, min_queries: int | None = None):
    """Largest mean received attention over keys k >= 1 seen by enough queries: (value, key) per row.

    The mean s_k of a late key runs over only T - k queries, so the last keys' means are noisy; the
    sinks analyzer (:mod:`workbench.analyzers.sinks`) counts a key only when at least ``max(8, T/4)`` queries see
    it, and so does this (the default ``min_queries``). With causal attention over T tokens, key k is
    seen by T - k queries (``counts`` overrides that).

    Args:
        received: (..., T) mean received attention.
        counts: (..., T) or (T,) queries that see each key (default T - k).
        n_queries: T (default the last axis).
        min_queries: default ``max(8, T // 4)``.
    Returns:
        (values (...,), keys (...,)) as numpy arrays; NaN / -1 where no key qualifies.
    """
    r = _to_numpy(received)
    t = r.shape[-1] if n_queries is None else int(n_queries)
    c = np.arange(t, t - r.shape[-1], -1) if counts is None else _to_numpy(counts)
    mq = max(8, t // 4) if min_queries is None else int(min_queries)
    ok = np.broadcast_to(c >= mq, r.shape).copy()
    ok[..., 0] = False
    masked = np.where(ok, r, -np.inf)
    keys = masked.argmax(-1)
    vals = np.take_along_axis(masked, keys[..., None], -1)[..., 0]
    none = ~ok.any(-1)
    return np.where(none, np.nan, vals), np.where(none, -1, keys)


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
                        subplot_titles=(f"{column} per head", f"% heads > {threshold}"))
    fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="Viridis",
                             colorbar=dict(x=0.6), hovertemplate="layer %{y} head %{x}<br>" + column
                             + "=%{z:.4f}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=rate.values, y=list(rate.index), orientation="h", marker_color="indianred",
                         hovertemplate="layer %{y}: %{x:.1f}% of heads<extra></extra>", showlegend=False), 1, 2)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_xaxes(title_text="% heads", range=[0, 100], row=1, col=2)
    fig.update_layout(title=title or f"attention sinks: {column}", margin=dict(t=90))
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

def next_token_chart(before, after, labels, k: int = 10,
                     title: str = "next-token distribution before / after") -> go.Figure:
    """Grouped bars of next-token probabilities before and after an intervention.

    Args:
        before, after: (vocab,) probability vectors.
        labels: a tokenizer (ids are shown with :func:`display_tokens`), readable token strings indexed
            by id (length >= vocab), or a callable id -> string.
        k: the union of the top-k tokens of each distribution is shown.
    """
    p, q = _to_numpy(before).reshape(-1), _to_numpy(after).reshape(-1)
    ids = list(dict.fromkeys(list(np.argsort(-p)[:k]) + list(np.argsort(-q)[:k])))
    ids.sort(key=lambda i: -max(p[i], q[i]))
    if hasattr(labels, "convert_ids_to_tokens"):
        names = display_tokens(labels, ids)
    else:
        name = labels if callable(labels) else (lambda i: labels[i])
        names = [str(name(int(i))) for i in ids]
    x = [f"{n} ({int(i)})" for n, i in zip(names, ids)]
    fig = go.Figure([go.Bar(x=x, y=p[ids], name="before"), go.Bar(x=x, y=q[ids], name="after")])
    fig.update_layout(title=title, barmode="group", xaxis_title="token (id)", yaxis_title="probability")
    return fig


def _need(df: pd.DataFrame, cols: Sequence[str], who: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{who} needs columns {list(cols)}; missing {missing} (has {list(df.columns)})")
