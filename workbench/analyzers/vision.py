"""Vision-aware heads, visual attention sinks and image-centric heads of a vision-language model.

Definitions (docs/methods.md#vision-aware-heads-vhd-and-t-vhd, #visual-sinks, #image-centric-heads):

* **Vision-aware head divergence** (He et al. 2025, "Cracking the code of hallucination in LVLMs
  with vision-aware head divergence"): for head (l, h) at a generation step, the Euclidean
  distance between its output z[l, h] (TransformerLens ``hook_z``, before W_O) at the current
  position computed with the image and computed in the matched pass with the image tokens
  removed (:func:`workbench.core.vlm.text_only`). Step 0 is the first generated token (the last prompt
  position); step t is the position that predicts the (t+1)-th answer token, the answer tokens
  being teacher-forced in both passes.
* **T-VHD** (token-level VHD, same paper): the sum of VHD over all heads of all layers at one
  generation step; it measures how much the whole model's attention output at that token depends
  on the image. (The paper names T-VHD without a formula; this is our reading: the sum over
  heads. Any monotone aggregate ranks tokens the same way.)
* **Sink tokens** (Kang et al. 2025, "See what you are told: visual attention sink in large
  multimodal models"): phi(x) = max over the backbone's sink dimensions d of |x_d / rms(x)| on the
  residual stream entering a layer; a token is a sink at that layer if phi >= tau (20). The sink
  dimensions are the massive-activation dimensions of the base language model (note
  phi <= sqrt(d_model): 24 for SmolLM2's 576, so tau = 20 asks that one sink dimension hold
  about 70% of the token's squared norm, against 10% in LLaVA-1.5's 4096), found by
  :func:`workbench.analyzers.massive.massive_activations` on real text; nothing is hard-coded. **Visual
  sinks** are sink tokens inside the image span.
* **Image-centric heads** (same paper), per layer, head and query: total attention on image tokens
  A_I >= 0.2 and visual non-sink ratio (attention on non-sink image tokens / A_I) >= rho
  (0.5 for hallucination tasks).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.attention import AttentionCall, attention_hooks
from ..core.errors import WorkbenchError
from ..core.hooks import residual_pre_hooks
from ..core.models import LoadedModel
from ..core.vlm import VLMInput, image_positions, position_map
from .vhd import head_outputs, head_vhd, require_single, t_vhd, vhd_steps, vhd_table, vision_aware_heads  # noqa: F401

TAU = 20.0  # sink threshold on phi (Kang et al. 2025)
SUMM = 0.2  # image attention an image-centric head needs
RHO = 0.5  # non-sink share of that image attention (hallucination tasks)


def image_centric(a_img: torch.Tensor, a_nonsink: torch.Tensor, summ: float = SUMM, rho: float = RHO) -> torch.Tensor:
    """Kang et al.'s image-centric test, elementwise: A_I >= ``summ`` and A_I' >= ``rho`` * A_I, where A_I is
    the attention on image tokens and A_I' the part of it on non-sink image tokens (any equal shapes; bool).
    The one definition used by :func:`image_attention_table` and by VAR (:mod:`workbench.interventions.var`)."""
    return (a_img >= summ) & (a_nonsink >= rho * a_img)


# --- sink dimensions, sink tokens, visual sinks ------------------------------------------------------


def sink_dimensions(lm: LoadedModel, n_samples: int = 4, seq_len: int = 64, min_fraction: float = 0.5,
                    progress: bool = False) -> tuple[list[int], pd.DataFrame]:
    """The backbone's massive-activation dimensions (Sun et al. 2024) on real text, via our analyzer.

    Runs :func:`workbench.analyzers.massive.massive_activations` on text windows of ``pydoc_data`` prose
    (text-only input; for a VLM that is exactly its language model) and keeps the dimensions
    with a massive entry in at least ``min_fraction`` of the samples (:func:`workbench.analyzers.massive.massive_dims`).

    Returns:
        (dims, the massive-activation DataFrame)
    """
    from .massive import massive_activations, massive_dims
    from ..tasks.text import token_windows

    samples = token_windows(lm.tokenizer, seq_len, n_samples, split="heldout")
    df = massive_activations(lm, samples, progress=progress)
    return massive_dims(df, min_fraction), df


def sink_scores(hidden: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """phi(x) = max_{d in dims} |x_d| / rms(x) for hidden states (..., d_model): shape (...)."""
    x = hidden.float()
    rms = x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    return (x[..., list(dims)].abs() / rms).amax(-1)


class SinkDetector:
    """Forward pre-hooks on the decoder layers that mark sink tokens (phi >= tau) as the model runs.

    ``self.sinks[layer]`` is a (B, N) bool tensor over all positions seen so far (prefill, then one
    column per decoding step), so interventions at that layer's attention know the sinks of its keys.
    """

    def __init__(self, lm: LoadedModel, dims: Sequence[int], tau: float = TAU):
        if not dims:
            raise ValueError("no sink dimensions: run sink_dimensions() on the backbone first")
        self.lm, self.dims, self.tau = lm, list(dims), tau
        self.sinks: dict[int, torch.Tensor] = {}
        self.phi: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _record(self, layer: int, x: torch.Tensor) -> None:
        phi = sink_scores(x, self.dims)
        if layer in self.sinks and x.shape[1] == 1 and self.sinks[layer].shape[1] > 0:  # decoding: append
            self.phi[layer] = torch.cat([self.phi[layer], phi], 1)
        else:
            self.phi[layer] = phi
        self.sinks[layer] = self.phi[layer] >= self.tau

    def __enter__(self) -> "SinkDetector":
        self.sinks, self.phi = {}, {}
        self._handles = residual_pre_hooks(self.lm.model, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def sink_table(lm: LoadedModel, inputs: Sequence[VLMInput], dims: Sequence[int], tau: float = TAU,
               progress: bool = False) -> pd.DataFrame:
    """phi of every image token and every sink token at every layer.

    Returns:
        DataFrame (sample, layer, pos, image_index (-1 outside the image), token, phi, sink) with one
        row per image token and per text token that is a sink.
    """
    rows = []
    for s, inp in enumerate(tqdm(inputs, desc="sinks", disable=not progress)):
        require_single(inp)
        img = image_positions(lm.model, inp.input_ids)
        where = {int(p): i for i, p in enumerate(img)}
        det = SinkDetector(lm, dims, tau)
        with det:
            lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs())
        toks = lm.tokenizer.convert_ids_to_tokens(inp.input_ids[0].tolist())
        for layer, phi in det.phi.items():
            for pos in range(phi.shape[1]):
                v = float(phi[0, pos])
                if pos in where or v >= tau:
                    rows.append((s, layer, pos, where.get(pos, -1), toks[pos], v, v >= tau))
    return pd.DataFrame(rows, columns=["sample", "layer", "pos", "image_index", "token", "phi", "sink"])


def visual_sink_summary(df: pd.DataFrame, min_layers: int = 2) -> pd.DataFrame:
    """Visual sinks per image-token index: in how many samples it is a sink at >= ``min_layers`` layers.

    Returns DataFrame (image_index, n_samples_sink, share, mean_phi, max_phi) sorted by share.
    """
    img = df[df.image_index >= 0]
    if img.empty:
        return pd.DataFrame(columns=["image_index", "n_samples_sink", "share", "mean_phi", "max_phi"])
    n = img["sample"].nunique()
    per = img.groupby(["sample", "image_index"]).agg(n_layers=("sink", "sum"), phi=("phi", "max")).reset_index()
    per["is_sink"] = per.n_layers >= min_layers
    out = per.groupby("image_index").agg(n_samples_sink=("is_sink", "sum"), mean_phi=("phi", "mean"),
                                         max_phi=("phi", "max")).reset_index()
    out["share"] = out.n_samples_sink / n
    return out.sort_values(["share", "max_phi"], ascending=False).reset_index(drop=True)


# --- image attention and image-centric heads ----------------------------------------------------------


class ImageAttentionRecorder:
    """Attention hook: at the last query of each prefill call, per head, the attention on image
    tokens A_I, on non-sink image tokens A_I' and on sink tokens A_S; needs an active SinkDetector."""

    def __init__(self, image_pos: torch.Tensor, detector: SinkDetector):
        self.img = image_pos
        self.det = detector
        self.rows: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def on_attention(self, call: AttentionCall) -> None:
        if call.q_offset > 0:
            return None
        if call.query.shape[0] != 1:
            raise WorkbenchError(f"image attention is recorded for one input at a time, got a batch of "
                                 f"{call.query.shape[0]}: run the inputs one by one")
        nq = call.query.shape[2]
        p = call.probs(nq - 1, nq)[0, :, 0]  # (H, Nk)
        sink = self.det.sinks.get(call.layer)
        sink = sink[0, : p.shape[1]] if sink is not None else torch.zeros(p.shape[1], dtype=torch.bool, device=p.device)
        is_img = torch.zeros(p.shape[1], dtype=torch.bool, device=p.device)
        is_img[torch.as_tensor(self.img).to(p.device)] = True
        a_img = p[:, is_img].sum(-1)
        a_nonsink = p[:, is_img & ~sink].sum(-1)
        a_sink = p[:, sink].sum(-1)
        self.rows[call.layer] = (a_img, a_nonsink, a_sink)
        return None


