"""A study's results: the per-condition table with percentile bootstrap intervals and paired deltas against the
baseline, pooled rows over random seeds (:func:`results_table`, described in :mod:`.runner`), and the files and
report written from it (:func:`write_report`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..interventions.registry import available_interventions, study_interventions
from .spec import StudySpec

ROWS = "rows.jsonl"


def bootstrap_ci(values: np.ndarray, agg, n: int, level: float, rng: np.random.Generator,
                 base: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``agg(values)`` (or of ``agg(values) - agg(base)``, paired), ``n``
    resamples of the examples (:func:`workbench.core.intervals.bootstrap_ci`)."""
    from ..core.intervals import bootstrap_ci as ci

    return ci(len(values), lambda i: agg(values[i]) - (agg(base[i]) if base is not None else 0.0), n, level, rng)


def results_table(spec: StudySpec, rows: list[dict]) -> pd.DataFrame:
    """Aggregate rows into the results table (module docstring)."""
    from .study_tasks import _mean, _ppl

    aggs = {"perplexity": _ppl}
    rng = np.random.default_rng(spec.seed)
    base = {r["task"]: np.array(r["values"]) for r in rows if r["head_set"] == "none"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["seed"] is not None:
            groups.setdefault((r["task"], r["head_set"], r["kind"]), []).append(r)
    pooled = []
    for (task, hs, kind), rs in groups.items():
        if len(rs) > 1:
            pooled.append({**rs[0], "seed": "pooled", "values": np.mean([r["values"] for r in rs], axis=0).tolist(),
                           "heads": [], "n_heads": rs[0]["n_heads"]})
    out = []
    for r in rows + pooled:
        agg = aggs.get(r["metric"], _mean)
        v = np.array(r["values"])
        lo, hi = bootstrap_ci(v, agg, spec.n_bootstrap, spec.ci, rng)
        row = {"task": r["task"], "metric": r["metric"], "head_set": r["head_set"],
               "seed": "" if r["seed"] is None else str(r["seed"]), "ablation": r["kind"], "n_heads": r["n_heads"],
               "n_examples": len(v), "value": agg(v), "ci_low": lo, "ci_high": hi}
        b = base.get(r["task"])
        if b is not None and len(b) == len(v):
            row["delta"] = agg(v) - agg(b)
            row["delta_ci_low"], row["delta_ci_high"] = (0.0, 0.0) if r["head_set"] == "none" else \
                bootstrap_ci(v, agg, spec.n_bootstrap, spec.ci, rng, base=b)
        row["heads"] = ";".join(f"{a}.{h}" for a, h in r["heads"])
        out.append(row)
    df = pd.DataFrame(out)
    order = {t.name: i for i, t in enumerate(spec.tasks)}
    return df.sort_values(["task", "head_set", "ablation", "seed"], key=lambda s: s.map(order) if s.name == "task" else s,
                          kind="stable").reset_index(drop=True)


def _markdown(df: pd.DataFrame) -> str:
    cols = ["task", "metric", "head_set", "seed", "ablation", "n_heads", "n_examples", "value", "ci_low", "ci_high",
            "delta", "delta_ci_low", "delta_ci_high"]
    cols = [c for c in cols if c in df.columns]
    from ..report.viz import format_number

    fmt = lambda x: format_number(x, 4) if isinstance(x, float) else str(x)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def write_report(spec: StudySpec, df: pd.DataFrame, out: Path, heads_used: dict, prov: dict | None = None) -> dict:
    """Write results.csv/.parquet/.json, report.md and report.html into ``out`` (with ``prov``); returns the paths."""
    from ..io.provenance import markdown_footer, write_csv, write_json, write_parquet

    if prov is not None:
        write_csv(df, out / "results.csv", prov)
        write_parquet(df, out / "results.parquet", prov)
        write_json({"study": spec.name, "results": json.loads(df.to_json(orient="records"))}, out / "results.json", prov)
    else:
        df.to_csv(out / "results.csv", index=False)
        df.to_parquet(out / "results.parquet", index=False)
    level = int(round(spec.ci * 100))
    intro = (f"Study `{spec.name}` on `{spec.model}` (spec: `{spec.path}`). Ablations: {', '.join(spec.ablations)} "
             f"(zero: z = 0; mean: z = mean head output over {spec.mean_samples} train-split windows of "
             f"{spec.mean_seq_len} tokens; uniform: uniform attention over visible keys"
             + "".join(f"; {a}: {available_interventions()[a].description}" for a in spec.ablations
                       if study_interventions()[a][0] != "head ablation")
             + f"), phase `{spec.phase}`. "
             f"Intervals: {level}% percentile bootstrap over examples ({spec.n_bootstrap} resamples); delta intervals "
             "are paired with the baseline.")
    sets = "\n".join(f"- `{k}`: {', '.join(f'{a}.{b}' for a, b in v)}" for k, v in heads_used.items())
    md = (f"# Study: {spec.name}\n\n{intro}\n\n## Head sets (layer.head)\n\n{sets}\n\n## Results\n\n"
          f"{_markdown(df.drop(columns=['heads']))}\n")
    if prov is not None:
        md += markdown_footer(prov)
    (out / "report.md").write_text(md)
    from ..report.viz import markdown_page

    markdown_page(md, out / "report.html", f"Study {spec.name}", prov)
    return {k: str(out / f) for k, f in [("results", "results.csv"), ("parquet", "results.parquet"), ("json", "results.json"),
                                          ("report", "report.md"), ("html", "report.html"), ("rows", ROWS)]}
