"""Attention-head workbench: find attention sinks, retrieval heads and vision-aware heads, and intervene.

The path from a prompt to a head score:

1. :func:`load_model` loads a model with the kernel-backed ``"workbench"`` attention
   (:mod:`workbench.core.attention`).
2. :class:`Tracer` (:mod:`workbench.core.tracer`) hooks every attention call and computes the
   requested statistics from q, k and the kernel's log-sum-exp (:mod:`workbench.core.stats`).
3. The result is a :class:`Trace` (:mod:`workbench.core.trace`): named-axis arrays plus metadata.
4. Analyzers (e.g. :mod:`workbench.report.census`) turn traces into pandas DataFrames of per-head scores.
"""
from .core.errors import WorkbenchError
from .core.models import LoadedModel, ModelSpec, load_model

__all__ = ["LoadedModel", "ModelSpec", "WorkbenchError", "load_model", "Trace", "Tracer"]


def __getattr__(name):  # lazy, so that importing the package stays cheap
    if name == "Tracer":
        from .core.tracer import Tracer

        return Tracer
    if name == "Trace":
        from .core.trace import Trace

        return Trace
    raise AttributeError(name)
