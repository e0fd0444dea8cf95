"""Closed-form attention statistics from q, k and the kernel's log-sum-exp.

Every function takes an :class:`~workbench.core.attention.AttentionCall` and recovers exact
attention probabilities ``A[i,j] = exp(s_ij - lse_i)`` block by block, where ``s_ij`` is the score as the
kernel formed it (:meth:`~workbench.core.attention.AttentionCall.scores`: soft-cap and additive mask included)
and ``lse_i`` includes a learned sink logit where the layer has one, so the peak extra memory is one
(B, H, chunk, N) block rather than (B, H, N, N). All arithmetic is float32 whatever the model dtype, and
every buffer is created on the call's device.

Definitions (docs/methods.md#received-attention-and-sink-rate):

* mean received attention of key k (Gu et al. 2024, "When attention sink emerges";
  also used by ACT, Yu et al. 2024): ``s_k = (1/(T-k)) * sum_{i>=k} A[i,k]``. We divide by the
  number of queries that can see k, which is T-k for an unpadded causal sequence and the
  correct count under padding or KV caching.
* attention entropy of query i, in nats: ``H_i = -sum_j A_ij log A_ij = sum_j A_ij (lse_i - s_ij)``
  over the keys (with learned sinks the row mass is below 1 and the sink's own term is left out, as
  in transformers' eager attention weights, which drop the sink column).
* mean attention distance of query i, in tokens: ``sum_j A_ij (i - j)``.
* top key of query i: ``argmax_j A_ij`` (the retrieval-score statistic of Wu et al. 2024).

Sampled received attention (optional, our addition; no paper prescribes it): the exact column
sums cost one extra QK^T product per layer, as much as the fused kernel itself at long contexts
(``benchmarks/profile_attention.py``). :func:`sampled_received` instead averages ``A[i,k]`` over
a uniform random subset of m query rows (without replacement) and states a per-entry error bound,
:func:`hoeffding_serfling_bound`; its cost is O(m N) per head instead of O(N^2).

The block loops live in :mod:`.stats_exact`, the sampled estimate and its bound in :mod:`.stats_sampled`;
every name stays importable from here.
"""
from __future__ import annotations

import torch

from .attention_call import AttentionCall
from .stats_exact import (DEFAULT_CHUNK_ELEMENTS, LN2, MIN_BLOCK_ROWS, _causal_statistics,
                          _chunk_rows, _masked_statistics)  # noqa: F401  (_chunk_rows: benchmarks/profile_attention.py)
from .stats_sampled import DEFAULT_BOUND_DELTA, hoeffding_serfling_bound, sample_query_rows, sampled_received

__all__ = ["DEFAULT_BOUND_DELTA", "DEFAULT_CHUNK_ELEMENTS", "LN2", "MIN_BLOCK_ROWS", "ROW_STATS", "head_statistics",
           "hoeffding_serfling_bound", "key_mass", "pattern_rows", "sample_query_rows", "sampled_received"]

ROW_STATS = ("entropy", "distance", "top_key", "top_prob")


def head_statistics(call: AttentionCall, heads: list[int] | None = None, received: bool = True,
                    rows: bool = True, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    sample_rows: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-head attention statistics of one attention call, computed in query chunks.

    Args:
        call: the attention call (queries (B, Hq, Nq, D), keys (B, Hkv, Nk, D)).
        heads: query heads to compute (default all Hq).
        received: compute column sums for the mean received attention.
        rows: compute per-query entropy, distance and top key (True), or only the named ones of
            ``ROW_STATS`` (e.g. ``("top_key",)``, which needs no exp), or none (False).
        chunk_elements: size of one score block in floats (memory knob; results do not depend on it).
        sample_rows: estimate the received attention from this many uniformly sampled query rows
            (:func:`sampled_received`) when ``rows`` is False and the call has more queries; None = exact.
            Row statistics need every row anyway, so with ``rows`` True the received attention is exact.
        seed: seed of the row sample.

    Returns:
        dict with, where requested (H = len(heads)):
            ``received_sum`` (B, H, Nk) float32: sum over this call's queries of A[i,k];
            ``received_count`` (B or 1, 1, Nk) float32: how many of this call's queries see key k;
            ``entropy`` (B, H, Nq) nats; ``distance`` (B, H, Nq) tokens;
            ``top_key`` (B, H, Nq) int64 key index; ``top_prob`` (B, H, Nq) its probability;
            with sampling also ``received_population`` (B or 1, 1, Nk), the queries that see key k
            (``received_count`` is then the sampled ones).
    """
    hq, nq = call.query.shape[1], call.query.shape[2]
    want = set(ROW_STATS) if rows is True else set(rows or ())
    if want - set(ROW_STATS):
        raise ValueError(f"unknown row statistics {sorted(want - set(ROW_STATS))}; choose from {ROW_STATS}")
    if received and not want and sample_rows is not None and sample_rows < nq:
        return sampled_received(call, sample_query_rows(nq, sample_rows, seed), heads, chunk_elements)
    if call.mask is None and call.softcap is None and (heads is None or list(heads) == list(range(hq))):
        return _causal_statistics(call, received, want, chunk_elements)
    return _masked_statistics(call, heads, received, want, chunk_elements)


def key_mass(call: AttentionCall, keys: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
    """Attention mass each query puts on a set of key positions: ``sum_{k in keys} A[i,k]``.

    Costs O(Nq * |keys|) per head: only the score columns of ``keys`` are computed.

    Args:
        keys: 1-D int64 tensor of key positions (indices into this call's keys; out-of-range ones are dropped).
    Returns:
        (B, H, Nq) float32.
    """
    keys = keys.to(call.device)
    keys = keys[(keys >= 0) & (keys < call.key.shape[2])]
    b, hq, nq, _ = call.query.shape
    h = hq if heads is None else len(heads)
    if keys.numel() == 0:
        return torch.zeros(b, h, nq, device=call.device)
    return call.probs(0, nq, keys=keys, heads=heads).sum(-1)


def pattern_rows(call: AttentionCall, q_start: int, q_stop: int, k_stop: int,
                 heads: list[int] | None = None) -> torch.Tensor:
    """Exact attention rows for queries ``q_start:q_stop`` of this call over keys ``0:k_stop``.

    Returns (B, H, q_stop - q_start, k_stop) float32 probabilities (0 for hidden keys).
    """
    k_stop = min(k_stop, call.key.shape[2])
    return call.probs(q_start, q_stop, keys=slice(0, k_stop), heads=heads)
