"""The retrieval-head sweep: context lengths x depths x needles, resumable, and its score table.

Each finished test is appended as one JSON line to ``<out>/results.jsonl`` (flushed and fsynced),
so a sweep killed midway loses at most the test in flight; ``resume=True`` reads the file,
skips the tests already there and runs the rest. A truncated last line (killed while writing) is
ignored and that test is run again.

Outputs (:func:`summarize`): a per-head table (layer, head, score, retrieval), the retrieval heads
(score > 0.1, Wu et al. 2024), their fraction, and plotly figures (layer x head heatmap of the
score, score distribution, length x depth accuracy heatmap).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..io.jsonl import append_jsonl, open_checkpoint, read_jsonl
from ..tasks.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, Needle, build_prompt, load_needles
from ..analyzers.retrieval import MAX_NEW_TOKENS, RETRIEVAL_THRESHOLD, ROUGE_THRESHOLD, greedy_decode, retrieval_hits, rouge1_recall

RESULTS_FILE = "results.jsonl"


def test_key(length: int, depth: float, needle: str) -> str:
    """Identifier of one test in the results file."""
    return f"L{int(length)}-D{float(depth):g}-{needle}"


def run_test(lm, needle: Needle, length: int, depth: float, haystack: str | None = None,
             max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """One needle-in-a-haystack test with retrieval scores of every head.

    Returns a JSON-ready record: ``key``, prompt metadata (:meth:`NeedlePrompt.meta`), ``prediction``,
    ``rouge1_recall``, ``correct`` (recall > 0.5), ``n_new_tokens``, ``stop`` and ``scores``
    (L x H nested list, retrieval score of each head in this test).

    Raises:
        NeedleNotFoundError: the answer span cannot be located.
    """
    p = build_prompt(lm.tokenizer, needle, length, depth, haystack)
    lm.spec.check_length(p.ids.shape[1])
    dec = greedy_decode(lm, p.ids, max_new_tokens)
    pred = lm.tokenizer.decode(dec.tokens, skip_special_tokens=True)
    r = rouge1_recall(needle.answer, pred)
    scores = retrieval_hits(dec.top_keys, dec.tokens, p.ids[0], p.answer_span)
    return {"key": test_key(length, depth, needle.name), "model": lm.spec.name, **p.meta(), "prediction": pred,
            "rouge1_recall": round(r, 4), "correct": r > ROUGE_THRESHOLD, "n_new_tokens": len(dec.tokens),
            "stop": dec.stop, "scores": [[round(float(x), 6) for x in row] for row in scores]}


@dataclass(frozen=True)
class SweepJob:
    """One sweep test per cell ``(length, depth, needle)`` (what an executor's workers run)."""

    haystack: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS

    def run(self, lm, cell: tuple) -> dict:
        length, depth, needle = cell
        return run_test(lm, needle, length, depth, self.haystack, self.max_new_tokens)


def sweep_config(lm, lengths: Sequence[int], depths: Sequence[float], needles: Sequence[Needle],
                 haystack: str | None, max_new_tokens: int) -> dict:
    """The sweep's full configuration (checkpoint header and provenance): model and weights hash, grid,
    needles, haystack hash, decoding length and a hash of the code that computes a test."""
    import dataclasses
    import hashlib

    from ..io.provenance import code_sha256, weights_sha256

    return {"analysis": "retrieval", "model": lm.spec.name, "weights_sha256": weights_sha256(lm),
            "lengths": [int(n) for n in lengths], "depths": [float(d) for d in depths],
            "needles": [dataclasses.asdict(n) for n in needles],
            "haystack_sha256": None if haystack is None else hashlib.sha256(haystack.encode()).hexdigest(),
            "max_new_tokens": int(max_new_tokens),
            "code_sha256": code_sha256(["workbench.studies.retrieval_sweep", "workbench.tasks.needle",
                                        "workbench.analyzers.retrieval", "workbench.core.attention", "workbench.core.tracer",
                                        "workbench.core.stats"])}


def read_results(out_dir: str | Path) -> list[dict]:
    """Finished test records of a sweep directory (a truncated last line is skipped)."""
    return read_jsonl(Path(out_dir) / RESULTS_FILE)



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


def run_sweep(lm, lengths: Sequence[int] = DEFAULT_LENGTHS, depths: Sequence[float] = DEFAULT_DEPTHS,
              needles: Iterable[Needle] | None = None, out_dir: str | Path = "retrieval", resume: bool = False,
              haystack: str | None = None, progress: bool = True, max_new_tokens: int = MAX_NEW_TOKENS,
              on_test: Callable[[dict], None] | None = None, executor=None) -> SweepResult:
    """Run the lengths x depths x needles sweep, appending each finished test to ``out_dir/results.jsonl``.

    Args:
        lm: LoadedModel.
        lengths: prompt lengths in tokens (each at most the context window).
        depths: needle depths in percent of the haystack.
        needles: the needles (default :data:`~workbench.tasks.needle.NEEDLES`).
        out_dir: directory for ``results.jsonl`` and the summary files.
        resume: keep finished tests of an earlier run of this directory and run only the others;
            without it an existing results file is an error (so results are never silently mixed).
        on_test: called with each new record after it is written (progress hooks, tests).
        executor: where the tests run (:mod:`workbench.core.executor`; default the local, serial one).
            Records are written here, by the driver, in the order tests finish.
    Returns:
        :func:`summarize` over every finished test of the grid, in grid order (so the summary
        does not depend on the executor or the completion order).
    Raises:
        ContextTooLongError: a length exceeds the context window.
        WorkbenchError: results exist and ``resume`` is False, or they belong to another model.
    """
    needles = tuple(needles) if needles is not None else load_needles()
    for n in lengths:
        lm.spec.check_length(int(n))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    done = read_results(out)
    if done and not resume:
        raise WorkbenchError(f"{path} already holds {len(done)} finished tests: pass --resume to continue that "
                             "sweep, or choose another --out directory")
    if not done:
        path.unlink(missing_ok=True)  # a header without records: start afresh with this configuration
    from ..io.provenance import collect

    config = sweep_config(lm, lengths, depths, needles, haystack, max_new_tokens)
    done = open_checkpoint(path, config, collect(lm, config))  # refuses another model, grid, setting or code
    finished = {r["key"] for r in done}
    plan = [(int(n), float(d), nd) for n in lengths for d in depths for nd in needles]
    todo = [t for t in plan if test_key(t[0], t[1], t[2].name) not in finished]
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="retrieval sweep", disable=not progress)
    n_ok = sum(r["correct"] for r in done if r["key"] in {test_key(a, b, c.name) for a, b, c in plan})
    from ..core.executor import LocalExecutor

    for _, rec in (executor or LocalExecutor()).map(SweepJob(haystack, max_new_tokens), todo, lm):
        append_jsonl(path, rec)
        n_ok += rec["correct"]
        bar.update(1)
        bar.set_postfix(correct=n_ok)
        if on_test is not None:
            on_test(rec)
    bar.close()
    order = {test_key(a, b, c.name): i for i, (a, b, c) in enumerate(plan)}
    records = sorted((r for r in read_results(out) if r["key"] in order), key=lambda r: order[r["key"]])
    return summarize(records, lm.spec.n_layers, lm.spec.n_heads)


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


