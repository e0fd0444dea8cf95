"""Running a study: conditions, resumable rows, bootstrap confidence intervals, report.

A **condition** is (task, head set, seed for random sets, ablation kind), plus one unablated
baseline per task. Each finished condition is appended as one JSON line (its per-example values)
to ``<out>/<name>/rows.jsonl``, flushed and fsynced; ``resume=True`` skips the conditions already
there (a truncated last line from a kill is ignored and that condition re-runs), so an interrupted
study loses at most the condition in flight. ``spec.json`` records the spec; resuming with a
different spec is refused.

**Results** (``results.csv`` / ``results.parquet``), one row per condition: the aggregate
(mean logit difference, perplexity = exp(mean NLL), accuracy) with a percentile bootstrap
confidence interval over examples (``n_bootstrap`` resamples, level ``ci``; Efron & Tibshirani
1993), and ``delta`` = aggregate(condition) - aggregate(baseline) with a *paired* bootstrap
interval (the same resampled examples for both, since every condition sees the same examples).
Random head sets with several seeds also get a pooled row (``seed = "pooled"``): per example, the
mean over seeds. ``report.md`` and ``report.html`` show the table. The table and the report are made in
:mod:`.study_results`.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..io.jsonl import append_jsonl, open_checkpoint, read_jsonl
from ..interventions import HeadAblation
from ..interventions.registry import available_interventions, study_interventions
from ..core.models import LoadedModel
from .heads import resolve_head_set
from .spec import StudySpec
from .study_results import ROWS, bootstrap_ci, results_table, write_report
from .study_tasks import build_task

__all__ = ["ROWS", "Condition", "StudyJob", "StudyResult", "StudyStateError", "bootstrap_ci", "build_condition",
           "plan_conditions", "read_rows", "results_table", "run_study", "study_config", "write_report"]


class StudyStateError(WorkbenchError):
    """The study folder holds results of another spec, or results exist and neither resume nor overwrite was asked."""


@dataclass
class Condition:
    key: str
    task: str
    head_set: str
    seed: int | None
    kind: str
    heads: list[tuple[int, int]]


@dataclass
class StudyJob:
    """Runs one condition per cell (what an executor's workers run); ``setup`` builds the tasks once."""

    spec: StudySpec
    task_names: tuple
    means: dict

    def setup(self, lm: LoadedModel) -> None:
        self.tasks = {t.name: build_task(lm, t) for t in self.spec.tasks if t.name in self.task_names}

    def run(self, lm: LoadedModel, c: Condition) -> dict:
        if c.kind == "none":
            ctx = contextlib.nullcontext
        else:
            ctx = build_condition(lm, c.kind, c.heads, self.spec.phase, self.means).applied
        task = self.tasks[c.task]
        values = task.evaluate(ctx)
        return {"key": c.key, "task": c.task, "metric": task.metric, "head_set": c.head_set, "seed": c.seed,
                "kind": c.kind, "heads": [list(h) for h in c.heads], "n_heads": len(c.heads), "values": values}


def build_condition(lm: LoadedModel, name: str, heads: list[tuple[int, int]], phase: str, means: dict | None = None):
    """The intervention of one condition, from the registry (:func:`~workbench.interventions.registry.study_interventions`):
    its defaults, the parameters the study name fixes, the study's ``phase`` and, for the mean ablation, the means
    fitted once for the study. Raises HeadIndexError for heads outside ``lm``."""
    entry, fixed = study_interventions()[name]
    spec = available_interventions()[entry]
    kw = {**spec.defaults(), **fixed}
    if "phase" in kw:
        kw["phase"] = phase
    if entry == "head ablation" and kw["kind"] == "mean":
        kw["means"] = means
    return spec.build(lm, list(heads), **kw).validate(lm.spec)


def read_rows(path: Path) -> list[dict]:
    """Finished condition rows of a study folder (a truncated last line is skipped)."""
    return read_jsonl(path / ROWS)


def plan_conditions(spec: StudySpec, lm: LoadedModel, reports: str | Path = "reports") -> list[Condition]:
    """All conditions of a study in run order (baselines first)."""
    resolved: dict[str, list] = {}
    sets: list[tuple[str, int | None, list]] = []
    for hs in spec.head_sets:  # non-random first, so random sets can exclude them
        if hs.source != "random":
            resolved[hs.name] = resolve_head_set(hs, lm, resolved, reports=reports)
            sets.append((hs.name, None, resolved[hs.name]))
    for hs in spec.head_sets:
        if hs.source == "random":
            for seed in hs.options.get("seeds", [spec.seed]):
                sets.append((hs.name, int(seed), resolve_head_set(hs, lm, resolved, seed=int(seed), reports=reports)))
    conds = []
    for t in spec.tasks:
        conds.append(Condition(f"{t.name}|baseline", t.name, "none", None, "none", []))
        for name, seed, heads in sets:
            for kind in spec.ablations:
                tag = name if seed is None else f"{name}/s{seed}"
                conds.append(Condition(f"{t.name}|{tag}|{kind}", t.name, name, seed, kind, heads))
    return conds


@dataclass
class StudyResult:
    name: str
    out: Path
    table: pd.DataFrame
    files: dict
    n_run: int
    n_resumed: int

    def to_json(self) -> dict:
        return {"study": self.name, "out": str(self.out), "files": self.files, "conditions_run": self.n_run,
                "conditions_resumed": self.n_resumed, "results": json.loads(self.table.to_json(orient="records"))}


def study_config(spec: StudySpec, lm: LoadedModel, conds: list[Condition]) -> dict:
    """A study's full configuration (checkpoint header and provenance): the spec, model weights, the resolved
    head sets of every condition and a hash of the code that evaluates them."""
    from ..io.provenance import code_sha256, weights_sha256

    return {"analysis": "study", "spec": spec.raw, "model": lm.spec.name, "weights_sha256": weights_sha256(lm),
            "conditions": {c.key: [list(h) for h in c.heads] for c in conds},
            "code_sha256": code_sha256(["workbench.studies.runner", "workbench.studies.study_tasks", "workbench.studies.heads",
                                        "workbench.studies.spec", "workbench.interventions.ablation",
                                        "workbench.interventions.registry",
                                        "workbench.core.attention", "workbench.tasks.text"])}


def run_study(spec: StudySpec, lm: LoadedModel | None = None, out_root: str | Path = "runs",
              resume: bool = False, overwrite: bool = False, reports: str | Path | None = None,
              progress: bool = True, max_conditions: int | None = None, executor=None) -> StudyResult:
    """Run (or resume) a study and write its results and report under ``out_root/<model>/studies/<name>/``.

    Args:
        spec: a parsed spec (:func:`~.spec.load_spec`).
        lm: the model (default ``load_model(spec.model)``).
        out_root: the output root (:mod:`workbench.io.runs`).
        resume: continue from ``rows.jsonl`` (only if its configuration header matches); overwrite: delete
            earlier rows first.
        reports: root of the analyzers' tables (census, retrieval, head types; default ``out_root``); they must
            carry provenance of ``lm``'s weights.
        max_conditions: stop after running this many new conditions (for testing interruption).
        executor: where conditions run (:mod:`workbench.core.executor`; default the local, serial one);
            rows are written here, by the driver, as conditions finish, and aggregated in plan order.
    Raises:
        StudyStateError: earlier rows exist without resume/overwrite.
        CheckpointMismatchError: the rows were made with another configuration (names the fields).
        ProvenanceError: an analyzer table was computed on other weights.
        StudySpecError, TaskUnavailableError: bad spec or a task that cannot run here.
    """
    from ..core.models import load_model
    from ..tasks.text import token_windows

    from ..io.provenance import collect, write_json
    from ..io.runs import run_dir

    lm = lm or load_model(spec.model)
    out = run_dir(out_root, lm.spec.name, "studies") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for f in (ROWS, "spec.json"):
            (out / f).unlink(missing_ok=True)
    done = read_rows(out)
    if done and not resume:
        raise StudyStateError(f"{out} already has {len(done)} finished conditions: pass --resume to continue "
                              "or --overwrite to start again")
    if not done:
        (out / ROWS).unlink(missing_ok=True)  # a header without rows: start afresh with this configuration
    conds = plan_conditions(spec, lm, out_root if reports is None else reports)
    config = study_config(spec, lm, conds)
    prov = collect(lm, config, spec.seed)
    done = open_checkpoint(out / ROWS, config, prov)  # refuses rows of another spec, model, head set or code
    write_json({"digest": spec.digest, "model": lm.spec.name, "spec": spec.raw}, out / "spec.json", prov)
    finished = {r["key"] for r in done}
    todo = [c for c in conds if c.key not in finished]
    means = {}
    if "mean" in spec.ablations and any(c.kind == "mean" for c in todo):
        heads = sorted({h for c in todo if c.kind == "mean" for h in c.heads})
        means = HeadAblation.fit_means(lm, heads, token_windows(lm.tokenizer, spec.mean_seq_len, spec.mean_samples,
                                                                split="train"))
    from ..core.executor import LocalExecutor

    todo = todo if max_conditions is None else todo[:max_conditions]
    job = StudyJob(spec, tuple(sorted({c.task for c in todo})), means)
    n_run = 0
    with tqdm(total=len(todo), desc=f"study {spec.name}", disable=not progress) as bar:
        for _, row in (executor or LocalExecutor()).map(job, todo, lm):
            append_jsonl(out / ROWS, row)
            n_run += 1
            bar.update(1)
    order = {c.key: i for i, c in enumerate(conds)}
    rows = sorted((r for r in read_rows(out) if r["key"] in order), key=lambda r: order[r["key"]])
    df = results_table(spec, rows)
    heads_used = {}
    for c in conds:
        if c.head_set != "none":
            heads_used[c.head_set if c.seed is None else f"{c.head_set}/s{c.seed}"] = c.heads
    files = write_report(spec, df, out, heads_used, prov)
    return StudyResult(spec.name, out, df, files, n_run, len(finished))
