"""Vision-aware head reinforcement (VHR; He et al. 2025, "Cracking the code of hallucination in
LVLMs with vision-aware head divergence").

Per input, at the first generated token (the last prompt position) and layer by layer:

1. VHD of every head of the layer: ||z_image - z_text||_2, where z_text comes from the matched
   text-only pass (image tokens removed) and z_image from the running pass with the image, which
   already carries the reinforcement of the earlier layers (that is what layer-by-layer means:
   one pass, each layer selects after the layers before it were reinforced);
2. outlier filter: heads whose VHD and text-only output norm both exceed mean + std of the layer
   get VHD 0;
3. heads with VHD above the layer median are selected and their output z is scaled by alpha (2).

The selection is made once, at the first generated token, and kept for every later token.
Only the current position's output is scaled (the last prompt row at prefill, each new row while
decoding); the prompt's own positions and hence its KV cache are left as they were.

Layers: He et al. use the second layer plus the last 14 of LLaVA-1.5's 32; :func:`default_layers`
keeps layer 1 plus the same share (14/32) of the last layers of any depth.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..core.attention import AttentionCall
from ..core.errors import WorkbenchError
from .base import LayerIntervention
from .registry import InterventionSpec, Param

ALPHA = 2.0


def default_layers(n_layers: int) -> list[int]:
    """Layer 1 plus the last round(14/32 * n_layers) layers (He et al.'s choice for LLaVA-1.5, scaled)."""
    k = max(1, round(14 * n_layers / 32))
    return sorted({1} | set(range(n_layers - k, n_layers)))


def select_heads(vhd: torch.Tensor, text_norm: torch.Tensor) -> torch.Tensor:
    """VHR's head selection for one layer.

    Args:
        vhd: (H,) VHD of the layer's heads; text_norm: (H,) text-only output norms.
    Returns:
        (H,) bool: selected heads (VHD above the layer median after zeroing outliers, i.e. heads whose
        VHD and text norm both exceed mean + std of the layer).
    """
    v = vhd.float().clone()
    outlier = (v > v.mean() + v.std()) & (text_norm > text_norm.mean() + text_norm.std())
    v[outlier] = 0
    return v > v.median()


class VisionAwareHeadReinforcement(LayerIntervention):
    """VHR as an attention hook (see module docstring).

    Args:
        z_text: (n_layers, n_heads, head_dim) head outputs of the text-only pass at the first
            generation position (:meth:`prepare` computes it).
        layers: layers to reinforce (default :func:`default_layers`).
        alpha: scale of the selected heads' outputs.

    Attributes:
        selected: layer -> (H,) bool, filled during the prefill call.
        vhd: layer -> (H,) VHD at the first generated token.
    """

    def __init__(self, z_text: torch.Tensor, layers: Iterable[int] | None = None, alpha: float = ALPHA):
        self.z_text = z_text
        n_layers = z_text.shape[0]
        self.layers = set(default_layers(n_layers) if layers is None else layers)
        self.alpha = alpha
        self.selected: dict[int, torch.Tensor] = {}
        self.vhd: dict[int, torch.Tensor] = {}

    @classmethod
    @torch.no_grad()
    def prepare(cls, lm, inp, layers: Iterable[int] | None = None, alpha: float = ALPHA) -> "VisionAwareHeadReinforcement":
        """Run the text-only pass of ``inp`` (a :class:`~workbench.core.vlm.VLMInput`) and build the hook."""
        from ..analyzers.vision import head_outputs
        from ..core.vlm import text_only

        txt = text_only(lm.model, inp)
        z = head_outputs(lm, txt, torch.tensor([txt.input_ids.shape[1] - 1]))[0]
        return cls(z, layers, alpha)

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        layer = call.layer
        if layer not in self.layers:
            return None
        if call.query.shape[0] != 1:
            raise WorkbenchError(f"VHR selects heads for one input at a time (against its text-only pass), got a batch "
                                 f"of {call.query.shape[0]}: run the inputs one by one")
        out = call.output.clone()
        if call.q_offset == 0:  # prefill: select at the first generation position, layer by layer
            z_img = out[0, :, -1].float()  # (H, D)
            zt = self.z_text[layer].to(z_img)
            v = (z_img - zt).norm(dim=-1)
            self.vhd[layer] = v
            self.selected[layer] = select_heads(v, zt.norm(dim=-1))
            sel = self.selected[layer]
            out[:, sel, -1] = out[:, sel, -1] * self.alpha
        else:
            sel = self.selected.get(layer)
            if sel is None:
                return None
            out[:, sel] = out[:, sel] * self.alpha
        return out



# VHR in the intervention registry (built per image+text input).
# (listed in workbench.interventions.registry.INTERVENTIONS)
INTERVENTION = InterventionSpec(
    "vhr", "VHR (He et al. 2025): scale the vision-aware heads' outputs at the generated tokens by alpha",
    lambda lm, heads, inp, alpha=ALPHA: VisionAwareHeadReinforcement.prepare(lm, inp, alpha=alpha),
    (Param("alpha", "float", ALPHA, low=0.0, help="scale of the selected heads' outputs"),),
    scope="vlm-input")
