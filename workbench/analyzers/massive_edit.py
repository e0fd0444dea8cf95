"""Sun et al.'s intervention test on massive activations (:mod:`workbench.analyzers.massive`): set the massive
entries at their onset layer to zero or to their mean (:class:`MassiveActivationEdit`), the same edit in the
intervention registry, and the held-out perplexity with the entries kept, zeroed or set to their mean.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import pandas as pd
import torch

from ..core.hooks import residual_pre_hooks
from ..core.models import LoadedModel
from ..interventions.registry import InterventionSpec, Param
from .massive_tables import massive_dims, massive_means, onset_layer


class MassiveActivationEdit:
    """Set the massive entries entering ``layer`` to zero or to their mean (Sun et al. 2024, Table 3).

    A forward pre-hook on decoder layer ``layer`` finds the entries of ``dims`` that are massive in the
    incoming residual stream (same criterion as :func:`workbench.analyzers.massive.find_massive`) and overwrites them:
    ``mode="zero"`` sets them to 0, ``mode="mean"`` to ``means[dim]`` (their mean over many sequences,
    see :func:`massive_means`). Everything else is left as it is. Use as a context manager::

        with MassiveActivationEdit(lm, layer=12, dims=[507], mode="zero"):
            nll = lm.model(ids, labels=ids).loss

    Args:
        lm: the model.
        layer: decoder layer whose input is edited (the onset layer of the massive activations).
        dims: residual dimensions to edit.
        mode: ``"zero"`` or ``"mean"``.
        means: dim -> value, required for ``"mean"``.
        threshold, ratio: the massive-activation criterion.

    Raises:
        ValueError: unknown mode, or ``mean`` without a mean per dim.
    """

    def __init__(self, lm: LoadedModel, layer: int, dims: Iterable[int], mode: str = "zero",
                 means: dict[int, float] | None = None, threshold: float = 100.0, ratio: float = 1000.0):
        if mode not in ("zero", "mean"):
            raise ValueError(f"unknown mode {mode!r}: use 'zero' or 'mean'")
        lm.spec.check_head(layer)
        self.lm, self.layer, self.dims, self.mode = lm, layer, sorted(set(int(d) for d in dims)), mode
        self.means = means or {}
        if mode == "mean" and any(d not in self.means for d in self.dims):
            raise ValueError(f"mean mode needs a mean for every dim {self.dims}: use massive_means(df, layer)")
        self.threshold, self.ratio = threshold, ratio
        self.edited = 0  # entries overwritten so far
        self._handle = None

    def _edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().float().abs()
        med = a.flatten(1).median(dim=1).values.clamp_min(1e-12)
        x = x.clone()
        for d in self.dims:
            hit = (a[..., d] > self.threshold) & (a[..., d] / med[:, None] > self.ratio)
            self.edited += int(hit.sum())
            x[..., d] = torch.where(hit, torch.as_tensor(0.0 if self.mode == "zero" else self.means[d], dtype=x.dtype),
                                    x[..., d])
        return x

    def __enter__(self) -> "MassiveActivationEdit":
        self._handle, = residual_pre_hooks(self.lm.model, self._edit, [self.layer])
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def validate(self, spec) -> "MassiveActivationEdit":
        """Check the layer against the model (HeadIndexError). Returns self."""
        spec.check_head(self.layer)
        return self

    @contextlib.contextmanager
    def applied(self) -> Iterator["MassiveActivationEdit"]:
        with self:
            yield self


def _build_edit(lm: LoadedModel, heads, mode: str = "zero", samples: int = 4) -> MassiveActivationEdit:
    """The edit at the onset layer of the massive dims found on ``samples`` 256-token windows of prose.

    Raises:
        WorkbenchError: the model shows no massive activations on that text.
    """
    from ..core.errors import WorkbenchError
    from ..tasks.text import token_windows
    from .massive import massive_activations

    df = massive_activations(lm, token_windows(lm.tokenizer, min(256, lm.spec.context_window or 256), int(samples)),
                             progress=False)
    dims = massive_dims(df)
    layer = onset_layer(df, dims)
    if not dims or layer is None:
        raise WorkbenchError(f"{lm.spec.name} shows no massive activations on prose, so there is nothing to edit")
    return MassiveActivationEdit(lm, layer, dims, mode, massive_means(df, layer))


# The massive-activation edit in the intervention registry (residual stream, no heads).
# (listed in workbench.interventions.registry.INTERVENTIONS)
INTERVENTION = InterventionSpec(
    "massive activation edit",
    "Sun et al. 2024: set the massive residual entries at their onset layer to zero or their mean (heads unused)",
    _build_edit,
    (Param("mode", "choice", "zero", ("zero", "mean"), help="zero: 0; mean: their mean over prose"),
     Param("samples", "int", 4, low=1, high=32, help="256-token windows of prose used to find them")),
    scope="residual")


def intervention_perplexity(lm: LoadedModel, df: pd.DataFrame, heldout: torch.Tensor, dims: Iterable[int] | None = None,
                            layer: int | None = None, batch_size: int = 4, progress: bool = True) -> pd.DataFrame:
    """Sun et al.'s intervention test: perplexity on held-out text with the massive entries kept, zeroed, or
    set to their mean.

    Args:
        df: massive activations found on *other* text (the means come from it), :func:`workbench.analyzers.massive.massive_activations`.
        heldout: (n, N) token ids of held-out text (e.g. ``token_windows(..., split="heldout")``).
        dims: the massive dims (default :func:`massive_dims`).
        layer: the layer whose input is edited (default the onset layer, :func:`onset_layer`).
    Returns:
        DataFrame with rows ``baseline``, ``zero``, ``mean`` and columns ``intervention``, ``layer``, ``dims``,
        ``perplexity``, ``nll``, ``tokens``, ``entries_edited``.
    Raises:
        ValueError: no massive activations in ``df``.
    """
    from ..tasks.perplexity import perplexity

    dims = list(dims) if dims is not None else massive_dims(df)
    layer = onset_layer(df, dims) if layer is None else layer
    if not dims or layer is None:
        raise ValueError("no massive activations were found, so there is nothing to intervene on")
    rows = []
    for mode in ("baseline", "zero", "mean"):
        edit = None
        if mode == "baseline":
            res = perplexity(lm, heldout, batch_size, progress, desc="perplexity: baseline")
        else:
            edit = MassiveActivationEdit(lm, layer, dims, mode, massive_means(df, layer))
            with edit:
                res = perplexity(lm, heldout, batch_size, progress, desc=f"perplexity: {mode}")
        rows.append({"intervention": mode, "layer": layer, "dims": dims, **res,
                     "entries_edited": edit.edited if edit else 0})
    return pd.DataFrame(rows)