@torch.no_grad()
def image_attention_table(lm: LoadedModel, inputs: Sequence[VLMInput], dims: Sequence[int], tau: float = TAU,
                          summ: float = SUMM, rho: float = RHO, progress: bool = False) -> pd.DataFrame:
    """Per sample, layer and head at the first generation step: image attention, sink attention,
    visual non-sink ratio, and whether the head is image-centric (A_I >= summ and ratio >= rho).

    Returns DataFrame (sample, layer, head, image_attention, sink_attention, nonsink_ratio, image_centric).
    """
    rows = []
    for s, inp in enumerate(tqdm(inputs, desc="image attention", disable=not progress)):
        require_single(inp)
        det = SinkDetector(lm, dims, tau)
        rec = ImageAttentionRecorder(image_positions(lm.model, inp.input_ids), det)
        with det, attention_hooks(rec):
            lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs())
        for layer, (a_img, a_nonsink, a_sink) in sorted(rec.rows.items()):
            ratio = a_nonsink / a_img.clamp_min(1e-12)
            centric = image_centric(a_img, a_nonsink, summ, rho)
            for h in range(a_img.shape[0]):
                rows.append((s, layer, h, float(a_img[h]), float(a_sink[h]), float(ratio[h]), bool(centric[h])))
    return pd.DataFrame(rows, columns=["sample", "layer", "head", "image_attention", "sink_attention",
                                       "nonsink_ratio", "image_centric"])


def image_centric_heads(df: pd.DataFrame, min_share: float = 0.5) -> pd.DataFrame:
    """Heads image-centric in at least ``min_share`` of the samples: (layer, head, share, image_attention, nonsink_ratio)."""
    g = df.groupby(["layer", "head"]).agg(share=("image_centric", "mean"), image_attention=("image_attention", "mean"),
                                         nonsink_ratio=("nonsink_ratio", "mean")).reset_index()
    return g[g.share >= min_share].sort_values("share", ascending=False).reset_index(drop=True)


def text_positions_of(lm: LoadedModel, inp: VLMInput) -> torch.Tensor:
    """Positions in ``inp`` of the tokens kept by the text-only pass (see :func:`workbench.core.vlm.position_map`)."""
    return position_map(lm.model, inp)


def layers_arg(layers: Iterable[int] | None, n_layers: int) -> list[int]:
    return list(range(n_layers)) if layers is None else sorted(set(int(x) for x in layers))
