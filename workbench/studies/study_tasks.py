"""Study tasks: each returns one value per example, so confidence intervals can bootstrap over examples.

* ``ioi`` / ``colored_objects``: per prompt, the logit difference ``logit[answer] - logit[wrong]`` on
  the clean prompt (:mod:`workbench.tasks.ioi`); aggregate: mean.
* ``perplexity``: per window of held-out real text (``workbench.tasks.text`` split ``heldout``), the mean
  next-token negative log-likelihood in nats; aggregate: ``exp(mean NLL)`` (perplexity).
* ``needle``: per needle-in-a-haystack test, 1 if the greedy answer's ROUGE-1 recall is > 0.5
  (Wu et al. 2024); aggregate: mean (accuracy). Prompts, greedy decoding and ROUGE come from the
  retrieval-head analyzer (``workbench.tasks.needle``, ``workbench.analyzers.retrieval``); without it a clear error says so. Options:
  ``lengths`` ([512]), ``depths`` ([0, 50, 100] percent), ``n_needles`` (3), ``max_new_tokens`` (24).
  Use ``phase = "decode"`` in the spec for Wu et al.'s decoding-only masking.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.errors import WorkbenchError
from ..core.models import LoadedModel
from .spec import TaskSpec


class TaskUnavailableError(WorkbenchError):
    """A study task needs a module that is not installed in this workbench."""


@dataclass
class Task:
    """A prepared task: ``evaluate(hook_context) -> list[float]`` (one value per example)."""

    name: str
    kind: str
    metric: str
    aggregate: Callable[[np.ndarray], float]
    evaluate: Callable[[Callable[[], contextlib.AbstractContextManager]], list[float]]
    n_examples: int


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def _ppl(x: np.ndarray) -> float:
    return float(math.exp(np.mean(x)))


def _logit_diff_task(lm: LoadedModel, ts: TaskSpec) -> Task:
    from circuits.patching import logit_diff
    from workbench.tasks.ioi import make_task

    task = make_task(ts.kind, lm.tokenizer, n=int(ts.options.get("n", 32)), seed=int(ts.options.get("seed", 0)))

    @torch.no_grad()
    def evaluate(ctx) -> list[float]:
        vals = torch.empty(len(task))
        for idx in task.groups():
            clean, _, ans, wrong = task.batch(idx)
            with ctx():
                logits = lm.model(input_ids=clean, use_cache=False, logits_to_keep=1).logits
            vals[idx] = logit_diff(logits, ans, wrong)
        return vals.tolist()

    return Task(ts.name, ts.kind, "logit_difference", _mean, evaluate, len(task))


def _perplexity_task(lm: LoadedModel, ts: TaskSpec) -> Task:
    from ..tasks.text import token_windows

    n, seq_len = int(ts.options.get("n", 8)), int(ts.options.get("seq_len", 256))
    ids = token_windows(lm.tokenizer, seq_len, n, split=ts.options.get("split", "heldout"))
    batch = int(ts.options.get("batch_size", 4))

    @torch.no_grad()
    def evaluate(ctx) -> list[float]:
        out = []
        for a in range(0, n, batch):
            x = ids[a:a + batch]
            with ctx():
                logits = lm.model(input_ids=x, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
            out += nll.mean(1).tolist()
        return out

    return Task(ts.name, ts.kind, "perplexity", _ppl, evaluate, n)


def _needle_task(lm: LoadedModel, ts: TaskSpec) -> Task:
    try:
        from ..tasks.needle import build_prompt, load_needles  # the retrieval-head analyzer (issue 4)
        from ..analyzers.retrieval import ROUGE_THRESHOLD, greedy_decode, rouge1_recall
    except ImportError:
        raise TaskUnavailableError(
            "the needle task needs the needle-in-a-haystack module (workbench.tasks.needle), which is not available "
            "in this workbench: remove the needle task from the spec or install a workbench that has it") from None
    lengths = [int(x) for x in ts.options.get("lengths", [512])]
    depths = [float(x) for x in ts.options.get("depths", [0, 50, 100])]
    needles = load_needles()[: int(ts.options.get("n_needles", 3))]
    max_new = int(ts.options.get("max_new_tokens", 24))
    prompts = [(nd, build_prompt(lm.tokenizer, nd, n, d)) for n in lengths for d in depths for nd in needles]

    def evaluate(ctx) -> list[float]:
        out = []
        for nd, p in prompts:
            with ctx():
                dec = greedy_decode(lm, p.ids, max_new, record=False)
            pred = lm.tokenizer.decode(dec.tokens, skip_special_tokens=True)
            out.append(float(rouge1_recall(nd.answer, pred) > ROUGE_THRESHOLD))
        return out

    return Task(ts.name, ts.kind, "accuracy", _mean, evaluate, len(prompts))


BUILDERS = {"ioi": _logit_diff_task, "colored_objects": _logit_diff_task, "perplexity": _perplexity_task,
            "needle": _needle_task}


def build_task(lm: LoadedModel, ts: TaskSpec) -> Task:
    """Prepare a task of a spec (prompts and text are built once).

    Raises:
        TaskUnavailableError: ``needle`` without the retrieval module.
    """
    return BUILDERS[ts.kind](lm, ts)
