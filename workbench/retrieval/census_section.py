"""Census section ``retrieval``: retrieval scores of every head, read from a saved sweep.

The sweep takes minutes to hours, so the census does not run it: it reads
``<out_dir>/<model>/retrieval/retrieval_heads.parquet`` written by ``workbench retrieval``
(or the path in census option ``retrieval_scores``) and says so in its summary when none exists.
"""
from __future__ import annotations

from pathlib import Path

from ..census import CensusContext, CensusSection, register_section
from .sweep import RETRIEVAL_THRESHOLD, default_out, load_scores


def retrieval_section(ctx: CensusContext) -> CensusSection:
    """Columns ``retrieval_score`` and ``retrieval_head`` (score > 0.1), a summary and a heatmap."""
    from ..viz import layer_head_heatmap

    path = Path(ctx.options.get("retrieval_scores") or default_out(ctx.lm.spec.name))
    if not (path / "retrieval_heads.parquet").exists() and not path.is_file():
        return CensusSection("retrieval", None, {
            "available": False,
            "note": f"no saved retrieval scores at {path}: run `workbench retrieval --model {ctx.lm.spec.name}` "
                    "to add retrieval scores to the census"})
    df = load_scores(path)
    heads = df[["layer", "head", "score"]].rename(columns={"score": "retrieval_score"})
    heads["retrieval_head"] = heads.retrieval_score > RETRIEVAL_THRESHOLD
    top = heads.sort_values("retrieval_score", ascending=False).head(10)
    summary = {"available": True, "source": str(path), "threshold": RETRIEVAL_THRESHOLD,
               "n_retrieval_heads": int(heads.retrieval_head.sum()),
               "fraction_retrieval_heads": float(heads.retrieval_head.mean()),
               "top_heads": [{"layer": int(r.layer), "head": int(r.head), "score": round(float(r.retrieval_score), 4)}
                             for r in top.itertuples()]}
    summary_file = path / "summary.json" if path.is_dir() else path.parent / "summary.json"
    if summary_file.exists():
        import json

        s = json.loads(summary_file.read_text())
        summary.update({k: s.get(k) for k in ("n_tests", "n_correct", "lengths", "depths", "needles")})
    figs = [("retrieval score", layer_head_heatmap(heads, "retrieval_score", title="retrieval score (Wu et al. 2024)"))]
    return CensusSection("retrieval", heads, summary, figs)


register_section("retrieval", retrieval_section)
