"""Classic head types as a report: the table ``workbench heads`` writes, and the census section ``head_types``
(scores from :mod:`workbench.analyzers.head_types`)."""
from __future__ import annotations

from pathlib import Path

from ..analyzers.head_types import HEAD_TYPES, PrefixHeadTypes, classic_head_scores, random_token_scores
from ..core.models import LoadedModel
from .census import CensusSection
from .viz import layer_head_heatmap


def head_types_report(lm: LoadedModel, samples: int = 4, seq_len: int = 256, n_random: int = 4, half_len: int = 128,
                      seed: int = 0, top: int = 5, out: str | Path | None = "runs", progress: bool = True,
                      config: dict | None = None) -> dict:
    """Previous-token, duplicate-token and induction scores of every head, written as a table.

    Previous-token scores use ``samples`` windows of ``seq_len`` tokens of real text
    (:func:`workbench.tasks.text.token_windows`); duplicate and induction scores use ``n_random`` repeated
    random sequences of 2 x ``half_len`` tokens (``seed``); see :func:`~workbench.analyzers.head_types.classic_head_scores`.

    Writes, unless ``out`` is None, ``out/<model>/head_types.parquet`` (with provenance; ``config`` recorded in
    it, by default the arguments) and ``head_types.csv``.

    Returns:
        ``model``, ``table`` (the Parquet path, or None), ``settings``, ``provenance``, ``scores`` (the
        DataFrame: layer, head, ``<type>_score``) and, per type, ``top_<type>``: the ``top`` best heads as
        ``{"layer", "head", "score"}``.
    """
    from ..io.provenance import code_sha256, collect, write_csv, write_parquet
    from ..io.runs import model_dir
    from ..tasks.text import token_windows

    text = token_windows(lm.tokenizer, seq_len, samples)
    df = classic_head_scores(lm, text, n_random=n_random, half_len=half_len, seed=seed, progress=progress)
    settings = {"samples": samples, "seq_len": seq_len, "random": n_random, "half_len": half_len, "seed": seed}
    cfg = config if config is not None else {"command": "heads", "model": lm.spec.name, **settings}
    prov = collect(lm, {**cfg, "code_sha256": code_sha256(["workbench.analyzers.head_types", "workbench.core.stats",
                                                             "workbench.tasks.text"])}, seed)
    path = None
    if out is not None:
        path = model_dir(out, lm.spec.name) / "head_types.parquet"
        write_parquet(df, path, prov)
        write_csv(df, path.with_suffix(".csv"), prov)
    res = {"model": lm.spec.name, "table": None if path is None else str(path), "settings": settings,
           "provenance": prov, "scores": df}
    for k in HEAD_TYPES:
        col = f"{k}_score"
        res[f"top_{k}"] = [{"layer": int(r.layer), "head": int(r.head), "score": float(getattr(r, col))}
                           for r in df.nlargest(top, col).itertuples()]
    return res


def head_types_section(ctx):
    """Census section ``head_types``: classic head-type scores of every head (see :mod:`workbench.analyzers.head_types`).

    Previous-token scores use the census text windows (at most 4, first 256 tokens), scored inside the
    census's one pass over the windows (:func:`window_consumer`); duplicate and induction scores use 4
    repeated random sequences of 2 x 128 tokens (seed 0), a pass of their own.
    """
    prev = ctx.consumers["head_types"].frame()  # scored in the census pass over the windows
    df = prev.merge(random_token_scores(ctx.lm, n_random=4, half_len=min(128, ctx.samples.shape[1] // 2),
                                        progress=ctx.progress), on=["layer", "head"])
    summary = {}
    for k in HEAD_TYPES:
        col = f"{k}_score"
        summary[f"top_{k}_heads"] = [{"layer": int(r.layer), "head": int(r.head), "score": round(float(getattr(r, col)), 4)}
                                     for r in df.nlargest(5, col).itertuples()]
        summary[f"heads_{k}_score_over_0.4"] = int((df[col] > 0.4).sum())
    figs = [(f"{k} score", layer_head_heatmap(df, f"{k}_score", title=f"{k} score per head")) for k in HEAD_TYPES]
    return CensusSection("head_types", df, summary, figs)


def window_consumer(ctx) -> PrefixHeadTypes:
    """The ``head_types`` section's rider on the census pass: previous-token scores of windows 0-3, first 256 tokens."""
    return PrefixHeadTypes(ctx.lm.spec.n_layers, ctx.lm.spec.n_heads, ("previous_token",), rows=4, prefix=256)


head_types_section.window_consumer = window_consumer
