"""The retrieval sweep's result: per-test records, per-head retrieval scores averaged over correctly answered
tests, the retrieval heads (score > 0.1, Wu et al. 2024) and the summary (:func:`summarize`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..analyzers.retrieval import RETRIEVAL_THRESHOLD


@dataclass
class SweepResult:
    """Per-test records, per-head scores and summary of a sweep."""

    tests: pd.DataFrame
    heads: pd.DataFrame
    summary: dict
    files: dict = field(default_factory=dict)

    @property
    def retrieval_heads(self) -> pd.DataFrame:
        return self.heads[self.heads.retrieval].sort_values("score", ascending=False)

    def to_json(self) -> dict:
        return {"summary": self.summary, "files": self.files,
                "heads": [{"layer": int(r.layer), "head": int(r.head), "score": float(r.score)}
                          for r in self.heads.itertuples()],
                "retrieval_heads": [{"layer": int(r.layer), "head": int(r.head), "score": float(r.score)}
                                    for r in self.retrieval_heads.itertuples()]}


def summarize(records: list[dict], n_layers: int, n_heads: int, threshold: float = RETRIEVAL_THRESHOLD) -> SweepResult:
    """Per-head retrieval scores averaged over correctly answered tests, and the sweep summary.

    Returns a :class:`SweepResult` whose ``heads`` has columns layer, head, score (mean over correct
    tests; 0 where no test was correct), retrieval (score > threshold), rank (1 = highest score).
    """
    tests = pd.DataFrame([{k: v for k, v in r.items() if k != "scores"} for r in records])
    ok = [r for r in records if r["correct"]]
    if ok:
        mean = np.mean([np.asarray(r["scores"], dtype=np.float64) for r in ok], axis=0)
    else:
        mean = np.zeros((n_layers, n_heads))
    heads = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), n_heads), "head": np.tile(np.arange(n_heads), n_layers),
                          "score": mean.reshape(-1)})
    heads["retrieval"] = heads.score > threshold
    heads["rank"] = heads.score.rank(ascending=False, method="first").astype(int)
    n_ret = int(heads.retrieval.sum())
    summary = {
        "n_tests": len(records), "n_correct": len(ok),
        "accuracy": (len(ok) / len(records)) if records else None,
        "lengths": sorted({int(r["length"]) for r in records}), "depths": sorted({float(r["depth"]) for r in records}),
        "needles": sorted({r["needle"] for r in records}),
        "threshold": threshold, "n_heads": n_layers * n_heads, "n_retrieval_heads": n_ret,
        "fraction_retrieval_heads": n_ret / (n_layers * n_heads),
        "top_heads": [{"layer": int(r.layer), "head": int(r.head), "score": round(float(r.score), 4)}
                      for r in heads.sort_values("score", ascending=False).head(10).itertuples()],
    }
    return SweepResult(tests, heads, summary)
