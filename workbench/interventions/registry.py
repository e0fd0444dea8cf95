"""A registry of interventions by name, so front ends (the dashboard, notebooks) can list and build them.

Each entry is an :class:`InterventionSpec`: a name, a one-line description, the parameters a
user may set (with defaults, for form widgets), its ``scope`` and a ``build(lm, heads, **params)``
function returning an intervention (an object with ``validate(spec)`` and an ``applied()`` context
manager). Scopes: ``"heads"`` (head ablation, ACT: change chosen heads on any text prompt),
``"residual"`` (the massive-activation edit: no heads, edits the residual stream) and ``"vlm-input"``
(VHR, VAR: built for one image+text input, ``build(lm, heads, inp=VLMInput, ...)``). Every intervention
of the workbench is here; the dashboard lists the text ones, ``workbench hallucination`` builds its
VHR/VAR from here, and studies build every condition from here (:func:`study_interventions`: the head
ablation's kinds by kind name and every other ``heads``-scope entry, e.g. ``act calibration``). An
intervention defined in its own module (``INTERVENTION = InterventionSpec(...)`` there) is listed in
:data:`INTERVENTIONS` below by where it lives, and imported when first used::

    INTERVENTIONS.register("act calibration", lazy="workbench.interventions.act:INTERVENTION")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..core.errors import WorkbenchError
from ..core.registry import Registry, UnknownNameError
from .ablation import KINDS, HeadAblation
from .base import PHASES, HeadIntervention


@dataclass(frozen=True)
class Param:
    """One user-settable parameter of an intervention.

    Attributes:
        name: keyword passed to ``build``.
        kind: ``"choice"``, ``"float"``, ``"int"`` or ``"bool"``.
        default: default value.
        choices: the options of a ``choice``.
        low, high: bounds of a number (None = unbounded).
        help: one-line explanation shown beside the widget.
    """

    name: str
    kind: str
    default: Any
    choices: Sequence[Any] = ()
    low: float | None = None
    high: float | None = None
    help: str = ""


SCOPES = ("heads", "residual", "vlm-input")


@dataclass(frozen=True)
class InterventionSpec:
    """A named intervention: ``build(lm, heads, **params)`` -> an intervention with ``validate`` and ``applied``.

    ``scope`` (see the module docstring): ``heads``, ``residual`` or ``vlm-input``."""

    name: str
    description: str
    build: Callable[..., HeadIntervention]
    params: tuple[Param, ...] = field(default_factory=tuple)
    scope: str = "heads"

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


class UnknownInterventionError(UnknownNameError):
    """The intervention name is not registered."""


# Every intervention of the workbench (the head ablation is defined below).
INTERVENTIONS: Registry[InterventionSpec] = Registry("intervention", error=UnknownInterventionError)


def register_intervention(spec: InterventionSpec) -> None:
    """Add (or replace) an intervention under ``spec.name`` (for one defined outside the workbench)."""
    INTERVENTIONS.register(spec.name, spec, replace=True)


def available_interventions() -> dict[str, InterventionSpec]:
    """Every registered intervention by name (an entry whose module cannot be imported is left out)."""
    out = {}
    for name in INTERVENTIONS.names():
        try:
            out[name] = INTERVENTIONS.get(name)
        except ImportError:
            continue
    return out


def build_intervention(name: str, lm, heads: Sequence[tuple[int, int]] = (), inp=None, **params) -> HeadIntervention:
    """Build the registered intervention ``name`` for ``heads`` with ``params`` (defaults fill the rest).

    Args:
        heads: (layer, head) pairs, for ``heads``-scope interventions (ignored by the others).
        inp: the :class:`~workbench.core.vlm.VLMInput`, for ``vlm-input``-scope interventions.

    Raises:
        UnknownInterventionError: ``name`` is not registered.
        HeadIndexError: a head lies outside ``lm``.
        WorkbenchError: no heads given (heads scope), no input given (vlm-input scope), unknown parameters.
    """
    spec = INTERVENTIONS.get(name)
    if spec.scope == "heads" and not heads:
        raise WorkbenchError("choose at least one (layer, head) to intervene on, e.g. 3.1")
    if spec.scope == "vlm-input" and inp is None:
        raise WorkbenchError(f"intervention {name!r} is built for one image+text input: pass inp=VLMInput")
    unknown = set(params) - {p.name for p in spec.params}
    if unknown:
        raise WorkbenchError(f"intervention {name!r} has no parameters {sorted(unknown)}; it takes {[p.name for p in spec.params]}")
    kwargs = {**spec.defaults(), **params}
    for layer, h in heads:
        lm.spec.check_head(layer, h)
    if spec.scope == "vlm-input":
        kwargs["inp"] = inp
    return spec.build(lm, list(heads), **kwargs).validate(lm.spec)


def study_interventions() -> dict[str, tuple[str, dict]]:
    """What a study's ``ablations`` list may name: name -> (registered intervention, parameters it fixes).

    Each kind of the ``head ablation`` entry by its kind (``zero``, ``mean``, ``uniform``, fixing ``kind``),
    then every other ``heads``-scope intervention by its registered name (its defaults; a study sets the
    ``phase`` of those that take one). A newly registered heads-scope intervention is available to studies
    without further code.
    """
    specs = available_interventions()
    kinds = next(p.choices for p in specs["head ablation"].params if p.name == "kind")
    out = {k: ("head ablation", {"kind": k}) for k in kinds}
    out.update({n: (n, {}) for n, s in specs.items() if s.scope == "heads" and n != "head ablation"})
    return out


def _build_ablation(lm, heads, kind: str = "zero", phase: str = "all", mean_samples: int = 4,
                    means: dict | None = None) -> HeadAblation:
    """The ``head ablation`` entry; ``means`` (fitted elsewhere, e.g. once per study) skips fitting them here."""
    if kind == "mean" and means is None:
        from ..tasks.text import token_windows

        means = HeadAblation.fit_means(lm, heads, token_windows(lm.tokenizer, 128, int(mean_samples), "train"))
    return HeadAblation(heads, kind=kind, phase=phase, means=means)


INTERVENTIONS.register("head ablation", InterventionSpec(
    "head ablation",
    "replace the head output z: zero, mean over real text, or uniform attention over visible keys (Wu et al. 2024)",
    _build_ablation,
    (Param("kind", "choice", "zero", KINDS, help="zero: z=0; mean: mean z over prose; uniform: mean of visible values"),
     Param("phase", "choice", "all", PHASES, help="all positions, the prompt only, or generated tokens only"),
     Param("mean_samples", "int", 4, low=1, high=64, help="128-token windows of prose used to fit mean outputs")),
))
INTERVENTIONS.register("act calibration", lazy="workbench.interventions.act:INTERVENTION")
INTERVENTIONS.register("var", lazy="workbench.interventions.var:INTERVENTION")
INTERVENTIONS.register("vhr", lazy="workbench.interventions.vhr:INTERVENTION")
INTERVENTIONS.register("massive activation edit", lazy="workbench.analyzers.massive:INTERVENTION")
