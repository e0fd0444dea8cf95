"""The runs behind ``workbench ablate`` and ``workbench masking-test``, as calls: needle accuracy with chosen
heads ablated, and the causal masking test of retrieval heads (Wu et al. 2024, section 4), each writing its
result files with provenance under ``out/<model>/retrieval/``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..core.errors import WorkbenchError
from ..core.models import LoadedModel
from ..tasks.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, Needle
from .retrieval_masking import (Condition, accuracy_grids, build_conditions, check_kinds, fit_all_means,
                                masking_figures, masking_table, run_niah, select_heads)
from .retrieval_sweep import default_out

SCORED_SELECTION = re.compile(r"\s*(retrieval:top-?\d+|random:\d+)\s*")  # head sets that need saved scores


def _check_phase(phase: str) -> None:
    from ..interventions.base import PHASES

    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")


def _scores_hash(scores: pd.DataFrame | None) -> str | None:
    return (scores.attrs.get("provenance") or {}).get("config_hash") if scores is not None else None


def ablate_needles(lm: LoadedModel, heads: str, needles: Sequence[Needle], lengths: Sequence[int] = DEFAULT_LENGTHS,
                   depths: Sequence[float] = DEFAULT_DEPTHS, kind: str = "uniform", phase: str = "decode", seed: int = 0,
                   scores: pd.DataFrame | None = None, baseline: bool = True, executor=None,
                   out: str | Path | None = "runs", config: dict | None = None) -> dict:
    """Needle-in-a-haystack accuracy with the heads ``heads`` names ablated (and, with ``baseline``, without).

    ``heads``: ``retrieval:top-K`` / ``random:K`` (from ``scores``, a saved retrieval-score table of ``lm``) or a
    head set ``L.H,...`` (:func:`~workbench.studies.retrieval_masking.select_heads`, ``seed`` for ``random``);
    ``kind``: ``uniform``, ``zero`` or ``mean`` ablation (:class:`~workbench.interventions.HeadAblation`) in
    ``phase``; every needle at every length and depth (:func:`~workbench.studies.retrieval_masking.run_niah`).

    Writes, unless ``out`` is None, ``out/<model>/retrieval/ablate_<kind>_<phase>_<heads>.json`` with provenance.

    Returns:
        ``model``, ``heads`` (the selected [layer, head] pairs), ``kind``, ``phase``, ``task``, ``accuracy``,
        ``n_tests``, ``grid`` (depths x lengths accuracy), ``baseline_accuracy`` (with ``baseline``), ``file``.

    Raises:
        WorkbenchError: unknown phase or kind, or a selection that needs scores without them.
    """
    from ..interventions import HeadAblation
    from ..io.provenance import collect, write_json

    _check_phase(phase)
    check_kinds([kind])
    sel = select_heads(heads, lm.spec.n_layers, lm.spec.n_heads, scores, seed)
    means = fit_all_means(lm) if kind == "mean" else None
    if means is not None:
        means = {h: means[h] for h in sel}
    abl = HeadAblation(sel, kind, phase, means).validate(lm.spec)
    conds = ([Condition("baseline", "none", 0, None, None, None)] if baseline else []) + \
        [Condition(f"{kind}/{heads}", "ablated", len(sel), seed, kind, abl)]
    df = run_niah(lm, conds, list(lengths), list(depths), list(needles), executor=executor)
    ab = df[df.selection == "ablated"]
    g = next(iter(accuracy_grids(ab).values()))
    result = {"model": lm.spec.name, "heads": [list(h) for h in sel], "kind": kind, "phase": phase, "task": "niah",
              "accuracy": float(ab.correct.mean()), "n_tests": int(len(ab)),
              "grid": {"depths": [float(d) for d in g.index], "lengths": [int(c) for c in g.columns],
                       "accuracy": g.values.tolist()}}
    if baseline:
        result["baseline_accuracy"] = float(df[df.selection == "none"].correct.mean())
    if out is not None:
        cfg = config if config is not None else {
            "command": "ablate", "model": lm.spec.name, "heads": heads, "kind": kind, "phase": phase, "seed": seed,
            "lengths": list(lengths), "depths": list(depths), "needles": len(needles), "baseline": baseline}
        cfg = {**cfg, "selected": result["heads"], "scores_config_hash": _scores_hash(scores)}
        name = f"ablate_{kind}_{phase}_" + "".join(c if c.isalnum() else "-" for c in heads) + ".json"
        result["file"] = str(write_json(result, default_out(lm.spec.name, out) / name, collect(lm, cfg, seed)))
    return result


def masking_test(lm: LoadedModel, scores: pd.DataFrame, needles: Sequence[Needle],
                 lengths: Sequence[int] = DEFAULT_LENGTHS, depths: Sequence[float] = DEFAULT_DEPTHS, ks: Sequence[int] = (5, 10, 20), seeds: int = 3,
                 kinds: Sequence[str] = ("uniform", "zero", "mean"), phase: str = "decode", executor=None,
                 out: str | Path | None = "runs", config: dict | None = None) -> dict:
    """The causal masking test: needle accuracy with the top-K retrieval heads (by ``scores``) or K random
    non-retrieval heads (``seeds`` draws) ablated, for each K in ``ks`` and each ablation kind
    (:func:`~workbench.studies.retrieval_masking.build_conditions`, :func:`~.retrieval_masking.masking_table`).

    Writes, unless ``out`` is None, under ``out/<model>/retrieval/``: ``masking_<phase>.csv`` / ``.parquet`` /
    ``.json`` (the table), ``masking_<phase>_tests.csv`` (every test) and ``masking_<phase>.html`` (figures),
    each with provenance.

    Returns:
        ``model``, ``phase``, ``table`` (records), ``accuracy`` per condition, ``tests`` (the DataFrame) and,
        when written, ``files``.

    Raises:
        WorkbenchError: unknown phase or kind.
    """
    from ..io.provenance import collect, write_csv, write_json, write_parquet
    from ..report.viz import write_html

    _check_phase(phase)
    kind_list = check_kinds(list(kinds))
    means = fit_all_means(lm) if "mean" in kind_list else None
    conds = build_conditions(lm, scores, list(ks), list(range(seeds)), kind_list, phase, means)
    df = run_niah(lm, conds, list(lengths), list(depths), list(needles), executor=executor)
    table = masking_table(df)
    result = {"model": lm.spec.name, "phase": phase, "table": table.to_dict(orient="records"),
              "accuracy": {c: float(g.correct.mean()) for c, g in df.groupby("condition")}, "tests": df}
    if out is not None:
        d = default_out(lm.spec.name, out)
        d.mkdir(parents=True, exist_ok=True)
        tag = f"masking_{phase}"
        cfg = config if config is not None else {
            "command": "masking-test", "model": lm.spec.name, "ks": list(ks), "seeds": seeds, "kinds": kind_list,
            "phase": phase, "lengths": list(lengths), "depths": list(depths), "needles": len(needles)}
        prov = collect(lm, {**cfg, "scores_config_hash": _scores_hash(scores)})
        write_csv(df, d / f"{tag}_tests.csv", prov)
        write_csv(table, d / f"{tag}.csv", prov)
        write_parquet(table, d / f"{tag}.parquet", prov)
        write_json({"model": lm.spec.name, "phase": phase, "table": table.to_dict(orient="records")}, d / f"{tag}.json",
                   prov)
        write_html(masking_figures(df), d / f"{tag}.html", f"Retrieval-head masking test ({phase}): {lm.spec.name}",
                   "Needle accuracy (ROUGE-1 recall > 0.5) with the top-K retrieval heads or K random non-retrieval "
                   "heads ablated; random-K grids average over seeds.", provenance=prov)
        result["files"] = {"table": str(d / f"{tag}.csv"), "tests": str(d / f"{tag}_tests.csv"),
                           "html": str(d / f"{tag}.html")}
    return result
