"""Base classes of interventions: head interventions (head and phase selection, validation) and layer
interventions (VAR, VHR: layer selection, validation)."""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterable, Iterator

import torch

from ..core.attention import AttentionCall, attention_hooks
from ..core.errors import HeadIndexError, UnsupportedArchitectureError, WorkbenchError
from ..core.models import ModelSpec

PHASES = ("all", "prefill", "decode")


class HeadIntervention:
    """Replace the output ``z`` of selected heads; subclasses implement :meth:`modify`.

    Args:
        heads: (layer, head) pairs to intervene on.
        phase: ``"all"``, ``"prefill"`` (calls without a KV cache) or ``"decode"`` (calls whose
            queries follow cached keys, i.e. generation steps), as in Wu et al. 2024's
            decoding-only masking.

    Inside :meth:`applied`, an intervention that changed nothing is an error, raised when the block
    ends: no attention call at all (the model does not run its attention through the workbench
    kernel), its layers never ran (they do not exist), or no call of its phase ran (e.g. ``decode``
    on a single forward pass). A head index past a layer's heads raises at the call.

    Raises:
        ValueError: unknown phase.
        UnsupportedArchitectureError, HeadIndexError, WorkbenchError: the intervention changed nothing
            (see above), when the ``applied()`` block ends.
    """

    def __init__(self, heads: Iterable[tuple[int, int]], phase: str = "all"):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: use one of {PHASES}")
        self.heads = sorted({(int(layer), int(h)) for layer, h in heads})
        self.phase = phase
        self._by_layer: dict[int, list[int]] = defaultdict(list)
        for layer, h in self.heads:
            self._by_layer[layer].append(h)
        self._seen_layers: set[int] = set()
        self._changed_calls = 0

    def validate(self, spec: ModelSpec) -> "HeadIntervention":
        """Check every (layer, head) against the model; raises HeadIndexError. Returns self."""
        for layer, h in self.heads:
            spec.check_head(layer, h)
        return self

    def _phase_ok(self, call: AttentionCall) -> bool:
        decoding = call.q_offset > 0
        return self.phase == "all" or (self.phase == "decode") == decoding

    def _note_call(self, call: AttentionCall) -> list[int] | None:
        """Record that ``call`` ran (for :meth:`check_changed`); the heads of this layer to change, if any.

        Raises:
            HeadIndexError: a head to change does not exist in this layer.
        """
        self._seen_layers.add(call.layer)
        heads = self._by_layer.get(call.layer)
        if heads:
            hq = call.query.shape[1]
            if heads[-1] >= hq:
                raise HeadIndexError(f"head {heads[-1]} of layer {call.layer} does not exist: the layer has heads "
                                     f"0..{hq - 1}; choose heads in that range")
            if self._phase_ok(call):
                self._changed_calls += 1
        return heads

    def check_changed(self) -> None:
        """Raise if no attention call since the last :meth:`applied` block began was one this intervention
        changes, naming why (see the class docstring)."""
        if self._changed_calls:
            return
        if not self._seen_layers:
            raise UnsupportedArchitectureError(
                f"{type(self).__name__} saw no attention call: the model does not run its attention through the "
                "workbench kernel (load it with workbench.load_model), or no forward pass ran inside the block")
        missing = sorted(set(self._by_layer) - self._seen_layers)
        if missing:
            raise HeadIndexError(
                f"{type(self).__name__}: layers {missing} never ran (the model ran layers {min(self._seen_layers)}.."
                f"{max(self._seen_layers)}): choose layers that exist")
        raise WorkbenchError(
            f"{type(self).__name__} with phase={self.phase!r} changed nothing: no "
            f"{'decode step (a call with a KV cache)' if self.phase == 'decode' else 'prefill call'} ran inside the "
            "block; use generate() / a KV cache for phase 'decode', or phase 'all'")

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        heads = self._note_call(call)
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
        """Context manager: the intervention is active for every forward pass inside.

        Raises (when the block ends without an exception): see :meth:`check_changed`."""
        self._seen_layers, self._changed_calls = set(), 0
        with attention_hooks(self):
            yield self
        self.check_changed()


class LayerIntervention:
    """Base of the attention hooks that choose layers rather than heads (VAR, VHR): subclasses set
    ``self.layers`` (decoder-layer indices) and implement ``on_attention``; :meth:`_contexts` names what
    :meth:`applied` activates (default: the attention hook alone)."""

    layers: set[int]

    def validate(self, spec: ModelSpec) -> "LayerIntervention":
        """Check the layers against the model. Returns self.

        Raises:
            HeadIndexError: a layer is out of range.
        """
        for layer in sorted(self.layers):
            spec.check_head(layer)
        return self

    def _contexts(self) -> list:
        return [attention_hooks(self)]

    @contextlib.contextmanager
    def applied(self) -> Iterator["LayerIntervention"]:
        """Context manager: the intervention is active for every forward pass inside the block."""
        with contextlib.ExitStack() as stack:
            for ctx in self._contexts():
                stack.enter_context(ctx)
            yield self
