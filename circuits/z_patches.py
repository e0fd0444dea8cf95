"""Head-output (z) patches and the forward passes they run in: the logit-difference metric and its normalised
form, a forward that caches every head's z, skipping layers whose input is known, and the hooks that
replace chosen heads' z (:class:`ZPatch`) or patch many replicas in one batched pass (:class:`ReplicaZPatch`)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch

from workbench.core.attention import AttentionCall
from workbench.core.hooks import decoder_layers
from workbench.core.models import LoadedModel
from workbench.core.tracer import Tracer
from workbench.interventions import HeadIntervention

Head = tuple[int, int]
ZCache = dict[int, torch.Tensor]  # layer -> (B, Hq, N, D)


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``logit[answer] - logit[wrong]`` at the last position: logits (B, N, V), ids (B,) -> (B,)."""
    last = logits[:, -1].float()
    return last.gather(1, answer[:, None])[:, 0] - last.gather(1, wrong[:, None])[:, 0]


def normalised(ld_patched: float, ld_clean: float, ld_corr: float) -> float:
    """(LD_patched - LD_corr) / (LD_clean - LD_corr) (Wang et al. 2022; Merullo et al. 2024)."""
    return (ld_patched - ld_corr) / (ld_clean - ld_corr)


@torch.no_grad()
def run_with_z(lm: LoadedModel, ids: torch.Tensor, resid: bool = False):
    """One forward pass: (logits (B, N, V), z cache layer -> (B, Hq, N, D)) via ``Tracer(z=True)``.

    With ``resid=True`` also returns the residual stream entering each layer, (L, B, N, d_model).
    """
    tracer = Tracer(lm, z=True, resid_pre=resid)
    with tracer:
        logits = lm.model(input_ids=ids, use_cache=False).logits
    tr = tracer.trace()
    z = tr["z"]  # (layer, batch, query, head, d_head)
    zc = {layer: z[i].transpose(1, 2).contiguous() for i, layer in enumerate(tracer.layers)}
    return (logits, zc, tr["resid_pre"]) if resid else (logits, zc)


@contextlib.contextmanager
def start_at(lm: LoadedModel, layer: int, resid: torch.Tensor | None):
    """Skip decoder layers ``0..layer-1``: the first returns ``resid`` (the known residual stream entering
    ``layer``, (B, N, d_model)) and the others pass it through. Exact whenever those layers would
    compute exactly that (e.g. nothing before ``layer`` is patched); it only saves time."""
    if resid is None or layer <= 0:
        yield
        return
    layers = decoder_layers(lm.model)
    saved = [layers[i].__dict__.get("forward") for i in range(layer)]
    layers[0].forward = lambda hidden_states, *a, **k: resid.to(hidden_states.dtype)
    for i in range(1, layer):
        layers[i].forward = lambda hidden_states, *a, **k: hidden_states
    try:
        yield
    finally:
        for i, f in enumerate(saved):
            if f is None:
                del layers[i].forward
            else:
                layers[i].forward = f


def _forward_last(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position only, (B, 1, V) (the metric needs no other)."""
    return lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits


class ZPatch(HeadIntervention):
    """Replace the z of chosen heads by cached values (activation patching).

    Args:
        heads: (layer, head) pairs to patch.
        source: layer -> (B, Hq, N, D) z from another run (e.g. :func:`run_with_z`), or a
            :class:`~workbench.core.trace.Trace` recorded with ``z=True``. B must equal the patched batch.
        positions: query positions to patch (default all).

    Raises:
        ValueError: shapes of source and the patched call disagree (raised during the forward pass).
    """

    def __init__(self, heads: Iterable[Head], source, positions: Sequence[int] | None = None, phase: str = "all"):
        super().__init__(heads, phase)
        if not isinstance(source, dict):  # a Trace
            z = source["z"]
            source = {layer: z[i].transpose(1, 2) for i, layer in enumerate(source.layers)}
        self.source = source
        self.positions = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)

    def modify(self, call: AttentionCall, out: torch.Tensor, heads: list[int]) -> None:
        src = self.source[call.layer]
        if src.shape[0] != out.shape[0] or src.shape[2] != out.shape[2]:
            raise ValueError(f"cached z of layer {call.layer} has batch x positions {src.shape[0]} x {src.shape[2]} "
                             f"but the patched run has {out.shape[0]} x {out.shape[2]}")
        for h in heads:
            if self.positions is None:
                out[:, h] = src[:, h].to(out.dtype)
            else:
                out[:, h, self.positions] = src[:, h, self.positions].to(out.dtype)


class ReplicaZPatch(HeadIntervention):
    """Different z patches on replicas of one batch (several patching experiments per forward pass).

    The patched batch is ``n_rep`` copies of a base batch of size B stacked along the batch axis;
    replica r covers rows ``r*B:(r+1)*B``.

    Args:
        n_rep: number of replicas.
        patches: per replica, a dict (layer, head) -> (B, N, D) z to write.
        freeze: optional layer -> (B, Hq, N, D) z written to **every** head of every replica
            before ``patches`` (path patching's freezing).
        record: heads whose recomputed z (before freezing or patching) is kept in
            ``recorded[r][(layer, head)]`` (B, N, D).
    """

    def __init__(self, n_rep: int, patches: Sequence[dict[Head, torch.Tensor]], freeze: ZCache | None = None,
                 record: Iterable[Head] = ()):
        record = set(record)
        heads = set(record) | {hh for p in patches for hh in p}
        if freeze is not None:
            n_heads = next(iter(freeze.values())).shape[1]
            heads |= {(layer, h) for layer in freeze for h in range(n_heads)}
        super().__init__(heads)
        if len(patches) != n_rep:
            raise ValueError(f"{len(patches)} patches for {n_rep} replicas")
        self.n_rep, self.patches, self.freeze, self.record = n_rep, patches, freeze, record
        self.recorded: list[dict[Head, torch.Tensor]] = [{} for _ in range(n_rep)]

    def modify(self, call: AttentionCall, out: torch.Tensor, heads: list[int]) -> None:
        layer = call.layer
        b = out.shape[0] // self.n_rep
        for r in range(self.n_rep):
            rows = slice(r * b, (r + 1) * b)
            for h in heads:
                if (layer, h) in self.record:
                    self.recorded[r][(layer, h)] = call.output[rows, h].clone()
            if self.freeze is not None:
                out[rows] = self.freeze[layer].to(out.dtype)
            for (pl, ph), z in self.patches[r].items():
                if pl == layer:
                    out[rows, ph] = z.to(out.dtype)
