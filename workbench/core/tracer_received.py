"""Received attention over several attention calls: each call's sums and counts added at absolute key positions,
row-sampled calls weighted as strata (:func:`accumulate_received`), and the combined Hoeffding-Serfling bound
(:func:`received_bound`); the :class:`~workbench.core.tracer.Tracer` keeps the state."""
from __future__ import annotations

import torch

from . import stats as S


def accumulate_received(recv_sum: dict[int, torch.Tensor], recv_count: dict[int, torch.Tensor],
                        strata: dict[int, list[tuple[torch.Tensor, torch.Tensor]]], layer: int, rsum: torch.Tensor,
                        rcount: torch.Tensor, pop: torch.Tensor | None = None, key_start: int = 0) -> None:
    """Add one call's received-attention sums and counts to the layer's, at the absolute key positions
    ``key_start + j`` (calls during generate() see more keys each time; a sliding-window cache's keys
    start later).

    A row-sampled call (``pop`` given: n_k sampled of its N_k queries that see key k) is one stratum:
    its sum over all N_k queries is estimated by ``N_k / n_k`` times the sampled sum, so the combined
    estimate ``sum_c (N_ck / n_ck) S_ck / sum_c N_ck`` is unbiased however the calls differ in size
    (decode steps are exact strata, n = N); the stratum's (n_k, N_k) are kept for the bound
    (:func:`received_bound`).

    Counts are (B, 1, Nk) on layers with a mask and (1, 1, Nk) on unmasked causal ones; they are
    stored per batch row, so that every layer's counts stack to (L, B, 1, Nk).
    """
    if pop is not None:
        rsum = rsum * torch.where(rcount > 0, pop / rcount.clamp_min(1.0), torch.zeros((), device=rsum.device))
        if bool((rcount < pop).any()):
            pad = (key_start, 0)  # strata over absolute key positions
            strata[layer].append((torch.nn.functional.pad(rcount, pad), torch.nn.functional.pad(pop, pad)))
        rcount = pop
    rcount = rcount.expand(rsum.shape[0], -1, -1)

    def add(store: dict[int, torch.Tensor], new: torch.Tensor) -> None:
        old = store.get(layer)
        n = key_start + new.shape[-1]
        if old is None:
            old = new.new_zeros(new.shape[:-1] + (n,))
        elif old.shape[-1] < n:
            old = torch.nn.functional.pad(old, (0, n - old.shape[-1]))
        else:
            old = old.clone()
        old[..., key_start:n] += new
        store[layer] = old
    add(recv_sum, rsum)
    add(recv_count, rcount)


def received_bound(total: torch.Tensor, layer_strata: list[tuple[torch.Tensor, torch.Tensor]],
                   bound_delta: float) -> torch.Tensor:
    """Half-width (B or 1, 1, Nk) of the combined estimate of ``received`` of one layer (``total``: its
    query counts, ``layer_strata``: its sampled calls' (n, N)).

    With strata c (the sampled calls; exact calls add nothing) of n_ck sampled among N_ck queries, the
    estimate's error is ``sum_c (N_ck / N_k)(mean_ck - mu_ck)``; each stratum's mean is within its
    Hoeffding-Serfling half-width at failure probability delta / m_k (m_k = strata that sampled key k),
    so by the union bound the error is within ``sum_c (N_ck / N_k) eps_ck`` with probability at least
    1 - delta per entry. 1 where no query sees the key.
    """
    nk = total.shape[-1]
    strata = [(torch.nn.functional.pad(n, (0, nk - n.shape[-1])), torch.nn.functional.pad(p, (0, nk - p.shape[-1])))
              for n, p in layer_strata]
    if not strata:
        return torch.where(total > 0, torch.zeros(()), torch.ones(())).expand_as(total).clone()
    m = sum((n < p).float() for n, p in strata).clamp_min(1.0)
    eps = sum(p * S.hoeffding_serfling_bound(n, p, bound_delta / m) for n, p in strata)
    bound = (eps / total.clamp_min(1.0)).clamp_max(1.0)
    return torch.where(total > 0, bound, torch.ones(()))
