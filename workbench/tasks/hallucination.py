"""Object hallucination on digit images: POPE-style yes/no questions and CHAIR-style listing.

* **POPE** (Li et al. 2023, "Evaluating object hallucination in large vision-language models"):
  "Is there a <d> in the image?" for one present digit (positive) and one absent digit (negative)
  per held-out composite. Negatives: ``random`` (uniform over absent digits), ``popular`` (the
  absent digit most frequent in the training composites), ``adversarial`` (the absent digit that
  co-occurs most with the present ones in the training composites). The answer is the greedy
  first token (``Yes`` counts as yes, anything else as no). Metrics: accuracy, precision, recall,
  F1 (yes = positive class) and yes-ratio.
* **CHAIR** (Rohrbach et al. 2018, "Object hallucination in image captioning"), with digits as
  objects: the greedy answer to "What digits are in the image?"; CHAIR_S = share of answers that
  mention a digit not in the image, CHAIR_I = share of mentioned digits not in the image, length =
  digits mentioned per answer, recall = share of present digits mentioned.

Confidence intervals: 95% percentile bootstrap over images (1000 resamples, fixed seed); items
of one image are resampled together. Methods: ``none``, ``vhr`` (:mod:`workbench.interventions.vhr`),
``var`` (:mod:`workbench.interventions.var`).

Answers are appended item by item to a JSON-lines cache per configuration (:func:`cache_file`), so an
interrupted run resumes where it stopped and a changed parameter (p, rho, tau, alpha, max_new_tokens), model
or code version misses the cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..demo import digits as D
from ..io.jsonl import append_jsonl, read_jsonl
from ..core.models import LoadedModel
from .hallucination_answers import (METHODS, SPLITS, UnknownMethodError, _sink_dims, answer, check_method,  # noqa: F401
                                   intervention, is_yes, mentioned_digits, method_params)


def heldout_images(n_images: int, seed: int = 1234) -> list[D.Composite]:
    """Held-out composites (digit images from the ``test`` split), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [D.make_composite(rng, "test") for _ in range(n_images)]


def pope_items(images: Sequence[D.Composite], seed: int = 0) -> pd.DataFrame:
    """POPE questions: DataFrame (image, split, digit, label) with one positive and one negative per image and split."""
    freq, co = D.training_stats()
    rng = np.random.default_rng(seed)
    rows = []
    for i, comp in enumerate(images):
        present = comp.digits
        absent = [d for d in range(10) if d not in present]
        pos = int(rng.choice(present))
        neg = {"random": int(rng.choice(absent)),
               "popular": max(absent, key=lambda d: freq[d]),
               "adversarial": max(absent, key=lambda d: (co[present, d].sum(), freq[d]))}
        for split in SPLITS:
            rows.append((i, split, pos, True))
            rows.append((i, split, neg[split], False))
    return pd.DataFrame(rows, columns=["image", "split", "digit", "label"])


# --- resumable runs ----------------------------------------------------------------------------------


CACHE_CODE = ("workbench.tasks.hallucination", "workbench.tasks.hallucination_answers", "workbench.demo.digits",
              "workbench.demo.digits_vlm", "workbench.core.vlm", "workbench.analyzers.vision", "workbench.analyzers.vhd",
              "workbench.interventions.var", "workbench.interventions.vhr", "workbench.core.attention")


def cache_config(lm: LoadedModel, task: str, method: str, params: dict | None, images: Sequence[D.Composite],
                 max_new_tokens: int) -> dict:
    """Everything an answer depends on: model weights, task, method and its parameters (p, summ, rho, tau,
    alpha), decoding length, the images' pixels and a hash of the code (:data:`CACHE_CODE`)."""
    import hashlib

    from ..io.provenance import code_sha256, weights_sha256

    h = hashlib.sha256()
    for c in images:
        h.update(np.ascontiguousarray(np.asarray(c.pixels)).tobytes())
    return {"analysis": "hallucination-answers", "task": task, "model": lm.spec.name, "weights_sha256": weights_sha256(lm),
            "method": method, "params": method_params(method, params), "max_new_tokens": int(max_new_tokens),
            "n_images": len(images), "images_sha256": h.hexdigest(), "code_sha256": code_sha256(CACHE_CODE)}


