"""Attention maps: one head's (query, key) attention as a heatmap with token labels and hover values,
max-pooled when long, from an array or a trace, and before / after an intervention."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .viz_tokens import display_token_strings

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


def _hover_labels(start: int, n: int, tokens: Sequence[str] | None, ids: Sequence[int] | None) -> list[str]:
    """Hover text of positions start..start+n-1: ``pos ·token (id 123)`` (what is known of each)."""
    out = []
    for p in range(start, start + n):
        s = str(p)
        if tokens is not None and p < len(tokens):
            s += f" {tokens[p]}"
        if ids is not None and p < len(ids):
            s += f" (id {int(ids[p])})"
        out.append(s)
    return out


MAX_HOVER_CELLS = 1 << 15  # per-cell token hover text only for maps up to this many cells (page weight)
MAX_TICK_LABELS = 64  # token tick labels on an axis with at most this many positions, else numeric ticks


def attention_map(pattern, tokens: Sequence[str] | None = None, query_start: int = 0,
                  title: str = "attention", max_side: int = MAX_MAP_SIDE,
                  key_range: tuple[int, int] | None = None, ids: Sequence[int] | None = None,
                  colorscale: str = "Viridis", zmin: float | None = 0.0, zmax: float | None = None) -> go.Figure:
    """Heatmap of one head's attention rows A[i, j] with token labels and hover values.

    Args:
        pattern: (query, key) array of probabilities (torch tensor or numpy), rows are queries
            ``query_start ..``, columns keys ``0 ..`` (the layout of a trace's ``pattern``).
        tokens: readable token strings of the whole sequence (:func:`display_tokens`), used as tick
            labels when an axis shows at most :data:`MAX_TICK_LABELS` positions, and in the hover text.
        query_start: absolute position of the first row.
        title: figure title.
        max_side: rows or columns beyond this are max-pooled for display (each axis on its own);
            the title then says so and the axes give the first position of each pooled bin.
        key_range: (k0, k1) show only keys k0..k1-1 (a window; said in the title).
        ids: token ids of the sequence (hover text ``pos token (id N)``).

    Axes are numeric positions (key on x, query on y, first query at the top) so repeated tokens
    never merge; layer of the figure's trace: ``x``/``y`` hold the positions, ``z`` the probabilities.

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
    x = [k0 + i * fc for i in range(a.shape[1])]
    y = [query_start + i * fr for i in range(a.shape[0])]
    if fr > 1 or fc > 1:
        notes.append(f"max-pooled {fr}x{fc} for display")
    if notes:
        title += " (" + "; ".join(notes) + ")"
    kw = {}
    if fr == 1 and fc == 1 and (tokens is not None or ids is not None) and a.size <= MAX_HOVER_CELLS:
        hx = _hover_labels(k0, a.shape[1], tokens, ids)
        hy = _hover_labels(query_start, a.shape[0], tokens, ids)
        kw["customdata"] = np.array([[[qy, kx] for kx in hx] for qy in hy], dtype=object)
        hover = "query %{customdata[0]}<br>key %{customdata[1]}<br>A=%{z:.4f}<extra></extra>"
    elif fr > 1 or fc > 1:
        hover = (f"queries from %{{y}} ({fr} per cell)<br>keys from %{{x}} ({fc} per cell)"
                 "<br>max A=%{z:.4f}<extra></extra>")
    else:
        hover = "query %{y}<br>key %{x}<br>A=%{z:.4f}<extra></extra>"
    fig = go.Figure(go.Heatmap(z=a, x=x, y=y, colorscale=colorscale, zmin=zmin, zmax=zmax, hovertemplate=hover, **kw))
    fig.update_layout(title=title, xaxis_title="key position", yaxis_title="query position")
    fig.update_yaxes(autorange="reversed")
    _token_ticks(fig, "x", x, tokens if fc == 1 else None)
    _token_ticks(fig, "y", y, tokens if fr == 1 else None)
    return fig


def _token_ticks(fig: go.Figure, axis: str, positions: list[int], tokens: Sequence[str] | None, **sel) -> None:
    """Label an axis with readable tokens when it shows few positions (else leave numeric ticks)."""
    upd = fig.update_xaxes if axis == "x" else fig.update_yaxes
    if tokens is not None and len(positions) <= MAX_TICK_LABELS and positions and positions[-1] < len(tokens):
        upd(tickmode="array", tickvals=positions, ticktext=[str(tokens[p]) for p in positions],
            tickangle=-60 if axis == "x" else 0, **sel)


def trace_attention_map(trace, layer: int, head: int, batch: int = 0, max_side: int = MAX_MAP_SIDE,
                        key_range: tuple[int, int] | None = None, tokens: Sequence[str] | None = None) -> go.Figure:
    """:func:`attention_map` of head ``head`` of layer ``layer`` from a :class:`~workbench.core.trace.Trace`.

    Uses the trace's ``pattern`` (layer, batch, head, query, key), its ``query_start``, token ids and
    token strings (made readable with :func:`readable_token` unless ``tokens`` is given).

    Raises:
        KeyError: the trace has no ``pattern`` (trace with a ``pattern_window``).
        HeadIndexError: the layer or head was not recorded.
    """
    pat = trace["pattern"][trace.layer_index(layer), batch, trace.head_index(head)]
    if tokens is None:
        tokens = trace_tokens(trace, batch)
    ids = trace["tokens"][batch].tolist() if "tokens" in trace else None
    return attention_map(pat, tokens, trace.meta.get("query_start", 0), title=f"layer {layer} head {head}",
                         max_side=max_side, key_range=key_range, ids=ids)


def trace_tokens(trace, batch: int = 0) -> list[str] | None:
    """Readable token strings of one traced sequence (from its ``token_strings``), or None."""
    raw = trace.meta.get("token_strings")
    return display_token_strings(raw[batch]) if raw and len(raw) > batch else None


def intervention_maps(before, after, tokens: Sequence[str] | None = None, query_start: int = 0,
                      title: str = "attention before / after the intervention",
                      max_side: int = MAX_MAP_SIDE, ids: Sequence[int] | None = None) -> go.Figure:
    """One head's attention before and after an intervention (same colour scale) and their difference.

    Args:
        before, after: (query, key) probabilities of the same head and window; ``after`` is the
            attention the head used in the intervened run (see :mod:`workbench.report.comparison`).
        tokens, query_start, max_side, ids: as in :func:`attention_map` (pooling is said in the title).

    Returns:
        Figure with three heatmaps: before, after (shared scale), after - before (diverging, centred at 0).
        The title carries max |after - before|.
    """
    from plotly.subplots import make_subplots

    a, b = _to_numpy(before), _to_numpy(after)
    if a.shape != b.shape:
        raise ValueError(f"before {a.shape} and after {b.shape} maps differ in shape")
    d = b - a
    fa = attention_map(a, tokens, query_start, "", max_side, ids=ids)
    fb = attention_map(b, tokens, query_start, "", max_side, ids=ids)
    dmax = float(np.abs(d).max()) if d.size else 0.0
    lim = max(dmax, 1e-9)
    fd = attention_map(d, tokens, query_start, "", max_side, ids=ids, colorscale="RdBu_r", zmin=-lim, zmax=lim)
    hi, lo = _pool(d, max_side)[0], -_pool(-d, max_side)[0]
    fd.data[0].z = np.where(np.abs(lo) > np.abs(hi), lo, hi)  # pooled cells keep their largest change, either sign
    zmax = float(max(np.max(fa.data[0].z), np.max(fb.data[0].z), 1e-9))
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("before", "after", "after - before"))
    for i, f in enumerate((fa, fb, fd)):
        t = f.data[0]
        if i < 2:
            t.update(zmin=0, zmax=zmax, showscale=i == 1, colorbar=dict(x=0.64, len=0.9, title=dict(text="A")))
        else:
            t.update(colorbar=dict(x=1.0, len=0.9, title=dict(text="ΔA")))
        fig.add_trace(t, 1, i + 1)
        for ax in ("x", "y"):
            src = getattr(f.layout, f"{ax}axis")
            if src.tickvals is not None:
                upd = fig.update_xaxes if ax == "x" else fig.update_yaxes
                upd(tickmode="array", tickvals=src.tickvals, ticktext=src.ticktext, row=1, col=i + 1,
                    tickangle=-60 if ax == "x" else 0)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="query position", row=1, col=1)
    fig.update_xaxes(title_text="key position")
    note = fa.layout.title.text.strip()
    fig.update_layout(title=f"{title}: max |after - before| = {dmax:.3g}" + (" " + note if note else ""),
                      margin=dict(t=90))
    return fig
