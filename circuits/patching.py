"""Activation patching and path patching on head outputs ``z``.

Notation: a task gives clean prompts x_clean and corrupted prompts x_corr of the same length and,
per pair, an answer token and a wrong token. ``LD(run) = logit[answer] - logit[wrong]`` at the last
position, averaged over pairs. The **normalised metric** of Wang et al. 2022 (IOI) and Merullo
et al. 2024 is::

    normalised = (LD_patched - LD_corr) / (LD_clean - LD_corr)

so 1 means "behaves like the clean run" and 0 "behaves like the corrupted run". Means over pairs
are taken before the ratio (a per-pair ratio explodes where a pair's clean-corrupt gap is small).

**Activation patching** (:func:`activation_patching`, "denoising"): run x_corr with one head's z
replaced (at every position) by its z on x_clean; ``normalised`` is the share of the clean
behaviour that head alone restores.

**Path patching** (:func:`path_patching`, Wang et al. 2022, Sec. 3.1 and App. B; "noising"). For a
sender head s and receivers R (heads, or ``"logits"``), exactly what we run:

1. Cache z of every head on x_clean and on x_corr (:class:`~workbench.core.tracer.Tracer` with ``z=True``).
2. Run x_clean with s's z set to its x_corr value and **every other head's z frozen** to its
   x_clean value; MLPs, norms and embeddings recompute. Only the direct paths from s through the
   residual stream (and through MLPs, which are not circuit nodes) change downstream inputs.
   For ``R = "logits"`` the metric is read from this run's logits.
3. Otherwise, record what each receiver *would* output in run 2 (its z recomputed from its changed
   query, key and value inputs, before freezing), then run x_clean again with only the receivers'
   z replaced by those recorded values; everything downstream recomputes. Replacing a receiver's z
   by the value computed from patched q/k/v is the same as patching its q/k/v inputs (the head
   output is a function of them alone; with grouped-query attention this patches the receiver's
   own use of its shared key/value head, not the other heads of the group).

``normalised`` is then near 1 for unimportant senders; ``effect = normalised - 1`` is the
fraction of the clean-corrupt gap lost through that path (Wang et al. report the same quantity
as a relative change of the logit difference, which equals it when LD_corr is near 0).

Both are :class:`~workbench.interventions.HeadIntervention` subclasses that write cached z into
the kernel's output (:class:`ZPatch`); to keep CPU passes few, several senders or heads are
patched in one forward pass on replicas of the batch (each replica has its own patch). The patches,
the metric and the forwards live in :mod:`circuits.z_patches`; this module runs the two experiments.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.core.models import LoadedModel
from workbench.tasks.ioi import PatchingTask

from .z_patches import (Head, ReplicaZPatch, ZCache, ZPatch, _forward_last, logit_diff, normalised, run_with_z,
                        start_at)

__all__ = ["Head", "ZCache", "ReplicaZPatch", "ZPatch", "activation_patching", "logit_diff", "normalised",
           "path_patching", "run_with_z", "start_at", "task_baseline"]


def _all_heads(lm: LoadedModel) -> list[Head]:
    return [(layer, h) for layer in range(lm.spec.n_layers) for h in range(lm.spec.n_heads)]


@torch.no_grad()
def _baselines(lm: LoadedModel, task: PatchingTask):
    """Per group: (idx, clean ids, answer, wrong, clean z, corrupted z, LD clean, LD corr)."""
    out = []
    for idx in task.groups():
        clean, corr, ans, wrong = task.batch(idx)
        lc, zc, rc = run_with_z(lm, clean, resid=True)
        lx, zx, rx = run_with_z(lm, corr, resid=True)
        out.append(dict(idx=idx, clean=clean, corr=corr, ans=ans, wrong=wrong, z_clean=zc, z_corr=zx,
                        resid_clean=rc, resid_corr=rx,
                        ld_clean=logit_diff(lc, ans, wrong), ld_corr=logit_diff(lx, ans, wrong)))
    return out


def _rep(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat(n, *([1] * (x.dim() - 1)))


@torch.no_grad()
def task_baseline(lm: LoadedModel, task: PatchingTask) -> dict:
    """Clean and corrupted logit differences of a task: mean over pairs and per pair, and clean top-1 accuracy."""
    ld_c, ld_x, acc = [], [], []
    for idx in task.groups():
        clean, corr, ans, wrong = task.batch(idx)
        lc = lm.model(input_ids=clean, use_cache=False).logits
        lx = lm.model(input_ids=corr, use_cache=False).logits
        ld_c.append(logit_diff(lc, ans, wrong))
        ld_x.append(logit_diff(lx, ans, wrong))
        acc.append((lc[:, -1].argmax(-1) == ans).float())
    ld_c, ld_x, acc = torch.cat(ld_c), torch.cat(ld_x), torch.cat(acc)
    return {"task": task.name, "n": len(task), "ld_clean": float(ld_c.mean()), "ld_corrupted": float(ld_x.mean()),
            "top1_clean": float(acc.mean()), "ld_clean_per_pair": ld_c.tolist(), "ld_corrupted_per_pair": ld_x.tolist()}


def _add_logit_diffs(ld_sum: dict[Head, float], chunk: list[Head], logits: torch.Tensor, g: dict) -> None:
    """Add each replica's summed logit difference (replica i patched head ``chunk[i]``) to ``ld_sum``."""
    n = len(chunk)
    ld = logit_diff(logits, _rep(g["ans"], n), _rep(g["wrong"], n)).view(n, -1)
    for hh, v in zip(chunk, ld.sum(1).tolist()):
        ld_sum[hh] += v