def figures(res: SweepResult) -> list:
    """Plotly figures: layer x head score heatmap, score distribution, length x depth accuracy heatmap."""
    import plotly.graph_objects as go

    from ..report.viz import layer_head_heatmap

    figs = [("retrieval score per head", layer_head_heatmap(res.heads, "score", title="retrieval score (layer x head)"))]
    h = go.Figure(go.Histogram(x=res.heads.score, nbinsx=40))
    h.add_vline(x=res.summary["threshold"], line_dash="dash", annotation_text="retrieval head threshold")
    h.update_layout(title="distribution of retrieval scores", xaxis_title="retrieval score", yaxis_title="heads",
                    yaxis_type="log")
    figs.append(("score distribution", h))
    if len(res.tests):
        figs.append(("needle accuracy", accuracy_heatmap(res.tests, "needle-in-a-haystack accuracy (ROUGE-1 recall > 0.5)")))
    return figs


def accuracy_heatmap(tests: pd.DataFrame, title: str):
    """Length x depth heatmap of the share of correct tests (over needles)."""
    import plotly.graph_objects as go

    g = tests.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=g.values, x=[str(c) for c in g.columns], y=[f"{d:g}%" for d in g.index],
                               colorscale="RdYlGn", zmin=0, zmax=1,
                               hovertemplate="length %{x}<br>depth %{y}<br>accuracy %{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth")
    return fig


