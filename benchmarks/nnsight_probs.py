"""nnsight reference: save every layer's attention probabilities (needs eager attention).

nnsight compiles the body of a ``with model.trace(...)`` block from its source file, so this
lives in a module of its own rather than in an inline script.
"""
from __future__ import annotations

import torch


def save_attention_probs(nnmodel, ids: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """Run ``ids`` through an nnsight ``TransformersModel`` and return [(B, H, N, N)] per layer.

    The probabilities are the second output of the attention interface call inside each
    Llama attention module (``.source.attention_interface_1``), as nnsight exposes it.
    """
    saved = []
    with torch.no_grad(), nnmodel.trace(ids):
        for layer in range(n_layers):
            saved.append(nnmodel.model.layers[layer].self_attn.source.attention_interface_1.output[1].save())
    return [s if isinstance(s, torch.Tensor) else s.value for s in saved]
