"""The retrieval-head sweep: context lengths x depths x needles, resumable, and its score table.

Each finished test is appended as one JSON line to ``<out>/results.jsonl`` (flushed and fsynced),
so a sweep killed midway loses at most the test in flight; ``resume=True`` reads the file,
skips the tests already there and runs the rest. A truncated last line (killed while writing) is
ignored and that test is run again.

Outputs (:func:`summarize`): a per-head table (layer, head, score, retrieval), the retrieval heads
(score > 0.1, Wu et al. 2024), their fraction, and plotly figures (layer x head heatmap of the
score, score distribution, length x depth accuracy heatmap).

The result and its summary live in :mod:`.retrieval_summary`, the folder's files in :mod:`.retrieval_files`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..io.jsonl import append_jsonl, open_checkpoint, read_jsonl
from ..tasks.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS, Needle, build_prompt, load_needles
from ..analyzers.retrieval import MAX_NEW_TOKENS, RETRIEVAL_THRESHOLD, ROUGE_THRESHOLD, greedy_decode, retrieval_hits, rouge1_recall
from .retrieval_files import RESULTS_FILE, accuracy_heatmap, default_out, figures, load_scores, save
from .retrieval_summary import SweepResult, summarize

__all__ = ["DEFAULT_DEPTHS", "DEFAULT_LENGTHS", "RESULTS_FILE", "RETRIEVAL_THRESHOLD", "SweepJob", "SweepResult",
           "accuracy_heatmap", "default_out", "figures", "load_scores", "prompt_ids", "read_results", "run_sweep",
           "run_test", "save", "summarize", "sweep_config", "test_key"]


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


def prompt_ids(lm, needle: Needle, length: int, depth: float, haystack: str | None = None) -> torch.Tensor:
    """(1, N) prompt ids of one test (helper for benchmarks)."""
    return build_prompt(lm.tokenizer, needle, length, depth, haystack).ids
