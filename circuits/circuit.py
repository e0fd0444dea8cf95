"""Circuit extraction (top heads per stage) and the overlap of two tasks' circuits.

**Extraction** follows the backwards search of Wang et al. 2022: stage 1 is the ``k`` heads with
the largest absolute path-patching effect on the logits (for IOI: name movers and negative name
movers); stage s+1 is the ``k`` heads with the largest absolute effect through the heads of
stage s as receivers (for IOI: S-inhibition heads, then induction and duplicate-token heads).
Each stage's receivers are the heads found so far in the previous stage; senders are all heads
in earlier layers than the last receiver that are not already in the circuit.

**Overlap** as Merullo et al. 2024 measured it between IOI and colored objects: how many of one
task's circuit heads are also in the other's. We report, for head sets A and B of the top-k heads:
``shared = |A & B|``, ``overlap = |A & B| / min(|A|, |B|)`` (share of the smaller circuit reused),
``jaccard = |A & B| / |A | B|``, and the Spearman rank correlation of the per-head effects over all
heads both tables score.
"""
from __future__ import annotations

import pandas as pd

from workbench.core.models import LoadedModel
from .patching import Head, path_patching
from workbench.tasks.ioi import PatchingTask


def top_k(df: pd.DataFrame, k: int, column: str = "effect") -> list[Head]:
    """The ``k`` heads with the largest ``|column|``."""
    top = df.reindex(df[column].abs().sort_values(ascending=False).index).head(k)
    return [(int(a), int(b)) for a, b in zip(top.layer, top["head"])]


def extract_circuit(lm: LoadedModel, task: PatchingTask, k: int = 5, stages: int = 2, heads_per_pass: int = 9,
                    progress: bool = True) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """Top heads per stage by path patching (module docstring).

    Returns:
        (circuit, tables): ``circuit`` has columns ``stage, layer, head, effect, normalised``;
        ``tables[s]`` is stage s's full path-patching table (:func:`~.patching.path_patching`).
    """
    rows, tables = [], {}
    receivers: list[Head] | str = "logits"
    found: set[Head] = set()
    for stage in range(1, stages + 1):
        if stage > 1:
            last = max(layer for layer, _ in receivers)
            senders = [(layer, h) for layer in range(last) for h in range(lm.spec.n_heads) if (layer, h) not in found]
            if not senders:
                break
        else:
            senders = None
        df = path_patching(lm, task, receivers, senders=senders, heads_per_pass=heads_per_pass, progress=progress)
        tables[stage] = df
        top = top_k(df, k)
        sel = df.set_index(["layer", "head"])
        for hh in top:
            rows.append({"stage": stage, "layer": hh[0], "head": hh[1], "effect": float(sel.loc[hh, "effect"]),
                         "normalised": float(sel.loc[hh, "normalised"])})
        found |= set(top)
        receivers = top
    return pd.DataFrame(rows), tables


def circuit_overlap(a: pd.DataFrame, b: pd.DataFrame, k: int = 10, column: str = "effect") -> dict:
    """Overlap of the top-``k`` heads (by ``|column|``) of two per-head tables (module docstring).

    Returns:
        dict with ``k``, ``shared`` (list of [layer, head]), ``n_shared``, ``overlap``, ``jaccard``
        and ``spearman`` (rank correlation of ``column`` over the heads in both tables).
    """
    ta, tb = set(top_k(a, k, column)), set(top_k(b, k, column))
    shared = sorted(ta & tb)
    m = a.merge(b, on=["layer", "head"], suffixes=("_a", "_b"))
    rho = m[f"{column}_a"].corr(m[f"{column}_b"], method="spearman") if len(m) > 1 else float("nan")
    return {"k": k, "shared": [list(h) for h in shared], "n_shared": len(shared),
            "overlap": len(shared) / max(1, min(len(ta), len(tb))), "jaccard": len(shared) / max(1, len(ta | tb)),
            "spearman": float(rho)}


def set_overlap(a: list[Head], b: list[Head]) -> dict:
    """Overlap of two explicit head sets (e.g. two extracted circuits): shared, overlap, jaccard."""
    sa, sb = set(map(tuple, a)), set(map(tuple, b))
    shared = sorted(sa & sb)
    return {"shared": [list(h) for h in shared], "n_shared": len(shared),
            "overlap": len(shared) / max(1, min(len(sa), len(sb))), "jaccard": len(shared) / max(1, len(sa | sb))}
