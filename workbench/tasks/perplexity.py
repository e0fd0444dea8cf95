"""Perplexity of a causal LM on token windows: the sanity metric for residual and head interventions."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..core.models import LoadedModel


@torch.no_grad()
def perplexity(lm: LoadedModel, samples: torch.Tensor, batch_size: int = 4, progress: bool = False,
               desc: str = "perplexity") -> dict:
    """Token-level perplexity ``exp(mean NLL)`` of next-token prediction over ``samples``.

    Every position but the first of each window is predicted from the tokens before it; interventions
    active around the call (context managers) apply.

    Args:
        samples: (n, N) int64 token ids (no padding).
    Returns:
        dict ``{"nll": mean negative log-likelihood in nats per token, "perplexity": exp(nll),
        "tokens": number of predicted tokens}``.
    """
    if samples.dim() == 1:
        samples = samples[None]
    total, count = 0.0, 0
    for a in tqdm(range(0, samples.shape[0], batch_size), desc=desc, disable=not progress):
        ids = samples[a: a + batch_size]
        logits = lm.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += ids[:, 1:].numel()
    nll = total / max(1, count)
    return {"nll": nll, "perplexity": math.exp(min(nll, 700.0)), "tokens": count}
