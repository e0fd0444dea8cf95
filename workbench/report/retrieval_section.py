"""Census section ``retrieval``: retrieval scores of every head from a small needle sweep run now.

By default the census runs its own quick sweep (:data:`QUICK_LENGTHS` x :data:`QUICK_DEPTHS` x the first
:data:`QUICK_NEEDLES` needles = 12 tests, 23 or fewer decoded tokens each; on SmolLM2-135M about 5 s of
single-thread CPU per test, so about a minute), in ``<out>/<model>/census_retrieval/`` (a sweep folder
with its configuration header, so an identical rerun reuses finished tests and any change of weights,
grid or code starts afresh). The grid is short-context: it finds heads that copy the needle at 256-512
tokens, which is not the long-context retrieval-head set of Wu et al.; for that run ``workbench retrieval``
and pass its folder as census option ``retrieval_from`` (CLI ``--retrieval-from DIR``): the saved sweep must
carry provenance of the same weights, else the census refuses it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .census import CensusContext, CensusSection
from ..studies.retrieval_sweep import RETRIEVAL_THRESHOLD, load_scores

QUICK_LENGTHS = (256, 512)
QUICK_DEPTHS = (0, 50, 100)
QUICK_NEEDLES = 2
QUICK_MAX_NEW_TOKENS = 24
QUICK_BAND = ("short context, 256-512 tokens: verbatim copying lets more heads pass 0.1 than from 1024 tokens on, "
              "where the set is stable (on SmolLM2-135M 26 heads vs 21-22, top-10 sharing 7/10 with the 4096-token "
              "set; README, Retrieval heads); run `workbench retrieval` for the long-context set")


def quick_lengths(context_window: int) -> tuple[int, ...]:
    """The lengths of :data:`QUICK_LENGTHS` that fit the model's context window with room for the question
    and :data:`QUICK_MAX_NEW_TOKENS` decoded tokens (64 tokens of margin); all of them when the window is
    unknown (0)."""
    if not context_window:
        return QUICK_LENGTHS
    return tuple(n for n in QUICK_LENGTHS if n + QUICK_MAX_NEW_TOKENS + 64 <= context_window)


def quick_sweep(ctx: CensusContext, lengths: tuple[int, ...] = QUICK_LENGTHS):
    """Run (or reuse, for an identical configuration) the census's quick needle sweep over ``lengths``;
    returns (heads, summary)."""
    from ..io.jsonl import read_header
    from ..io.provenance import config_hash
    from ..tasks.needle import load_needles
    from ..studies.retrieval_sweep import RESULTS_FILE, run_sweep, save, sweep_config

    needles = load_needles()[:QUICK_NEEDLES]
    window = ctx.lm.spec.context_window
    lengths = [n for n in QUICK_LENGTHS if not window or n <= window]  # what fits the model's window
    tmp = None
    if ctx.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="census-retrieval-")
        d = Path(tmp.name)
    else:
        d = Path(ctx.out) / "census_retrieval"
    cfg = sweep_config(ctx.lm, lengths, QUICK_DEPTHS, needles, None, QUICK_MAX_NEW_TOKENS)
    header = read_header(d / RESULTS_FILE)
    if header is not None and header.get("config_hash") != config_hash(cfg):
        (d / RESULTS_FILE).unlink()  # made by other weights, grid or code: start afresh
    try:
        res = run_sweep(ctx.lm, lengths, QUICK_DEPTHS, needles, d, resume=True, progress=ctx.progress,
                        max_new_tokens=QUICK_MAX_NEW_TOKENS)
        if tmp is None:
            save(res, d, ctx.lm.spec.name)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return res.heads, {"source": "quick sweep run by the census" + ("" if tmp else f" ({d})"), **{
        k: res.summary[k] for k in ("n_tests", "n_correct", "lengths", "depths", "needles")},
        "max_new_tokens": QUICK_MAX_NEW_TOKENS, "band": QUICK_BAND}


def retrieval_section(ctx: CensusContext) -> CensusSection:
    """Columns ``retrieval_score`` and ``retrieval_head`` (score > 0.1), a summary and a heatmap.

    Raises:
        ProvenanceError: ``retrieval_from`` names a sweep of other weights (or one without provenance).
        WorkbenchError: ``retrieval_from`` holds no saved scores.
    """
    from .viz import layer_head_heatmap

    src = ctx.options.get("retrieval_from")
    if src:
        import json

        path = Path(src)
        df = load_scores(path, ctx.lm)
        prov = df.attrs.get("provenance") or {}
        info = {"source": str(path), "source_config_hash": prov.get("config_hash"), "source_date": prov.get("date")}
        summary_file = path / "summary.json" if path.is_dir() else path.parent / "summary.json"
        if summary_file.exists():
            s = json.loads(summary_file.read_text())
            info.update({k: s.get(k) for k in ("n_tests", "n_correct", "lengths", "depths", "needles")})
    elif ctx.lm.spec.context_window and ctx.lm.spec.context_window < min(QUICK_LENGTHS):
        return CensusSection("retrieval", None, {
            "available": False, "note": f"the quick needle sweep needs {min(QUICK_LENGTHS)} tokens but "
            f"{ctx.lm.spec.name} has a {ctx.lm.spec.context_window}-token window: pass --retrieval-from DIR"})
    else:
        lengths = quick_lengths(ctx.lm.spec.context_window)
        if not lengths:
            return CensusSection("retrieval", None, {
                "skipped": f"the {ctx.lm.spec.context_window}-token context window is shorter than the quick "
                           f"sweep's {QUICK_LENGTHS[0]}-token haystack; run `workbench retrieval` with shorter "
                           "--lengths and pass --retrieval-from"})
        df, info = quick_sweep(ctx, lengths)
    heads = df[["layer", "head", "score"]].rename(columns={"score": "retrieval_score"})
    heads["retrieval_head"] = heads.retrieval_score > RETRIEVAL_THRESHOLD
    top = heads.sort_values("retrieval_score", ascending=False).head(10)
    summary = {"available": True, **info, "threshold": RETRIEVAL_THRESHOLD,
               "n_retrieval_heads": int(heads.retrieval_head.sum()),
               "fraction_retrieval_heads": float(heads.retrieval_head.mean()),
               "top_heads": [{"layer": int(r.layer), "head": int(r.head), "score": round(float(r.retrieval_score), 4)}
                             for r in top.itertuples()]}
    figs = [("retrieval score", layer_head_heatmap(heads, "retrieval_score", title="retrieval score (Wu et al. 2024)"))]
    return CensusSection("retrieval", heads, summary, figs)
