"""Retrieval heads per context-length band: does a sweep find retrieval heads or generic copying?

At short contexts a model that copies a needle verbatim lets many heads' top-1 key land on the
answer tokens, so many heads pass the 0.1 threshold; Wu et al. (2024) find under 5% of heads at long
contexts. :func:`band_table` scores each length of a sweep on its own (the mean over that length's
correctly answered tests, as :func:`~workbench.studies.retrieval_sweep.summarize` does for the whole grid)
and compares each band's top-10 with the longest band's, so one can see from which length on the
set stops changing.
"""
from __future__ import annotations

import pandas as pd

from ..analyzers.retrieval import RETRIEVAL_THRESHOLD
from .retrieval_sweep import summarize


def top_heads(heads: pd.DataFrame, k: int = 10) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring (layer, head) pairs (ties broken by layer, then head)."""
    top = heads.sort_values(["score", "layer", "head"], ascending=[False, True, True]).head(k)
    return [(int(a), int(b)) for a, b in zip(top["layer"], top["head"])]


def band_table(records: list[dict], n_layers: int, n_heads: int, k: int = 10,
               threshold: float = RETRIEVAL_THRESHOLD) -> pd.DataFrame:
    """One row per context length of the sweep records, shortest first.

    Columns: ``length``, ``n_tests``, ``accuracy`` (share answered correctly), ``n_retrieval`` (heads
    with score > threshold in that band), ``fraction`` (of all L x H heads), ``top`` ("L.H" of the
    band's top-``k``), ``overlap_longest`` (how many of the band's top-``k`` are in the top-``k`` of the
    longest band with a correct answer, 0..k; a band the model never answers has no scores to
    compare; that band is in ``df.attrs["reference_length"]``) and ``overlap_next`` (with the next longer band's; NaN for the longest).
    """
    lengths = sorted({int(r["length"]) for r in records})
    rows, tops = [], {}
    for n in lengths:
        res = summarize([r for r in records if int(r["length"]) == n], n_layers, n_heads, threshold)
        s = res.summary
        tops[n] = top_heads(res.heads, k)
        rows.append({"length": n, "n_tests": s["n_tests"], "accuracy": s["accuracy"],
                     "n_retrieval": s["n_retrieval_heads"], "fraction": s["fraction_retrieval_heads"]})
    answered = [r["length"] for r in rows if r["accuracy"]]
    ref = answered[-1] if answered else lengths[-1]
    for i, row in enumerate(rows):
        n = row["length"]
        row["top"] = ",".join(f"{a}.{b}" for a, b in tops[n])
        row["overlap_longest"] = len(set(tops[n]) & set(tops[ref]))
        row["overlap_next"] = len(set(tops[n]) & set(tops[lengths[i + 1]])) if i + 1 < len(lengths) else None
    df = pd.DataFrame(rows)
    df.attrs["reference_length"] = ref
    return df