def cache_file(cache_dir: Path, config: dict) -> Path:
    """The answer-cache file of one configuration: ``<cache_dir>/answers-<config hash, 16 hex>.jsonl``.

    Another parameter, model or code version gives another file, so a cached answer is never reused
    for a different configuration; the file's header (:func:`workbench.io.jsonl.open_checkpoint`) guards it too.
    """
    from ..io.provenance import config_hash

    return Path(cache_dir) / f"answers-{config_hash(config)[:16]}.jsonl"


def _resume(cache_dir: Path | None, config: dict, lm=None) -> tuple[dict, Path | None]:
    if cache_dir is None:
        return {}, None
    from ..io.jsonl import open_checkpoint
    from ..io.provenance import collect

    path = cache_file(cache_dir, config)
    return {r["key"]: r for r in open_checkpoint(path, config, collect(lm, config))}, path


def _append(path: Path | None, row: dict) -> None:
    if path is not None:
        append_jsonl(path, row)


@dataclass
class AnswerJob:
    """One answer per cell ``(image index, digit)`` (POPE's yes/no question; digit None: CHAIR's list
    question), what an executor's workers run."""

    images: list
    method: str
    params: dict | None
    max_new_tokens: int

    def run(self, lm: LoadedModel, cell: tuple) -> str:
        from ..demo import digits_vlm

        img, digit = cell
        q = D.LIST_QUESTION if digit is None else D.YESNO_QUESTION.format(d=digit)
        inp = digits_vlm.make_input(lm, q, self.images[img].pixels)
        return answer(lm, inp, self.method, self.max_new_tokens, self.params)


def _answer_all(lm: LoadedModel, job: AnswerJob, cells: list, keys: list[str], done: dict, cache: Path | None,
                desc: str, progress: bool, executor) -> None:
    """Answer the cells whose key is not in ``done`` (on ``executor``), adding them to ``done`` and the cache."""
    from ..core.executor import LocalExecutor

    todo = [i for i, k in enumerate(keys) if k not in done]
    with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, disable=not progress) as bar:
        for j, text in (executor or LocalExecutor()).map(job, [cells[i] for i in todo], lm):
            key = keys[todo[j]]
            done[key] = {"key": key, "answer": text}
            _append(cache, done[key])
            bar.update(1)


def run_pope(lm: LoadedModel, images: Sequence[D.Composite], items: pd.DataFrame, method: str = "none",
             splits: Sequence[str] = SPLITS, cache: Path | None = None, progress: bool = True,
             params: dict | None = None, executor=None) -> pd.DataFrame:
    """Answer the POPE questions of ``splits`` under ``method``; returns ``items`` rows with ``answer``, ``pred``.

    Questions shared by several splits (the positives) are answered once. ``cache`` (a folder) keeps
    finished answers in :func:`cache_file` of the full configuration (:func:`cache_config`), so a rerun
    resumes and a changed parameter, model or code never reuses an answer. ``params``: :func:`method_params`.
    ``executor`` (:mod:`workbench.core.executor`; default the local, serial one) answers the questions; the
    cache is written here, by the driver.
    """
    for s in splits:
        check_method(method, s)
    sub = items[items.split.isin(splits)].copy()
    done, cache = _resume(cache, cache_config(lm, "pope", method, params, images, 1), lm)
    todo = sorted({(int(r.image), int(r.digit)) for r in sub.itertuples()})
    keys = [f"pope/{method}/{img}/{digit}" for img, digit in todo]
    _answer_all(lm, AnswerJob(list(images), method, params, 1), todo, keys, done, cache, f"POPE {method}", progress,
                executor)
    answers = {c: done[k]["answer"] for c, k in zip(todo, keys)}
    sub["answer"] = [answers[(int(r.image), int(r.digit))] for r in sub.itertuples()]
    sub["pred"] = sub["answer"].map(is_yes)
    sub["method"] = method
    return sub.reset_index(drop=True)


