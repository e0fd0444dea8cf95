"""Models a researcher already holds: a transformers model, an nnsight ``LanguageModel`` (or any nnsight
``TransformersModel``) and a TransformerLens ``TransformerBridge`` become the same
:class:`~workbench.core.models.LoadedModel` that :func:`workbench.load_model` gives for a name, so every
analyzer, intervention and the :class:`~workbench.core.tracer.Tracer` work on them unchanged.

* **transformers** ``PreTrainedModel`` (with its tokenizer): the model itself, switched to the workbench
  attention (``set_attn_implementation("workbench")``; a VLM's vision tower keeps SDPA).
* **nnsight**: the wrapped transformers model (``model._module``, dispatched first if it was built lazily
  on the meta device) and the wrapper's tokenizer. nnsight's envoys only act inside its own
  ``trace()`` blocks, so the module behaves as the plain model outside them.
* **TransformerLens** ``TransformerBridge``: the bridge replaces the model's blocks by its own components
  and computes attention itself, outside transformers' attention interface, so the workbench could not
  see it there. We build a fresh instance of the bridged transformers class from the bridge's config and
  give it the bridge's own parameter tensors (``load_state_dict(assign=True)``: shared, not copied; the
  bridge's ``_original_component`` wrappers are looked through to find them). The bridge itself is not
  changed.

In the first two cases the user's model object is switched to the workbench attention in place: its
outputs are unchanged (the workbench kernel equals SDPA to rounding), and only workbench hooks read it.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import WorkbenchError

_WRAPPER = "._original_component"


def _unbridge(bridge: Any) -> torch.nn.Module:
    """A plain transformers model sharing the TransformerBridge's weights (module docstring)."""
    hf = bridge.original_model
    with torch.no_grad():
        model = type(hf)._from_config(hf.config, dtype=next(hf.parameters()).dtype)
    want = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        plain = key.replace(_WRAPPER, "")
        if plain in want and plain not in state:
            state[plain] = value
    missing = sorted(set(want) - set(state))
    if missing:
        from .errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"cannot find {missing[0]} (and {len(missing) - 1} more) among the TransformerBridge's weights: pass "
            "the transformers model the bridge was booted from instead")
    model.load_state_dict(state, assign=True)
    return model.to(next(hf.parameters()).device)


def from_object(obj: Any, tokenizer: Any = None, name: str | None = None):
    """The :class:`~workbench.core.models.LoadedModel` of a model object (module docstring).

    Args:
        obj: a transformers ``PreTrainedModel``, an nnsight ``LanguageModel`` / ``TransformersModel``, or a
            TransformerLens ``TransformerBridge``.
        tokenizer: the tokenizer (needed for a plain transformers model; the wrappers carry theirs).
        name: the model's name in reports (default: the checkpoint's ``name_or_path``, else the class name).
    Returns:
        LoadedModel in eval mode on the object's device and dtype, with the workbench attention.
    Raises:
        WorkbenchError: no tokenizer, or not a model object.
        UnsupportedArchitectureError: an architecture the workbench cannot trace (as for :func:`load_model`).
    """
    from .attention import register_attention
    from .models import ATTN_IMPLEMENTATION, LoadedModel, ModelSpec
    from .support import _check_config, _check_supported

    kind = type(obj).__module__.split(".")[0]
    if kind == "transformer_lens" and hasattr(obj, "original_model"):
        model, tok = _unbridge(obj), tokenizer or obj.tokenizer
    elif kind == "nnsight":
        if not getattr(obj, "dispatched", True):
            obj.dispatch()
        model, tok = obj._module, tokenizer or getattr(obj, "tokenizer", None)
    elif isinstance(obj, torch.nn.Module) and hasattr(obj, "config"):
        model, tok = obj, tokenizer
    else:
        raise WorkbenchError(f"cannot load a {type(obj).__name__}: give a model name or path, a transformers model "
                             "with its tokenizer, an nnsight LanguageModel or a TransformerLens TransformerBridge")
    if tok is None:
        raise WorkbenchError(f"the {type(obj).__name__} comes without a tokenizer: pass tokenizer=... to load_model")
    label = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    _check_config(model.config, label)
    register_attention()
    is_vlm = hasattr(model.config, "vision_config")
    model.set_attn_implementation({"text_config": ATTN_IMPLEMENTATION, "vision_config": "sdpa"} if is_vlm
                                  else ATTN_IMPLEMENTATION)
    _check_supported(model, label)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=ModelSpec.from_config(label, model.config))
