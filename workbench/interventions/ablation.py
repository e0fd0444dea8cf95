"""Head ablation: zero, mean and uniform-attention ablation of head outputs ``z``.

* ``zero``: z = 0 (the head contributes nothing to the residual stream).
* ``mean``: z = the head's mean output over a reference set of real text (mean ablation);
  see :meth:`HeadAblation.fit_means`.
* ``uniform``: the head attends uniformly to every visible key, so its output becomes the running
  mean of the values, ``z_i = (1/|V_i|) sum_{j in V_i} v_j`` (Wu et al. 2024's retrieval-head
  masking). Closed form: a cumulative sum over keys for causal attention, a masked matrix
  product in query chunks otherwise; no N x N softmax.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..core.attention import AttentionCall
from .base import HeadIntervention

KINDS = ("zero", "mean", "uniform")


def uniform_output(call: AttentionCall, heads: list[int], chunk: int = 256) -> torch.Tensor:
    """Output of uniform attention over visible keys for query heads ``heads``: (B, len(heads), Nq, D)."""
    kv = [h // call.n_rep for h in heads]
    v = call.value[:, kv].float()  # (B, H', Nk, D)
    nq = call.query.shape[2]
    if call.mask is None:
        csum = v.cumsum(dim=2)[:, :, call.q_offset: call.q_offset + nq]
        count = torch.arange(call.q_offset + 1, call.q_offset + nq + 1, dtype=torch.float32, device=v.device)
        return (csum / count[:, None]).to(call.output.dtype)
    out = torch.empty(v.shape[0], len(heads), nq, v.shape[-1], device=v.device)
    for a in range(0, nq, chunk):
        z = min(nq, a + chunk)
        vis = call.visible(a, z).float()  # (B|1, 1, c, Nk)
        out[:, :, a:z] = torch.matmul(vis, v) / vis.sum(-1, keepdim=True).clamp_min(1.0)
    return out.to(call.output.dtype)


class HeadAblation(HeadIntervention):
    """Ablate head outputs: ``kind`` in ``zero``, ``mean``, ``uniform`` (see module docstring).

    Args:
        heads: (layer, head) pairs.
        kind: ablation kind.
        phase: ``all``, ``prefill`` or ``decode`` (see :class:`HeadIntervention`).
        means: for ``mean``, a dict (layer, head) -> (D,) mean output; see :meth:`fit_means`.

    Raises:
        ValueError: unknown kind, or ``mean`` without means for every head.
    """

    def __init__(self, heads: Iterable[tuple[int, int]], kind: str = "zero", phase: str = "all",
                 means: dict[tuple[int, int], torch.Tensor] | None = None):
        super().__init__(heads, phase)
        if kind not in KINDS:
            raise ValueError(f"unknown ablation kind {kind!r}: use one of {KINDS}")
        self.kind = kind
        self.means = means or {}
        if kind == "mean":
            missing = [hh for hh in self.heads if hh not in self.means]
            if missing:
                raise ValueError(f"mean ablation needs a mean output for every head; missing {missing[:5]}: "
                                 "use HeadAblation.fit_means(lm, heads, samples)")

    def modify(self, call: AttentionCall, out: torch.Tensor, heads: list[int]) -> None:
        if self.kind == "zero":
            out[:, heads] = 0
        elif self.kind == "mean":
            for h in heads:
                out[:, h] = self.means[(call.layer, h)].to(out.dtype)
        else:
            out[:, heads] = uniform_output(call, heads)

    @staticmethod
    @torch.no_grad()
    def fit_means(lm, heads: Iterable[tuple[int, int]], samples: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """Mean head output z of each head over all positions of ``samples`` (n, N) of real text.

        Returns: dict (layer, head) -> (D,) float32.
        """
        from ..core.tracer import Tracer

        heads = sorted(set(heads))
        layers = sorted({layer for layer, _ in heads})
        tracer = Tracer(lm, layers=layers, z=True)
        total, n = None, 0
        for row in samples:
            tr = tracer.run(row[None])
            zsum = tr["z"].sum(dim=(1, 2))  # (layer, head, d_head)
            total = zsum if total is None else total + zsum
            n += tr["z"].shape[1] * tr["z"].shape[2]
        return {(layer, h): total[layers.index(layer), h] / n for layer, h in heads}
