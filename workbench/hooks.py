"""Finding a model's decoder layers and naming them with TransformerLens hook names."""
from __future__ import annotations

import torch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder layers of a causal LM or of a VLM's language model.

    Found structurally: the first ``nn.ModuleList`` whose items have a ``self_attn`` child.

    Raises:
        UnsupportedArchitectureError: no such list.
    """
    from .errors import UnsupportedArchitectureError

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and hasattr(mod[0], "self_attn"):
            if "vision" in name or "visual" in name:
                continue
            return mod
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} has no list of decoder layers with a `self_attn` module; the workbench "
        "supports decoder-only transformers and LLaVA-style VLMs built from them"
    )


def hook_name(layer: int, what: str) -> str:
    """TransformerLens hook name: ``what`` in {pattern, z, resid_pre} -> e.g. ``blocks.3.attn.hook_pattern``."""
    return {"pattern": f"blocks.{layer}.attn.hook_pattern", "z": f"blocks.{layer}.attn.hook_z",
            "resid_pre": f"blocks.{layer}.hook_resid_pre"}[what]
