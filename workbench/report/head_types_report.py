"""Classic head types as a report: the census section ``head_types`` (scores from
:mod:`workbench.analyzers.head_types`)."""
from __future__ import annotations

from ..analyzers.head_types import HEAD_TYPES, classic_head_scores
from .census import CensusSection
from .viz import layer_head_heatmap


def head_types_section(ctx):
    """Census section ``head_types``: classic head-type scores of every head (see :mod:`workbench.analyzers.head_types`).

    Previous-token scores use the census text windows (at most 4, first 256 tokens); duplicate and
    induction scores use 4 repeated random sequences of 2 x 128 tokens (seed 0).
    """
    text = ctx.samples[:4, :256]
    df = classic_head_scores(ctx.lm, text, n_random=4, half_len=min(128, ctx.samples.shape[1] // 2),
                             progress=ctx.progress)
    summary = {}
    for k in HEAD_TYPES:
        col = f"{k}_score"
        summary[f"top_{k}_heads"] = [{"layer": int(r.layer), "head": int(r.head), "score": round(float(getattr(r, col)), 4)}
                                     for r in df.nlargest(5, col).itertuples()]
        summary[f"heads_{k}_score_over_0.4"] = int((df[col] > 0.4).sum())
    figs = [(f"{k} score", layer_head_heatmap(df, f"{k}_score", title=f"{k} score per head")) for k in HEAD_TYPES]
    return CensusSection("head_types", df, summary, figs)
