"""Base class of head interventions: head selection, phase selection, validation."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterable, Iterator

import torch

from ..attention import AttentionCall, attention_hooks
from ..models import ModelSpec

PHASES = ("all", "prefill", "decode")


class HeadIntervention:
    """Replace the output ``z`` of selected heads; subclasses implement :meth:`modify`.

    Args:
        heads: (layer, head) pairs to intervene on.
        phase: ``"all"``, ``"prefill"`` (calls without a KV cache) or ``"decode"`` (calls whose
            queries follow cached keys, i.e. generation steps), as in Wu et al. 2024's
            decoding-only masking.

    Raises:
        ValueError: unknown phase.
    """

    def __init__(self, heads: Iterable[tuple[int, int]], phase: str = "all"):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: use one of {PHASES}")
        self.heads = sorted({(int(layer), int(h)) for layer, h in heads})
        self.phase = phase
        self._by_layer: dict[int, list[int]] = defaultdict(list)
        for layer, h in self.heads:
            self._by_layer[layer].append(h)

    def validate(self, spec: ModelSpec) -> "HeadIntervention":
        """Check every (layer, head) against the model; raises HeadIndexError. Returns self."""
        for layer, h in self.heads:
            spec.check_head(layer, h)
        return self

    def _phase_ok(self, call: AttentionCall) -> bool:
        decoding = call.q_offset > 0
        return self.phase == "all" or (self.phase == "decode") == decoding

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        heads = self._by_layer.get(call.layer)
        if not heads or not self._phase_ok(call):
            return None
        out = call.output.clone()
        self.modify(call, out, heads)
        return out

    def modify(self, call: AttentionCall, out: torch.Tensor, heads: list[int]) -> None:
        """Write the new outputs of ``heads`` into ``out`` (B, Hq, Nq, D) in place."""
        raise NotImplementedError

    @contextlib.contextmanager
    def applied(self) -> Iterator["HeadIntervention"]:
        """Context manager: the intervention is active for every forward pass inside."""
        with attention_hooks(self):
            yield self