def run_chair(lm: LoadedModel, images: Sequence[D.Composite], method: str = "none", max_new_tokens: int = 8,
              cache: Path | None = None, progress: bool = True, params: dict | None = None,
              executor=None) -> pd.DataFrame:
    """Answer "What digits are in the image?" for every image under ``method`` (``cache``, ``executor``: as in
    :func:`run_pope`).

    Returns DataFrame (image, method, answer, truth, mentioned, hallucinated, covered).
    """
    check_method(method)
    done, cache = _resume(cache, cache_config(lm, "chair", method, params, images, max_new_tokens), lm)
    keys = [f"chair/{method}/{i}" for i in range(len(images))]
    _answer_all(lm, AnswerJob(list(images), method, params, max_new_tokens), [(i, None) for i in range(len(images))],
                keys, done, cache, f"CHAIR {method}", progress, executor)
    rows = []
    for i, comp in enumerate(images):
        text = done[keys[i]]["answer"]
        m = mentioned_digits(text)
        rows.append((i, method, text, comp.digits, m, [d for d in m if d not in comp.digits],
                     [d for d in comp.digits if d in m]))
    return pd.DataFrame(rows, columns=["image", "method", "answer", "truth", "mentioned", "hallucinated", "covered"])


# --- metrics with bootstrap intervals ---------------------------------------------------------------------


def pope_metrics(df: pd.DataFrame) -> dict:
    """accuracy, precision, recall, f1, yes_ratio of POPE answers (``label``, ``pred`` bool columns)."""
    y, p = df["label"].to_numpy(bool), df["pred"].to_numpy(bool)
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": float((y == p).mean()), "precision": prec, "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "yes_ratio": float(p.mean()), "n": int(len(y))}


def chair_metrics(df: pd.DataFrame) -> dict:
    """CHAIR_S, CHAIR_I, length (digits mentioned per answer) and recall of listing answers."""
    n_mentioned = df["mentioned"].map(len).sum()
    return {"chair_s": float((df["hallucinated"].map(len) > 0).mean()),
            "chair_i": float(df["hallucinated"].map(len).sum() / n_mentioned) if n_mentioned else 0.0,
            "length": float(df["mentioned"].map(len).mean()),
            "recall": float(df["covered"].map(len).sum() / df["truth"].map(len).sum()), "n": int(len(df))}


@torch.no_grad()
def image_ablation(lm: LoadedModel, images: Sequence[D.Composite], seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Does the model use the image? Accuracy with the image, with a blank image, and with the image removed.

    Per image: the listing answer (exact match of the digit sequence, and digit-set match) and two
    yes/no questions (one present digit, one random absent digit).

    Returns:
        DataFrame (condition, list_exact, list_set, yesno_accuracy, yes_ratio, n) with conditions
        ``image``, ``blank image``, ``no image`` (image tokens removed).
    """
    from ..demo.digits_vlm import make_input

    rng = np.random.default_rng(seed)
    qs = []
    for comp in images:
        absent = [d for d in range(10) if d not in comp.digits]
        qs.append([(int(rng.choice(comp.digits)), True), (int(rng.choice(absent)), False)])
    rows = []
    for cond in ("image", "blank image", "no image"):
        exact, same, correct, yes, n_yn = 0, 0, 0, 0, 0
        for comp, q in zip(tqdm(images, desc=f"accuracy ({cond})", disable=not progress), qs):
            px = comp.pixels if cond == "image" else (D.blank_pixels() if cond == "blank image" else None)
            m = mentioned_digits(answer(lm, make_input(lm, D.LIST_QUESTION, px), "none", 8))
            exact += m == comp.digits
            same += set(m) == set(comp.digits)
            for d, label in q:
                y = is_yes(answer(lm, make_input(lm, D.YESNO_QUESTION.format(d=d), px)))
                correct += y == label
                yes += y
                n_yn += 1
        n = len(images)
        rows.append((cond, exact / n, same / n, correct / n_yn, yes / n_yn, n))
    return pd.DataFrame(rows, columns=["condition", "list_exact", "list_set", "yesno_accuracy", "yes_ratio", "n"])
