"""Attention-head workbench: find attention sinks, retrieval heads and vision-aware heads, and intervene.

The path from a prompt to a head score:

1. :func:`load_model` loads a model with the kernel-backed ``"workbench"`` attention
   (:mod:`workbench.core.attention`).
2. :class:`Tracer` (:mod:`workbench.core.tracer`) hooks every attention call and computes the
   requested statistics from q, k and the kernel's log-sum-exp (:mod:`workbench.core.stats`).
3. The result is a :class:`Trace` (:mod:`workbench.core.trace`): named-axis arrays plus metadata.
4. Analyzers (:mod:`workbench.analyzers`) turn traces into pandas DataFrames of per-head scores;
   :mod:`workbench.report` builds the census and report pages from them. ``docs/architecture.md``
   names every module on the way.

The packages are layers; imports point down (``tests/test_layers.py``): :mod:`workbench.cli` and
``dashboards`` -> :mod:`workbench.report`, :mod:`workbench.studies` (and ``circuits``, ``probes``) ->
:mod:`workbench.analyzers`, :mod:`workbench.interventions`, :mod:`workbench.tasks`, :mod:`workbench.demo` ->
:mod:`workbench.core`, :mod:`workbench.io`.
"""
from .core.errors import WorkbenchError
from .core.models import LoadedModel, ModelSpec, load_model
from .core.presets import PRESETS

# The demo models' presets live a layer above the core (workbench.demo), so the package root registers them;
# it runs before any submodule is imported, so every entry point sees the same presets.
PRESETS.register("digits-vlm", lazy="workbench.demo.digits_vlm:PRESET")
PRESETS.register("effnet-smollm2-vqa", lazy="workbench.demo.effnet_vlm:PRESET")

__all__ = ["LoadedModel", "ModelSpec", "WorkbenchError", "load_model", "Trace", "Tracer"]


def __getattr__(name):  # lazy, so that importing the package stays cheap
    if name == "Tracer":
        from .core.tracer import Tracer

        return Tracer
    if name == "Trace":
        from .core.trace import Trace

        return Trace
    raise AttributeError(name)
