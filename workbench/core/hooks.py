"""Finding a model's decoder layers and naming them with TransformerLens hook names."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

# Name of a decoder layer's self-attention child, by architecture family: Llama, Mistral, Qwen, Gemma,
# Phi-3, OLMo-2, gpt-oss, LLaVA / Qwen2-VL language models (``self_attn``); GPT-2 (``attn``);
# GPT-NeoX (``attention``).
ATTENTION_CHILDREN = ("self_attn", "attn", "attention")


def _attention_child(layer: torch.nn.Module) -> str | None:
    for name in ATTENTION_CHILDREN:
        if isinstance(getattr(layer, name, None), torch.nn.Module):
            return name
    return None


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder layers of a causal LM or of a VLM's language model.

    Found structurally: the first ``nn.ModuleList`` (outside a vision tower) whose items have a
    self-attention child named as in :data:`ATTENTION_CHILDREN` (``self_attn``, ``attn`` or ``attention``).

    Raises:
        UnsupportedArchitectureError: no such list.
    """
    from .errors import UnsupportedArchitectureError

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and _attention_child(mod[0]) is not None:
            if "vision" in name or "visual" in name:
                continue
            return mod
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} has no list of decoder layers with a self-attention module "
        f"({' / '.join(ATTENTION_CHILDREN)}); the workbench supports decoder-only transformers and "
        "LLaVA-style VLMs built from them"
    )


def attention_module(layer: torch.nn.Module) -> torch.nn.Module:
    """The self-attention module of one decoder layer (``self_attn``, ``attn`` or ``attention``).

    Raises:
        UnsupportedArchitectureError: the layer has none of them.
    """
    from .errors import UnsupportedArchitectureError

    name = _attention_child(layer)
    if name is None:
        raise UnsupportedArchitectureError(
            f"decoder layer {type(layer).__name__} has no self-attention child ({' / '.join(ATTENTION_CHILDREN)})"
        )
    return getattr(layer, name)


def hook_name(layer: int, what: str) -> str:
    """TransformerLens hook name: ``what`` in {pattern, z, resid_pre} -> e.g. ``blocks.3.attn.hook_pattern``.

    The names are TransformerLens's whatever the architecture (GPT-2's ``h.3.attn``, GPT-NeoX's
    ``layers.3.attention`` and Llama's ``layers.3.self_attn`` are all ``blocks.3.attn``)."""
    return {"pattern": f"blocks.{layer}.attn.hook_pattern", "z": f"blocks.{layer}.attn.hook_z",
            "resid_pre": f"blocks.{layer}.hook_resid_pre"}[what]


def residual_pre_hooks(model: torch.nn.Module, fn: Callable[[int, torch.Tensor], torch.Tensor | None],
                       layers: Iterable[int] | None = None) -> list:
    """Register ``fn(layer, x)`` as a forward pre-hook on decoder layers (all, or ``layers``), the one way the
    workbench reads or edits the residual stream entering a layer (TransformerLens ``hook_resid_pre``).

    ``x`` is the layer's hidden-state input (B, N, d_model) in the model dtype; a tensor returned by ``fn``
    replaces it, None leaves it. Returns the hook handles: call ``.remove()`` on each to detach them.

    Raises:
        UnsupportedArchitectureError: the model has no decoder layers (:func:`decoder_layers`).
    """
    mods = decoder_layers(model)

    def make(layer: int):
        def pre(module, args, kwargs):
            new = fn(layer, args[0] if args else kwargs["hidden_states"])
            if new is None:
                return None
            if args:
                return (new,) + tuple(args[1:]), kwargs
            return args, dict(kwargs, hidden_states=new)
        return pre

    return [mods[i].register_forward_pre_hook(make(i), with_kwargs=True)
            for i in (range(len(mods)) if layers is None else layers)]
