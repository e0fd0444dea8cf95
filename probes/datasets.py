"""Probe datasets from traced models: "is this key position a sink" and "is this token inside the needle".

Features are read with the core :class:`~workbench.core.tracer.Tracer`: the residual stream entering a
layer (``resid_pre``, TransformerLens ``hook_resid_pre``) or one head's output ``z`` (``hook_z``).

* **Sink** (Gu et al. 2024; Xiao et al. 2024): key position k is a sink in layer l if its mean
  received attention ``s_k = (1/|Q_k|) sum_{i in Q_k} A[i,k]``, averaged over the layer's heads,
  exceeds ``threshold``. Only keys seen by at least ``min_queries`` queries are labelled (``s_k`` of
  the last keys averages over few queries and is noise).
* **Needle**: a needle sentence is inserted at a random depth into a window of held-out prose
  (:mod:`workbench.tasks.text`); tokens of the needle are labelled 1, haystack tokens 0.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from workbench.core.models import LoadedModel
from workbench.tasks.needle import NEEDLES as RETRIEVAL_NEEDLES
from workbench.tasks.text import token_windows
from workbench.core.tracer import Tracer
from .probe import ProbeData

# the retrieval sweep's needle sentences (invented facts, written for this project), the one list of needles
NEEDLES = tuple(n.sentence for n in RETRIEVAL_NEEDLES)


def _features(tr, site: str, li: int, head: int | None) -> torch.Tensor:
    if site == "resid_pre":
        return tr["resid_pre"][li]  # (B, N, d_model)
    if site == "z":
        return tr["z"][li][:, :, tr.head_index(head)]  # (B, N, d_head)
    raise ValueError(f"unknown site {site!r}: use 'resid_pre' or 'z'")


@torch.no_grad()
def sink_dataset(lm: LoadedModel, layer: int, n_seqs: int = 24, seq_len: int = 128, site: str = "resid_pre",
                 head: int | None = None, threshold: float = 0.1, min_queries: int = 16, label_layer: int | None = None,
                 split: str = "train") -> ProbeData:
    """Per key position: features at ``layer`` and label "is a sink" (module docstring).

    Args:
        layer: layer whose residual stream (or head output) is probed.
        site: ``resid_pre`` or ``z`` (then ``head`` is required).
        threshold: head-mean received attention above which a key is a sink.
        label_layer: the layer whose attention defines the label (default ``layer``).
    Raises:
        HeadIndexError: bad layer or head.
    """
    label_layer = layer if label_layer is None else label_layer
    lm.spec.check_head(layer, head)
    lm.spec.check_head(label_layer)
    if site == "z" and head is None:
        raise ValueError("site 'z' needs a head")
    ids = token_windows(lm.tokenizer, seq_len, n_seqs, split=split)
    layers = sorted({layer, label_layer})
    tr = Tracer(lm, layers=layers, stats=("received",), z=site == "z", resid_pre=site == "resid_pre").run(ids)
    feats = _features(tr, site, tr.layer_index(layer), head)[:, : seq_len - min_queries + 1]
    recv = tr["received"][tr.layer_index(label_layer)].mean(1)[:, : seq_len - min_queries + 1]  # (B, K)
    y = (recv > threshold).long()
    b, k = y.shape
    return ProbeData(feats.reshape(b * k, -1).numpy(), y.reshape(-1).numpy(),
                     np.repeat(np.arange(b), k), ids[:, :k].reshape(-1).numpy(),
                     f"sink (head-mean received attention in layer {label_layer} > {threshold}) from "
                     f"{site}{'' if head is None else f' head {head}'} of layer {layer}")


@torch.no_grad()
def needle_dataset(lm: LoadedModel, layer: int, n_seqs: int = 24, seq_len: int = 160, site: str = "resid_pre",
                   head: int | None = None, seed: int = 0, split: str = "heldout") -> ProbeData:
    """Per token: features at ``layer`` and label "inside the needle" (module docstring).

    Each sequence is a window of ``split`` prose with one of :data:`NEEDLES` inserted at a random
    token depth between 10% and 90% (the window is cut to ``seq_len`` tokens).
    """
    lm.spec.check_head(layer, head)
    if site == "z" and head is None:
        raise ValueError("site 'z' needs a head")
    rng = random.Random(seed)
    hay = token_windows(lm.tokenizer, seq_len, n_seqs, split=split)
    rows, labels = [], []
    for i in range(n_seqs):
        needle = torch.tensor(lm.tokenizer(" " + rng.choice(NEEDLES), add_special_tokens=False).input_ids)
        depth = int(rng.uniform(0.1, 0.9) * (seq_len - len(needle)))
        seq = torch.cat([hay[i, :depth], needle, hay[i, depth:]])[:seq_len]
        lab = torch.zeros(seq_len, dtype=torch.long)
        lab[depth: depth + len(needle)] = 1
        rows.append(seq)
        labels.append(lab)
    ids, y = torch.stack(rows), torch.stack(labels)
    tr = Tracer(lm, layers=[layer], z=site == "z", resid_pre=site == "resid_pre").run(ids)
    feats = _features(tr, site, 0, head)
    b, n = y.shape
    return ProbeData(feats.reshape(b * n, -1).numpy(), y.reshape(-1).numpy(), np.repeat(np.arange(b), n),
                     ids.reshape(-1).numpy(),
                     f"inside the needle, from {site}{'' if head is None else f' head {head}'} of layer {layer}")
