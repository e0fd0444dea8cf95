"""LoRA (Hu et al. 2021) for ``effnet-smollm2-vqa``'s language model: the adapter wrapped around its linear
maps while training, its factors as a state dict, and their merge into the weights at assembly."""
from __future__ import annotations

import math

import torch

LORA_PREFIX = "lora."
LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / r) * x A^T B^T`` (Hu et al. 2021, LoRA eq. 3): A (r, in) seeded Gaussian
    / sqrt(in), B (out, r) zeros, so the wrapped layer starts equal to ``base``; ``base`` stays frozen."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def add_lora(lm_model, first_layer: int, rank: int, alpha: float | None = None) -> dict[str, LoRALinear]:
    """Wrap :data:`LORA_MODULES` of the language model's layers ``first_layer..`` in :class:`LoRALinear`
    (alpha defaults to 2 * rank). Returns {"layers.<i>.<module>": wrapper}."""
    out = {}
    for i, layer in enumerate(lm_model.layers):
        if i < first_layer:
            continue
        for name in LORA_MODULES:
            parent_name, attr = name.split(".")
            parent = getattr(layer, parent_name)
            w = LoRALinear(getattr(parent, attr), rank, float(alpha or 2 * rank))
            setattr(parent, attr, w)
            out[f"layers.{i}.{name}"] = w
    return out


def lora_state(wrappers: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The trained low-rank factors: ``lora.<layers.i.module>.A`` / ``.B`` and their scale ``.scale`` (0-d)."""
    out = {}
    for k, w in wrappers.items():
        out[f"{LORA_PREFIX}{k}.A"] = w.A.detach().clone().contiguous()
        out[f"{LORA_PREFIX}{k}.B"] = w.B.detach().clone().contiguous()
        out[f"{LORA_PREFIX}{k}.scale"] = torch.tensor(w.scale)
    return out


@torch.no_grad()
def merge_lora(lm_model, state: dict[str, torch.Tensor]) -> int:
    """Add ``scale * B @ A`` of every ``lora.*`` entry of ``state`` to the language model's weight
    (in place), so the model stays a plain ``LlavaForConditionalGeneration``. Returns the number of
    merged matrices."""
    n = 0
    for k in state:
        if not (k.startswith(LORA_PREFIX) and k.endswith(".A")):
            continue
        name = k[len(LORA_PREFIX):-2]
        _, i, parent_name, attr = name.split(".")
        lin = getattr(getattr(lm_model.layers[int(i)], parent_name), attr)
        a, b, sc = state[k], state[f"{LORA_PREFIX}{name}.B"], float(state[f"{LORA_PREFIX}{name}.scale"])
        lin.weight += sc * (b.to(lin.weight) @ a.to(lin.weight))
        n += 1
    return n
