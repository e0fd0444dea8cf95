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


# --- tokens as people read them ----------------------------------------------------------------

VISIBLE_WHITESPACE = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: printable stand-in character -> byte (``Ġ`` -> 0x20)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def readable_token(raw: str) -> str:
    """One tokenizer token (its vocabulary string) as a reader sees it, whitespace made visible.

    Byte-level BPE strings (GPT-2, Llama 3, SmolLM2: ``Ġ`` = space, ``Ċ`` = newline) are mapped back
    to their bytes and decoded as UTF-8 (a byte that is only part of a character is shown as ``\\xe6``);
    SentencePiece's ``▁`` is a space and its byte tokens ``<0x0A>`` are their byte. Then a space is
    shown as ``·``, a newline as ``⏎``, a tab as ``⇥`` (:data:`VISIBLE_WHITESPACE`); an empty token as ``∅``.
    Special tokens (``<|im_start|>``) are kept as they are.
    """
    s = str(raw)
    if len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
        try:
            s = bytes([int(s[3:5], 16)]).decode("utf-8", errors="backslashreplace")
        except ValueError:
            pass
    elif not (s.startswith("<") and s.endswith(">")) and s and all(c in _BYTE_DECODER for c in s) \
            and any(ord(c) > 127 for c in s):
        s = bytes(_BYTE_DECODER[c] for c in s).decode("utf-8", errors="backslashreplace")
    return visible_whitespace(s.replace("▁", " "))


def visible_whitespace(text: str) -> str:
    """Decoded text with its whitespace made visible (:data:`VISIBLE_WHITESPACE`); ``∅`` for empty text."""
    s = str(text)
    for k, v in VISIBLE_WHITESPACE.items():
        s = s.replace(k, v)
    return s if s else "∅"


def display_tokens(tokenizer, ids) -> list[str]:
    """Token ids (a sequence or 1-D tensor) as readable strings for labels (:func:`readable_token`).

    ``tokenizer`` is any object with ``convert_ids_to_tokens`` (a Hugging Face tokenizer), or None
    (then the ids themselves are shown). The raw ids are never replaced in data, only in display.
    """
    ids = [int(i) for i in (ids.reshape(-1).tolist() if hasattr(ids, "reshape") else ids)]
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is None:
        return [str(i) for i in ids]
    return [readable_token(t) for t in convert(ids)]


def display_token_strings(raw_tokens: Sequence[str] | None) -> list[str] | None:
    """:func:`readable_token` of each raw vocabulary string (e.g. a saved trace's ``token_strings``)."""
    return None if raw_tokens is None else [readable_token(t) for t in raw_tokens]


def token_table(tokenizer, ids) -> pd.DataFrame:
    """A display table of a token sequence: ``pos``, ``id`` (raw, for data), ``token`` (readable)."""
    ids = [int(i) for i in (ids.reshape(-1).tolist() if hasattr(ids, "reshape") else ids)]
    return pd.DataFrame({"pos": range(len(ids)), "id": ids, "token": display_tokens(tokenizer, ids)})


def format_head(layer: int, head: int) -> str:
    """A head written the way the CLI flags and the dashboard take it: ``layer.head`` (``16.0``)."""
    return f"{int(layer)}.{int(head)}"


def format_number(x, digits: int = 4) -> str:
    """A number for a page: ``digits`` significant digits, scientific notation from 1e5 up or below 1e-3
    (a perplexity of 7484689.5 is ``7.48e+06``), integers as integers."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(v):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e5:
        return str(int(v))
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{max(0, digits - 2)}e}"
    return f"{v:.{digits}g}"


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
