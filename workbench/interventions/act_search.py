"""Automated ACT head selection (Yu et al. 2024): calibrate one head at a time on a calibration split,
keep the heads that help, evaluate the chosen set on a held-out split.

ACT's published code selects heads offline by hand (a list of helpful heads per layer is pasted into the
source); we automate the same protocol:

1. **Screen** candidate heads: ACT only changes heads that have hidden sinks, so we rank heads by how
   often their ACT sink set is non-empty on the calibration prompts (:func:`workbench.analyzers.sinks.head_table`)
   and keep at most ``max_heads`` (a cost cap on 2 CPU cores; the cap and the ranking are reported).
2. **Search**: for each candidate alone, accuracy on the calibration split with
   :class:`~workbench.interventions.act.ACTCalibration` (beta, sink sets detected per input as in ACT).
   A head *helps* if its calibrated accuracy is above the uncalibrated one (ACT's rule). Heads are
   re-evaluated from their own layer on: the baseline residual stream entering every layer is cached
   (:class:`PrefixCache`), which gives the same scores as a full forward pass (tested).
3. **Evaluate** the chosen set on the held-out split: accuracy with Wilson 95% intervals for baseline and
   calibrated, the paired difference with a bootstrap 95% interval, and McNemar's exact test.

The search appends one JSON line per head to a checkpoint file and skips heads already there, so an
interrupted search resumes without losing finished heads. The file's header holds the configuration
(weights hash, task, beta, candidates, code hash): a checkpoint of another configuration is refused
(:func:`workbench.io.jsonl.open_checkpoint`); a checkpoint *folder* gets one file per configuration.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..core.hooks import decoder_layers
from ..io.jsonl import append_jsonl, open_checkpoint
from .act import DEFAULT_BETA, ACTCalibration
from ..core.models import LoadedModel
from ..tasks.cloze import ChoiceTask, choice_scores, correct


class PrefixCache:
    """Baseline residual stream entering every decoder layer for a task's prompts.

    ``scores(start_layer)`` runs only decoder layers ``start_layer..L-1`` (with whatever interventions are
    active), then the final norm and the LM head on the last position, and returns the choice
    log-probabilities (n, K); ``scores(0)`` equals :func:`workbench.tasks.cloze.choice_scores`.
    Needs a causal LM with ``model.model.norm`` and ``model.lm_head`` (Llama family).
    """

    def __init__(self, lm: LoadedModel, task: ChoiceTask, batch_size: int = 32):
        self.lm, self.task, self.batch_size = lm, task, batch_size
        self.layers = decoder_layers(lm.model)
        self.norm = lm.model.model.norm
        self.head = lm.model.lm_head
        self.batches: list[tuple[list[torch.Tensor], dict]] = []
        with torch.no_grad():
            for a in range(0, len(task), batch_size):
                hidden: list[torch.Tensor] = []
                kwargs: dict = {}

                def pre(module, args, kw):
                    hidden.append((args[0] if args else kw["hidden_states"]).detach())
                    if not kwargs:
                        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
                handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in self.layers]
                try:
                    self.lm.model.model(input_ids=task.contexts[a: a + batch_size], use_cache=False)
                finally:
                    for h in handles:
                        h.remove()
                self.batches.append((hidden, kwargs))

    @torch.no_grad()
    def scores(self, start_layer: int = 0) -> torch.Tensor:
        out = []
        for bi, (hidden, kwargs) in enumerate(self.batches):
            x = hidden[start_layer]
            for layer in self.layers[start_layer:]:
                x = layer(x, **kwargs)
                x = x[0] if isinstance(x, tuple) else x
            logits = self.head(self.norm(x[:, -1:]))[:, -1].float()
            a = bi * self.batch_size
            out.append(torch.log_softmax(logits, -1).gather(1, self.task.choices[a: a + x.shape[0]]))
        return torch.cat(out)


def screen_heads(lm: LoadedModel, task: ChoiceTask, max_heads: int = 30, progress: bool = True) -> pd.DataFrame:
    """Candidate heads for ACT: heads ranked by the share of the task's prompts in which they have hidden
    sinks (then by hidden-sink mass); rows with a zero share are dropped; at most ``max_heads``.

    Returns: DataFrame (layer, head, hidden_sink_share, hidden_sink_mass, ...) in rank order.
    """
    from ..analyzers.sinks import head_table, received_attention

    rec = received_attention(lm, task.contexts, batch_size=16, progress=progress, desc="ACT search: screening")
    df = head_table(rec)
    df = df[df.hidden_sink_share > 0].sort_values(["hidden_sink_share", "hidden_sink_mass"], ascending=False)
    return df.head(max_heads).reset_index(drop=True)


def _margin(scores: torch.Tensor, task: ChoiceTask) -> torch.Tensor:
    right = scores.gather(1, task.answer[:, None])[:, 0]
    other = scores.scatter(1, task.answer[:, None], float("-inf")).amax(1)
    return right - other


class SearchJob:
    """Calibrates one candidate head per cell ``(layer, head)`` (what an executor's workers run); ``setup``
    caches the baseline residual streams once per worker."""

    def __init__(self, task: ChoiceTask, beta: float, key: str):
        self.task, self.beta, self.key = task, beta, key

    def __getstate__(self) -> dict:  # ship the task, never a worker's cache
        return {"task": self.task, "beta": self.beta, "key": self.key}

    def setup(self, lm: LoadedModel) -> None:
        self.cache = PrefixCache(lm, self.task)
        base = self.cache.scores(0)
        self.base_acc = float(correct(base, self.task).float().mean())
        self.base_margin = _margin(base, self.task)

    def run(self, lm: LoadedModel, cell: tuple[int, int]) -> dict:
        layer, h = cell
        with ACTCalibration([(layer, h)], beta=self.beta).applied():
            s = self.cache.scores(layer)
        return {"key": self.key, "layer": layer, "head": h, "accuracy": float(correct(s, self.task).float().mean()),
                "baseline_accuracy": self.base_acc,
                "margin_delta": float((_margin(s, self.task) - self.base_margin).mean())}


def search_heads(lm: LoadedModel, task: ChoiceTask, candidates: list[tuple[int, int]], beta: float = DEFAULT_BETA,
                 checkpoint: str | Path | None = None, progress: bool = True, executor=None) -> pd.DataFrame:
    """Calibrate each candidate head alone on ``task`` (the calibration split).

    ``executor`` (:mod:`workbench.core.executor`; default the local, serial one) runs the heads; the checkpoint
    is written here, by the driver, and the table is in ``candidates`` order whichever executor ran them.

    Returns:
        DataFrame, one row per head: ``layer``, ``head``, ``accuracy``, ``baseline_accuracy``, ``delta``
        (accuracy points, 0..1 scale), ``margin_delta`` (mean change of the log-prob margin of the right
        answer over the best wrong one), ``helps`` (delta > 0).
    """
    from ..core.executor import LocalExecutor

    done: dict[tuple[int, int], dict] = {}
    key = hashlib.sha1(json.dumps([task.name, task.split, task.contexts.tolist(), task.choices.tolist(), beta])
                       .encode()).hexdigest()[:16]
    path = Path(checkpoint) if checkpoint else None
    if path is not None:
        from ..io.provenance import code_sha256, collect, config_hash, weights_sha256

        config = {"analysis": "act-search", "model": lm.spec.name, "weights_sha256": weights_sha256(lm), "task": key,
                  "beta": beta, "candidates": [list(c) for c in candidates],
                  "code_sha256": code_sha256(["workbench.interventions.act_search", "workbench.interventions.act", "workbench.tasks.cloze",
                                              "workbench.core.attention"])}
        if path.suffix != ".jsonl":  # a folder: one checkpoint file per configuration
            path = path / f"search-{config_hash(config)[:16]}.jsonl"
        done = {(r["layer"], r["head"]): r for r in open_checkpoint(path, config, collect(lm, config))
                if r.get("key") == key}
    todo = [c for c in candidates if c not in done]
    with tqdm(total=len(candidates), initial=len(candidates) - len(todo), desc="ACT search: heads",
              disable=not progress) as bar:
        for _, rec in (executor or LocalExecutor()).map(SearchJob(task, beta, key), todo, lm):
            done[(rec["layer"], rec["head"])] = rec
            if path is not None:
                append_jsonl(path, rec)
            bar.update(1)
    df = pd.DataFrame([done[c] for c in candidates]).drop(columns=["key"])
    df["delta"] = df["accuracy"] - df["baseline_accuracy"]
    df["helps"] = df["delta"] > 0
    return df


def compare(base_correct: torch.Tensor, new_correct: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two per-question correctness vectors (n,) bool.

    Returns: dict with baseline/calibrated accuracy and Wilson 95% CIs, ``difference`` (calibrated - baseline),
    its paired bootstrap 95% CI, and McNemar's exact two-sided p-value on the discordant questions.
    """
    from ..core.intervals import bootstrap_ci, mcnemar, wilson

    b = base_correct.numpy().astype(float)
    c = new_correct.numpy().astype(float)
    n = len(b)
    test = mcnemar(c.astype(bool), b.astype(bool))
    gained, lost, p = test["a_only"], test["b_only"], test["p_value"]
    return {"n": n, "baseline_accuracy": b.mean(), "baseline_ci95": wilson(int(b.sum()), n),
            "calibrated_accuracy": c.mean(), "calibrated_ci95": wilson(int(c.sum()), n),
            "difference": c.mean() - b.mean(),
            "difference_ci95": bootstrap_ci(n, lambda i: c[i].mean() - b[i].mean(), n_boot, 0.95, seed),
            "gained": gained, "lost": lost, "mcnemar_p": float(p)}


def evaluate_heads(lm: LoadedModel, task: ChoiceTask, heads: list[tuple[int, int]], beta: float = DEFAULT_BETA,
                   batch_size: int = 32) -> dict:
    """Accuracy on ``task`` without and with ACT on ``heads`` (see :func:`compare`)."""
    base = correct(choice_scores(lm, task, batch_size), task)
    if heads:
        with ACTCalibration(heads, beta=beta).applied():
            new = correct(choice_scores(lm, task, batch_size), task)
    else:
        new = base.clone()
    return compare(base, new)


def act_search(lm: LoadedModel, task_name: str = "pydoc-cloze", n_cal: int = 64, n_eval: int = 200,
               beta: float = DEFAULT_BETA, max_heads: int = 30, checkpoint: str | Path | None = None,
               seed: int = 0, context_tokens: int = 32, progress: bool = True, executor=None) -> dict:
    """The whole protocol (module docstring): screen, search on ``n_cal`` train questions, evaluate on
    ``n_eval`` held-out questions. ``executor`` runs the per-head search (:func:`search_heads`).

    Returns: dict with ``task``, ``beta``, ``candidates`` (screened heads), ``search`` (per-head rows),
    ``heads`` (chosen "L.H" list), ``calibration`` (search-split comparison of the chosen set) and
    ``evaluation`` (held-out comparison).
    Raises:
        UnknownTaskError: unknown task.
    """
    from ..tasks.cloze import build_task

    cal = build_task(task_name, lm.tokenizer, "train", n_cal, seed=seed, context_tokens=context_tokens)
    ev = build_task(task_name, lm.tokenizer, "heldout", n_eval, seed=seed, context_tokens=context_tokens)
    screened = screen_heads(lm, cal, max_heads, progress)
    cands = [(int(a), int(b)) for a, b in zip(screened["layer"], screened["head"])]
    table = search_heads(lm, cal, cands, beta, checkpoint, progress, executor)
    chosen = [(int(r.layer), int(r.head)) for r in table.itertuples() if r.helps]
    return {
        "task": task_name, "beta": beta, "n_cal": n_cal, "n_eval": n_eval, "context_tokens": context_tokens,
        "max_heads": max_heads, "rule": "keep a head if calibrating it alone raises calibration accuracy",
        "candidates": screened.to_dict(orient="records"),
        "search": table.to_dict(orient="records"),
        "heads": [f"{a}.{b}" for a, b in chosen],
        "evaluation": evaluate_heads(lm, ev, chosen, beta),
    }


def calibrate(lm: LoadedModel, task: str = "pydoc-cloze", beta: float = DEFAULT_BETA,
              heads: Sequence[tuple[int, int]] | None = None, n_eval: int = 200, context_tokens: int = 32,
              search: bool = False, n_cal: int = 64, max_heads: int = 30, checkpoint: str | Path | None = None,
              executor=None, out: str | Path | None = "runs", config: dict | None = None) -> dict:
    """ACT on chosen ``heads``, or (``search=True``) on the heads :func:`act_search` selects: held-out accuracy
    without and with calibration (:func:`evaluate_heads`: Wilson intervals, paired bootstrap interval of the
    difference, McNemar's test), the run behind ``workbench calibrate``.

    Writes, unless ``out`` is None, ``out/<model>/act/calibrate.json`` (or ``search.json``) with provenance
    (``config`` recorded in it, by default the arguments); the search's resumable checkpoint is ``checkpoint``,
    by default in that folder.

    Returns:
        ``task``, ``beta``, ``n_eval``, ``context_tokens``, ``heads`` ("L.H" list), ``evaluation``, ``model``
        (with ``search``: also the screened ``candidates`` and the per-head ``search`` rows) and, when written,
        ``file``.

    Raises:
        UnknownTaskError: unknown task. WorkbenchError: both or neither of ``heads`` and ``search``, or
            ``beta`` outside [0, 1].
    """
    from ..io.provenance import collect, write_json
    from ..io.runs import run_dir
    from ..tasks.cloze import build_task

    check_calibration(task, heads is not None, search, beta)
    d = None if out is None else run_dir(out, lm.spec.name, "act")
    if search:
        res = act_search(lm, task, n_cal, n_eval, beta, max_heads, checkpoint or d, context_tokens=context_tokens,
                         executor=executor)
    else:
        ev = build_task(task, lm.tokenizer, "heldout", n_eval, context_tokens=context_tokens)
        chosen = [(int(a), int(b)) for a, b in heads]
        res = {"task": task, "beta": beta, "n_eval": n_eval, "context_tokens": context_tokens,
               "heads": [f"{a}.{b}" for a, b in chosen], "evaluation": evaluate_heads(lm, ev, chosen, beta)}
    res["model"] = lm.spec.name
    if d is not None:
        cfg = config if config is not None else {
            "command": "calibrate", "model": lm.spec.name, "task": task, "beta": beta,
            "heads": None if heads is None else ",".join(f"{a}.{b}" for a, b in heads), "search": search,
            "n_cal": n_cal, "n_eval": n_eval, "max_heads": max_heads, "context_tokens": context_tokens}
        res["file"] = str(write_json(res, d / ("search.json" if search else "calibrate.json"), collect(lm, cfg)))
    return res


def check_calibration(task: str, heads_given: bool, search: bool, beta: float) -> None:
    """The arguments :func:`calibrate` refuses, checked before any model loads.

    Raises:
        UnknownTaskError: unknown task. WorkbenchError: both or neither of heads and search, or ``beta``
            outside [0, 1].
    """
    from ..tasks.cloze import TASKS, UnknownTaskError

    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if heads_given == search:
        raise WorkbenchError("give exactly one of --heads LAYER.HEAD,... or --search")
    if not 0.0 <= beta <= 1.0:
        raise WorkbenchError(f"--beta {beta} must lie in [0, 1] (ACT uses 0.4)")
