"""The HTML page of one trace (``workbench trace --html``): attention maps of the traced heads over the query
window, with the page's notes and provenance."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

HTML_MAX_MAPS = 24  # default cap on the attention maps of one trace page


def ranges(xs: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2,5,7-8`` (the way --layers/--heads take them)."""
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def write_trace_html(t, model: str, path: str | Path, notes: Sequence[str] = (), provenance: dict | None = None,
                     max_maps: int = HTML_MAX_MAPS) -> str:
    """The HTML view of a trace recorded with a ``pattern_window``: one attention map per traced (layer, head), the
    first ``max_maps`` of them in layer-major order; returns the sentence saying what the page shows (also written
    on it, with ``notes`` and the ``provenance`` footer)."""
    from .viz import format_head, trace_attention_map, write_html

    pairs = [(layer, h) for layer in t.layers for h in t.heads]
    shown = pairs[:max_maps]
    q0 = t.meta.get("query_start", 0)
    q1 = q0 + int(t["pattern"].shape[3])
    what = (f"{len(shown)} attention maps (heads {', '.join(format_head(*p) for p in shown)}; layers "
            f"{ranges(t.layers)} x heads {ranges(t.heads)} traced), queries {q0}..{q1 - 1}")
    if len(shown) < len(pairs):
        what += f"; the first {len(shown)} of {len(pairs)}: choose others with --layers/--heads"
    figs = [(f"head {format_head(layer, h)}", trace_attention_map(t, layer, h),
             "A[i, j]: probability that query i attends to key j (rows sum to 1); tokens on the axes "
             "(· = space, ⏎ = newline), position and id on hover") for layer, h in shown]
    intro = what + "." + "".join(f"<br>note: {n}" for n in notes)
    write_html(figs, path, f"Attention: {model}", intro, provenance=provenance)
    return what
