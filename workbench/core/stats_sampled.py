"""Sampled received attention (our addition): ``s_k`` estimated from a uniform random subset of query rows, and
its per-entry Hoeffding-Serfling error bound (Bardenet & Maillard 2015)."""
from __future__ import annotations

import torch

from .attention_call import LOG2E, AttentionCall
from .stats_exact import DEFAULT_CHUNK_ELEMENTS, _chunk_rows

DEFAULT_BOUND_DELTA = 0.05


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
