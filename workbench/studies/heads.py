"""Resolving a study's head sets into (layer, head) lists, from the analyzers' saved tables."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from ..core.models import LoadedModel
from .spec import HeadSetSpec, StudySpecError

Head = tuple[int, int]


def model_reports(lm: LoadedModel, root: str | Path = "runs") -> Path:
    """The model's folder under an output root (:func:`workbench.io.runs.model_dir`)."""
    from ..io.runs import model_dir

    return model_dir(root, lm.spec.name)


def _top(df: pd.DataFrame, column: str, k: int, what: str, path) -> list[Head]:
    for c in ("layer", "head", column):
        if c not in df.columns:
            raise StudySpecError(f"{path} has no column {c!r} ({what}); it has {list(df.columns)}")
    top = df.nlargest(int(k), column)
    return [(int(a), int(b)) for a, b in zip(top["layer"], top["head"])]


def _table(paths: list[Path], what: str, how: str, lm: LoadedModel | None = None) -> tuple[pd.DataFrame, Path]:
    from ..io.provenance import check_model_weights

    for p in paths:
        if p.exists():
            if lm is not None and p.suffix == ".parquet":  # a CSV a user names cannot carry provenance
                check_model_weights(p, lm, f"the {what} table {p}")  # never mix in results of other weights
            return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p), p
    raise StudySpecError(f"no {what} table at {' or '.join(map(str, paths))}: {how}, or give `path` in the head set")


def resolve_head_set(hs: HeadSetSpec, lm: LoadedModel, resolved: dict[str, list[Head]], seed: int | None = None,
                     reports: str | Path = "runs") -> list[Head]:
    """The heads of one head set (random sets: for one ``seed``).

    Sources (see :mod:`.spec`): ``sinks`` = top-k ``first_token_mass`` of the census heads table;
    ``retrieval`` = top-k retrieval ``score`` (Wu et al. 2024) from ``retrieval_heads.parquet``;
    ``classic`` = top-k ``<type>_score`` (:mod:`workbench.analyzers.head_types`), read from
    ``head_types.parquet`` or computed now; ``explicit`` = the listed heads; ``random`` = k heads
    drawn uniformly (``random.Random(seed)``) from all heads not in the ``exclude`` sets.

    Tables are read from the model's folder under ``reports`` (the output root, :mod:`workbench.io.runs`) or the
    head set's ``path``, and must carry provenance of ``lm``'s weights.

    Raises:
        StudySpecError: a table is missing or lacks the column; HeadIndexError: a head is out of range.
        ProvenanceError: a table was computed on other weights (or carries no provenance).
    """
    o, spec = hs.options, lm.spec
    base = model_reports(lm, reports)
    paths = [Path(o["path"])] if "path" in o else None
    if hs.source == "sinks":
        df, p = _table(paths or [base / "heads.parquet"], "census heads", "run `workbench census`", lm)
        heads = _top(df, o.get("column", "first_token_mass"), o["k"], "first-token mass", p)
    elif hs.source == "retrieval":
        df, p = _table(paths or [base / "retrieval_heads.parquet", base / "retrieval" / "retrieval_heads.parquet"],
                       "retrieval-head", "run the retrieval-head sweep (`workbench retrieval`)", lm)
        heads = _top(df, o.get("column", "score"), o["k"], "retrieval score", p)
    elif hs.source == "classic":
        from ..analyzers.head_types import HEAD_TYPES, classic_head_scores
        from ..tasks.text import token_windows

        if o["type"] not in HEAD_TYPES:
            raise StudySpecError(f"head_sets.{hs.name}.type = {o['type']!r}: use one of {HEAD_TYPES}")
        path = paths[0] if paths else base / "head_types.parquet"
        if path.exists():
            df, _ = _table([path], "head-type", "run `workbench heads`", lm)
        else:
            df = classic_head_scores(lm, token_windows(lm.tokenizer, 256, 4), progress=False)
        heads = _top(df, f"{o['type']}_score", o["k"], f"{o['type']} score", path)
    elif hs.source == "explicit":
        if isinstance(o["heads"], str):  # the head-set grammar (workbench.core.headsets)
            from ..core.headsets import parse_head_set

            heads = parse_head_set(o["heads"], spec.n_layers, spec.n_heads, seed=0 if seed is None else seed)
        else:
            heads = [(int(a), int(b)) for a, b in o["heads"]]
    else:
        excluded = {h for name in o.get("exclude", []) for h in resolved.get(name, [])}
        pool = [(a, b) for a in range(spec.n_layers) for b in range(spec.n_heads) if (a, b) not in excluded]
        k = int(o["k"])
        if k > len(pool):
            raise StudySpecError(f"head_sets.{hs.name}: k = {k} but only {len(pool)} heads are left after exclusions")
        heads = sorted(random.Random(seed).sample(pool, k))
    for a, b in heads:
        spec.check_head(a, b)
    return heads