def _table(heads: list[Head], ld_sum: dict[Head, float], n: int, base: list[dict]) -> pd.DataFrame:
    """Per-head mean patched logit difference over ``n`` pairs, normalised by the baselines' clean/corrupted means."""
    ld_clean = float(torch.cat([g["ld_clean"] for g in base]).mean())
    ld_corr = float(torch.cat([g["ld_corr"] for g in base]).mean())
    rows = []
    for hh in heads:
        ld = ld_sum[hh] / n
        rows.append({"layer": hh[0], "head": hh[1], "ld_patched": ld, "normalised": normalised(ld, ld_clean, ld_corr)})
    df = pd.DataFrame(rows)
    df.attrs.update(ld_clean=ld_clean, ld_corrupted=ld_corr)
    return df


@torch.no_grad()
def activation_patching(lm: LoadedModel, task: PatchingTask, heads: Sequence[Head] | None = None,
                        heads_per_pass: int = 9, progress: bool = True) -> pd.DataFrame:
    """Denoising activation patching of each head's z (clean -> corrupted run), one head at a time.

    Args:
        heads: heads to patch (default all).
        heads_per_pass: heads patched in one forward pass, on replicas of the batch.
    Returns:
        DataFrame ``layer, head, ld_patched, normalised`` (normalised: module docstring; 1 = the head
        alone restores the clean logit difference); ``df.attrs`` has ``ld_clean``, ``ld_corrupted``.
    """
    heads = sorted(heads) if heads is not None else _all_heads(lm)
    base = _baselines(lm, task)
    ld_sum = {hh: 0.0 for hh in heads}
    for g, chunk in _passes(heads, heads_per_pass, base, f"activation patching ({task.name})", progress):
        patches = [{hh: g["z_clean"][hh[0]][:, hh[1]]} for hh in chunk]
        iv = ReplicaZPatch(len(chunk), patches)
        first = min(layer for layer, _ in chunk)  # layers before it see no patch: start there
        with iv.applied(), start_at(lm, first, _rep(g["resid_corr"][first], len(chunk))):
            logits = _forward_last(lm, _rep(g["corr"], len(chunk)))
        _add_logit_diffs(ld_sum, chunk, logits, g)
    df = _table(heads, ld_sum, len(task), base)
    df["effect"] = df["normalised"]
    return df


def _passes(heads: list[Head], per_pass: int, base: list[dict], desc: str, progress: bool):
    """(batch group, chunk of at most ``per_pass`` heads) for every forward pass of a patching sweep, with
    one progress bar over all of them."""
    chunks = [heads[a:a + per_pass] for a in range(0, len(heads), per_pass)]
    with tqdm(total=len(chunks) * len(base), desc=desc, disable=not progress) as bar:
        for g in base:
            for chunk in chunks:
                yield g, chunk
                bar.update()


@torch.no_grad()
def path_patching(lm: LoadedModel, task: PatchingTask, receivers: Sequence[Head] | str = "logits",
                  senders: Sequence[Head] | None = None, heads_per_pass: int = 9, progress: bool = True) -> pd.DataFrame:
    """Path patching (Wang et al. 2022) from each sender head to ``receivers`` (module docstring).

    Args:
        receivers: ``"logits"`` or a list of (layer, head) receiver heads.
        senders: heads to test one at a time (default every head in a layer before the last
            receiver layer; all heads for ``"logits"``).
        heads_per_pass: senders handled per forward pass (replicas of the batch).
    Returns:
        DataFrame ``layer, head, ld_patched, normalised, effect`` with ``effect = normalised - 1``
        (negative: the path carries the clean behaviour), sorted by layer and head; ``df.attrs`` has
        ``ld_clean``, ``ld_corrupted`` and ``receivers``.
    Raises:
        ValueError: a receiver is not an in-range head.
    """
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise ValueError(f"receivers must be 'logits' or a list of (layer, head), not {receivers!r}")
    recv = [] if to_logits else sorted({(int(a), int(b)) for a, b in receivers})
    for layer, h in recv:
        lm.spec.check_head(layer, h)
    if senders is None:
        last = lm.spec.n_layers if to_logits else max(layer for layer, _ in recv)
        senders = [hh for hh in _all_heads(lm) if hh[0] < last]
    senders = sorted(senders)
    base = _baselines(lm, task)
    ld_sum = {hh: 0.0 for hh in senders}
    for g, chunk in _passes(senders, heads_per_pass, base, f"path patching ({task.name})", progress):
        n = len(chunk)
        step2 = _FreezeOthers(n, chunk, g["z_clean"], g["z_corr"], record=recv)
        first = min(layer for layer, _ in chunk)  # before the sender everything is clean: start there
        with step2.applied(), start_at(lm, first, _rep(g["resid_clean"][first], n)):
            logits = _forward_last(lm, _rep(g["clean"], n))
        if not to_logits:
            step3 = ReplicaZPatch(n, step2.recorded)
            first = recv[0][0]
            with step3.applied(), start_at(lm, first, _rep(g["resid_clean"][first], n)):
                logits = _forward_last(lm, _rep(g["clean"], n))
        _add_logit_diffs(ld_sum, chunk, logits, g)
    df = _table(senders, ld_sum, len(task), base)
    df["effect"] = df["normalised"] - 1.0
    df.attrs["receivers"] = "logits" if to_logits else [list(r) for r in recv]
    return df


class _FreezeOthers(ReplicaZPatch):
    """Path patching step 2 on replicas: replica r has sender ``senders[r]`` at its corrupted z and every
    other head frozen at its clean z; receivers' recomputed z are recorded."""

    def __init__(self, n_rep: int, senders: list[Head], z_clean: ZCache, z_corr: ZCache, record: Iterable[Head]):
        patches = [{s: z_corr[s[0]][:, s[1]]} for s in senders]
        super().__init__(n_rep, patches, freeze=z_clean, record=record)
