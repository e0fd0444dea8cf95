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
"""
from __future__ import annotations

import math

import torch

from .attention import LOG2E, AttentionCall

# 1M floats = 4 MiB per score block: measured fastest on a 2-core AMD EPYC (1 MiB L2 per core,
# 32 MiB L3) at 2048-8192 tokens; 8M-float blocks were up to 3x slower (benchmarks/profile_attention.py).
DEFAULT_CHUNK_ELEMENTS = 1 << 20
# ...but never fewer than 32 query rows per block: thinner GEMMs were 19% slower at 16384 tokens
# (the block is then 32 x H x N floats, still O(N) per head)
MIN_BLOCK_ROWS = 32
DEFAULT_BOUND_DELTA = 0.05
LN2 = math.log(2.0)
ROW_STATS = ("entropy", "distance", "top_key", "top_prob")


def _chunk_rows(call: AttentionCall, chunk_elements: int) -> int:
    """Query rows per score block: ``chunk_elements`` floats, at least MIN_BLOCK_ROWS rows, at most all rows."""
    b, h, nq, _ = call.query.shape
    return max(1, min(nq, max(MIN_BLOCK_ROWS, chunk_elements // max(1, b * h * call.key.shape[2]))))


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


def sample_query_rows(n_queries: int, n_rows: int, seed: int = 0) -> torch.Tensor:
    """A sorted uniform random subset of ``n_rows`` of the query indices ``0..n_queries-1`` (without
    replacement; all of them when ``n_rows >= n_queries``), reproducible from ``seed``. Shape (m,) int64."""
    if n_rows >= n_queries:
        return torch.arange(n_queries)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_queries, generator=g)[:n_rows].sort().values


def sampled_received(call: AttentionCall, rows: torch.Tensor, heads: list[int] | None = None,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, torch.Tensor]:
    """Received attention estimated from a subset of query rows.

    ``s_k`` is estimated by the mean of ``A[i,k]`` over the sampled rows i that see key k. The rows are
    a uniform random subset (:func:`sample_query_rows`), so for each key the sampled rows that see it are
    a uniform random subset of the queries that see it, and the estimate is unbiased given its count.

    Args:
        call: the attention call (queries (B, Hq, Nq, D)).
        rows: (m,) sorted int64 query indices into this call's queries.
        heads: query heads (default all).
        chunk_elements: score-block size in floats.
    Returns:
        ``received_sum`` (B, H, Nk): sum of A[i,k] over the sampled rows;
        ``received_count`` (B or 1, 1, Nk): sampled rows that see key k (m_k);
        ``received_population`` (B or 1, 1, Nk): all of this call's queries that see key k (n_k).
    Cost: O(m * Nk * D) per head and O(chunk_elements) extra memory.
    """
    b, hq, nq, d = call.query.shape
    hkv, nk = call.key.shape[1], call.key.shape[2]
    rep, off = hq // hkv, call.q_offset
    dev = call.device
    rows = rows.to(dev)
    hsel = list(range(hq)) if heads is None else list(heads)
    bm = 1 if call.mask is None else call.mask.shape[0]
    rsum = torch.zeros(b, len(hsel), nk, device=dev)
    rcount = torch.zeros(bm, 1, nk, device=dev)
    if call.mask is None:
        kidx = torch.arange(nk, dtype=torch.float32, device=dev)
        population = (nq - (kidx - off).clamp_min(0)).clamp_min(0).view(1, 1, nk)
    else:
        population = torch.zeros(bm, 1, nk, device=dev)
        step_all = max(1, chunk_elements // max(1, bm * nk))
        for a in range(0, nq, step_all):
            population += call.visible(a, min(nq, a + step_all)).sum(dim=2, dtype=torch.float32)
    k = call.key.float()
    lse = call.lse if heads is None else call.lse[:, hsel]
    step = _chunk_rows(call, chunk_elements)
    kpos = torch.arange(nk, device=dev)
    for a in range(0, rows.numel(), step):
        r = rows[a: a + step]
        c = r.numel()
        kmax = nk if call.mask is not None else min(nk, int(r[-1]) + off + 1)
        q = call.query[:, :, r].float().reshape(b, hkv, rep * c, d)
        s = torch.matmul(q, k[:, :, :kmax].transpose(-1, -2)).view(b, hq, c, kmax)
        if heads is not None:
            s = s[:, hsel]
        s = s.mul_(call.scale)
        if call.softcap is not None:
            s = s.div_(call.softcap).tanh_().mul_(call.softcap)
        if call.mask is None:
            vis = (kpos[None, :kmax] <= (r + off)[:, None])[None, None]
        else:
            vis = torch.isfinite(call.mask[:, :, r, :kmax])
            s = s.add_(call.mask[:, :, r, :kmax].float())
        s = s.sub_(lse[:, :, r, None]).mul_(LOG2E)
        p = s.exp2_().masked_fill_(~vis, 0.0)  # exp2 of base-2 units: see _causal_statistics
        rsum[..., :kmax] += p.sum(dim=2)
        rcount[..., :kmax] += vis.sum(dim=2, dtype=torch.float32)
    return {"received_sum": rsum, "received_count": rcount, "received_population": population}


def hoeffding_serfling_bound(sampled: torch.Tensor, population: torch.Tensor,
                             delta: float | torch.Tensor = DEFAULT_BOUND_DELTA) -> torch.Tensor:
    """Half-width of a two-sided (1 - delta) confidence interval for a mean estimated by sampling
    without replacement, for values in [0, 1] (attention probabilities).

    Hoeffding-Serfling inequality, Bardenet & Maillard 2015 (Bernoulli 21(3)), Corollary 2.5: for a sample
    of n of N values, ``P(mean_n - mu >= eps) <= exp(-2 n eps^2 / rho_n)`` with
    ``rho_n = 1 - (n - 1)/N`` for n <= N/2 and ``rho_n = (1 - n/N)(1 + 1/n)`` for n > N/2 (Serfling's
    factor). Both tails, solved for eps: ``eps = sqrt(rho_n ln(2/delta) / (2n))``. 0 where n = N (nothing
    was left out), 1 where n = 0 (no information). The statement holds for each entry separately; for
    all K entries at once, use delta / K (union bound).

    Args:
        sampled: n, the number of sampled rows that see each key (any shape).
        population: N, the number of all rows that see each key (same shape).
        delta: failure probability per entry, in (0, 1): a float or a tensor broadcastable to ``sampled``.
    Returns:
        eps, same shape, in attention-probability units.
    Raises:
        ValueError: delta outside (0, 1).
    """
    d = torch.as_tensor(delta, dtype=torch.float32)
    if not bool(((d > 0) & (d < 1)).all()):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    n = sampled.float()
    big_n = population.float().clamp_min(1.0)
    n1 = n.clamp_min(1.0)
    serfling = (1.0 - n / big_n).clamp_min(0.0) * (1.0 + 1.0 / n1)
    rho = torch.where(n <= big_n / 2, 1.0 - (n1 - 1.0) / big_n, serfling)
    eps = torch.sqrt(rho * torch.log(2.0 / d) / (2.0 * n1))
    eps = torch.where(n >= big_n, torch.zeros_like(eps), eps)
    return torch.where(n <= 0, torch.ones_like(eps), eps.clamp_max(1.0))


def _causal_statistics(call: AttentionCall, received: bool, want: set[str], chunk_elements: int) -> dict[str, torch.Tensor]:
    """Fast path for unmasked causal calls (all heads): one batched GEMM per chunk with the
    log-sum-exp subtracted inside the GEMM, an in-place exp, and masking of the chunk's
    diagonal block only (keys before the chunk are visible to all of its queries)."""
    b, hq, nq, d = call.query.shape
    hkv, nk = call.key.shape[1], call.key.shape[2]
    rep, off = hq // hkv, call.q_offset
    dev = call.device
    # base-2 units: s2 = (scale q.k - lse) * log2(e), A = exp2(s2); exp2 is several times faster than exp
    # on this kind of input, and far faster where exp underflows (scores far below the log-sum-exp)
    q = (call.query.float() * (call.scale * LOG2E)).reshape(b * hkv, rep, nq, d)
    k = call.key.float().reshape(b * hkv, nk, d)
    lse = call.lse.reshape(b * hkv, rep, nq) * LOG2E
    out: dict[str, torch.Tensor] = {}
    if received:
        rsum = torch.zeros(b * hkv, rep, nk, device=dev)
        # query i (absolute position i + off) sees key k iff k <= i + off
        kidx = torch.arange(nk, dtype=torch.float32, device=dev)
        out["received_count"] = (nq - (kidx - off).clamp_min(0)).clamp_min(0).view(1, 1, nk)
    probs_rows = bool(want & {"entropy", "distance"})  # these need exp(s); the top key does not
    top_rows = bool(want & {"top_key", "top_prob"})
    ent = torch.empty(b * hkv, rep, nq, device=dev) if "entropy" in want else None
    dist = torch.empty(b * hkv, rep, nq, device=dev) if "distance" in want else None
    if top_rows:
        top = torch.empty(b * hkv, rep, nq, dtype=torch.long, device=dev)
        topp = torch.empty(b * hkv, rep, nq, device=dev)
    kpos = torch.arange(nk, dtype=torch.float32, device=dev)
    step = _chunk_rows(call, chunk_elements)
    # one score block reused by every chunk: no allocation (and no fresh pages to fault in) per chunk
    block = torch.empty(b * hq * step * nk, device=dev)
    for a in range(0, nq, step):
        z = min(nq, a + step)
        c, kmax = z - a, min(nk, z + off)
        qc = q[:, :, a:z].reshape(b * hkv, rep * c, d)
        neg_lse = (-lse[:, :, a:z]).reshape(b * hkv, rep * c, 1).expand(-1, -1, kmax)
        s = block[: b * hq * c * kmax].view(b * hkv, rep * c, kmax)
        torch.baddbmm(neg_lse, qc, k[:, :kmax].transpose(1, 2), out=s)  # (score - lse) * log2(e)
        s = s.view(b * hkv, rep, c, kmax)
        # the diagonal block: keys a+off .. kmax-1, hidden above the diagonal
        d0 = a + off
        hidden = torch.ones(c, kmax - d0, dtype=torch.bool, device=dev).triu_(1)
        if want:
            s[..., d0:].masked_fill_(hidden, float("-inf"))
            if top_rows:
                tp, tk = s.max(dim=-1)
                top[:, :, a:z], topp[:, :, a:z] = tk, torch.exp2(tp)
            if probs_rows or received:
                p = torch.exp2(s)
            if ent is not None:  # -sum A ln A = -ln(2) sum A s2
                ent[:, :, a:z] = -LN2 * torch.where(p > 0, p * s, 0.0).sum(-1)
            if dist is not None:
                qpos = torch.arange(a, z, dtype=torch.float32, device=dev) + off
                # sum_j A_ij (i - j); rows sum to 1 except with learned sinks, which keep the rest
                mass = 1.0 if call.sinks is None else p.sum(-1)
                dist[:, :, a:z] = qpos * mass - torch.matmul(p, kpos[:kmax])
        else:
            p = s.exp2_()
            p[..., d0:].masked_fill_(hidden, 0.0)
        if received:
            rsum[..., :kmax] += p.sum(dim=2)
    if received:
        out["received_sum"] = rsum.view(b, hq, nk)
    for name, arr in (("entropy", ent), ("distance", dist)):
        if arr is not None:
            out[name] = arr.view(b, hq, nq)
    if top_rows:
        out.update(top_key=top.view(b, hq, nq), top_prob=topp.view(b, hq, nq))
    return out


def _masked_statistics(call: AttentionCall, heads: list[int] | None, received: bool, want: set[str],
                       chunk_elements: int) -> dict[str, torch.Tensor]:
    """General path: explicit masks (padding) or a subset of heads."""
    b, hq, nq, _ = call.query.shape
    nk = call.key.shape[2]
    hsel = list(range(hq)) if heads is None else list(heads)
    h = len(hsel)
    all_heads = None if heads is None or hsel == list(range(hq)) else hsel
    dev = call.device
    out: dict[str, torch.Tensor] = {}
    if received:
        rsum = torch.zeros(b, h, nk, device=dev)
        rcount = torch.zeros(call.visible(0, 1).shape[0], 1, nk, device=dev)
    ent = torch.empty(b, h, nq, device=dev) if "entropy" in want else None
    dist = torch.empty(b, h, nq, device=dev) if "distance" in want else None
    top_rows = bool(want & {"top_key", "top_prob"})
    if top_rows:
        top = torch.empty(b, h, nq, dtype=torch.long, device=dev)
        topp = torch.empty(b, h, nq, device=dev)
    step = _chunk_rows(call, chunk_elements)
    kpos = torch.arange(nk, dtype=torch.float32, device=dev)
    for a in range(0, nq, step):
        z = min(nq, a + step)
        # causal without an explicit mask: keys after the chunk's last query are never visible
        kmax = nk if call.mask is not None else min(nk, z + call.q_offset)
        s = call.scores(a, z, keys=slice(0, kmax), heads=all_heads)
        lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, all_heads, a:z]
        if received or ent is not None or dist is not None:
            p = torch.exp2((s - lse[..., None]).mul_(LOG2E))
        if received:
            rsum[..., :kmax] += p.sum(dim=2)
            rcount[..., :kmax] += call.visible(a, z, kmax).sum(dim=2, dtype=torch.float32)
        if ent is not None:  # -sum_j A_ij ln A_ij over the keys (with learned sinks the rows sum to < 1)
            ent[..., a:z] = -torch.where(p > 0, p * (s - lse[..., None]), 0.0).sum(-1)
        if dist is not None:
            qpos = torch.arange(a, z, dtype=torch.float32, device=dev) + call.q_offset
            mass = 1.0 if call.sinks is None else p.sum(-1)
            dist[..., a:z] = qpos * mass - torch.matmul(p, kpos[:kmax])
        if top_rows:
            tp, tk = s.max(dim=-1)
            top[..., a:z] = tk
            topp[..., a:z] = torch.exp(tp - lse)
    if received:
        out["received_sum"], out["received_count"] = rsum, rcount
    for name, arr in (("entropy", ent), ("distance", dist)):
        if arr is not None:
            out[name] = arr
    if top_rows:
        out.update(top_key=top, top_prob=topp)
    return out


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