def _csv(df: pd.DataFrame, path: Path, prov: dict | None, write_csv) -> None:
    if prov is not None:
        write_csv(df, path, prov)
    else:
        df.to_csv(path, index=False)


def save(res: SweepResult, out_dir: str | Path, model: str, prov: dict | None = None) -> dict:
    """Write retrieval_heads.parquet/.csv/.json, tests.csv, summary.json and retrieval.html into ``out_dir``.

    ``prov`` (default: the provenance in the header of ``out_dir/results.jsonl``, or none) goes into the
    Parquet metadata, the JSON files and the page footer.
    """
    from ..io.jsonl import read_header
    from ..io.provenance import write_csv, write_json, write_parquet
    from ..report.viz import write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if prov is None:
        prov = (read_header(out / RESULTS_FILE) or {}).get("provenance")
    if prov is not None:
        write_parquet(res.heads, out / "retrieval_heads.parquet", prov)
    else:
        res.heads.to_parquet(out / "retrieval_heads.parquet", index=False)
    _csv(res.heads, out / "retrieval_heads.csv", prov, write_csv)
    write_json({"model": model, **res.to_json()}, out / "retrieval_heads.json", prov)
    if len(res.tests):
        _csv(res.tests, out / "tests.csv", prov, write_csv)
    write_json({"model": model, **res.summary}, out / "summary.json", prov)
    s = res.summary
    write_html(figures(res), out / "retrieval.html", f"Retrieval heads: {model}",
               f"{s['n_tests']} needle tests ({s['n_correct']} correct) over lengths {s['lengths']}, depths "
               f"{s['depths']}, needles {s['needles']}; {s['n_retrieval_heads']} retrieval heads (score > "
               f"{s['threshold']}) of {s['n_heads']}. Retrieval score as in Wu et al. 2024.", provenance=prov)
    res.files = {k: str(out / v) for k, v in [("parquet", "retrieval_heads.parquet"), ("json", "retrieval_heads.json"),
                                              ("csv", "retrieval_heads.csv"), ("html", "retrieval.html"),
                                              ("results", RESULTS_FILE)]}
    return res.files


def load_scores(path: str | Path, lm=None) -> pd.DataFrame:
    """Per-head scores saved by :func:`save` (a directory, or its .parquet/.json file).

    With ``lm`` the file's provenance must name ``lm``'s weights (:func:`workbench.io.provenance.check_model_weights`);
    the provenance is then in ``df.attrs["provenance"]``.

    Raises:
        WorkbenchError: nothing saved there. ProvenanceError: the scores were computed on other weights.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "retrieval_heads.parquet"
    if not p.exists():
        raise WorkbenchError(f"no saved retrieval scores at {p}: run `workbench retrieval --model M` first "
                             "or pass --scores PATH")
    if lm is not None:
        from ..io.provenance import check_model_weights

        prov = check_model_weights(p, lm, f"the retrieval scores {p}")
        df = load_scores(p)
        df.attrs["provenance"] = prov
        return df
    if p.suffix == ".json":
        return pd.DataFrame(json.loads(p.read_text())["heads"]).assign(
            retrieval=lambda d: d.score > RETRIEVAL_THRESHOLD)
    return pd.read_parquet(p)


def default_out(model: str, root: str | Path | None = None) -> Path:
    """Default sweep directory: ``<root>/<model-slug>/retrieval`` (root default ``runs/``, :mod:`workbench.io.runs`)."""
    from ..io.runs import run_dir

    return run_dir(root, model, "retrieval")


def prompt_ids(lm, needle: Needle, length: int, depth: float, haystack: str | None = None) -> torch.Tensor:
    """(1, N) prompt ids of one test (helper for benchmarks)."""
    return build_prompt(lm.tokenizer, needle, length, depth, haystack).ids
