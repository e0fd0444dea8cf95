"""The vision analysis of a digits-driven VLM in one call, for the CLI, the census and the reports.

:func:`vision_analysis` runs, on held-out digit composites and the question "What digits are in
the image?": the massive-activation analyzer on real text (sink dimensions), VHD per head at
the first generated token and T-VHD over the greedy answer, visual sink tokens, and image-centric
heads (see :mod:`workbench.vision` for the definitions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from . import digits as D
from .errors import WorkbenchError
from .models import LoadedModel
from .vlm import greedy_answer, is_vlm, require_vlm


class NoImageSourceError(WorkbenchError):
    """The model is a VLM but not one the digit images can drive (its image size differs)."""


def require_digits_model(lm: LoadedModel) -> None:
    """Raise unless ``lm`` is a VLM that takes the 32 x 32 digit composites (the digits-vlm preset)."""
    require_vlm(lm.model, lm.spec.name)
    if lm.extras.get("image_size") != D.CANVAS:
        raise NoImageSourceError(
            f"{lm.spec.name} is a VLM, but the CLI drives it with 32 x 32 digit images, which only the digits-vlm preset "
            "takes: use --model digits-vlm, or call workbench.vision.vhd_table / sink_table with your processor's inputs"
        )


@dataclass
class VisionResult:
    """Tables of one vision analysis (see :func:`vision_analysis`)."""

    sink_dims: list[int]
    vhd: pd.DataFrame  # (sample, step, token, layer, head, vhd, text_norm)
    per_head: pd.DataFrame  # (layer, head, vhd, rank) at the first generated token
    vision_aware: pd.DataFrame
    t_vhd: pd.DataFrame
    sinks: pd.DataFrame
    visual_sinks: pd.DataFrame
    image_attention: pd.DataFrame
    image_centric: pd.DataFrame
    answers: list[str] = field(default_factory=list)

    def to_json(self, top: int = 20) -> dict:
        per_layer = self.sinks[self.sinks.sink].groupby("layer").agg(
            visual=("image_index", lambda s: int((s >= 0).sum())), text=("image_index", lambda s: int((s < 0).sum())))
        text_sinks = (self.sinks[self.sinks.sink & (self.sinks.image_index < 0)].groupby(["pos", "token"]).size()
                      .reset_index(name="n_layer_samples").sort_values("n_layer_samples", ascending=False).head(10))
        return {
            "sink_dims": self.sink_dims,
            "vhd": self.per_head[["layer", "head", "vhd"]].to_dict(orient="records"),
            "vision_aware_heads": self.vision_aware.head(top)[["layer", "head", "vhd"]].to_dict(orient="records"),
            "t_vhd": self.t_vhd.to_dict(orient="records"),
            "visual_sinks": self.visual_sinks[self.visual_sinks.n_samples_sink > 0].to_dict(orient="records"),
            "sink_tokens_per_layer": {int(k): {"visual": int(r.visual), "text": int(r.text)} for k, r in per_layer.iterrows()},
            "text_sinks": text_sinks.to_dict(orient="records"),
            "image_centric_heads": self.image_centric.head(top).to_dict(orient="records"),
            "image_attention_mean": float(self.image_attention.image_attention.mean()),
            "answers": self.answers,
        }


@torch.no_grad()
def vision_analysis(lm: LoadedModel, n_images: int = 8, seed: int = 1234, tau: float = 20.0, rho: float = 0.5,
                    max_new_tokens: int = 8, progress: bool = True) -> VisionResult:
    """VHD, T-VHD, visual sinks and image-centric heads on ``n_images`` held-out digit composites.

    Raises:
        NotAVisionModelError / NoImageSourceError: the model cannot take the digit images.
    """
    from .digits_vlm import make_input
    from .hallucination import _sink_dims, heldout_images
    from .vision import (head_vhd, image_attention_table, image_centric_heads, sink_table, t_vhd, vhd_table,
                         vision_aware_heads, visual_sink_summary)

    require_digits_model(lm)
    dims = _sink_dims(lm)
    images = heldout_images(n_images, seed)
    inputs = [make_input(lm, D.LIST_QUESTION, c.pixels) for c in images]
    answers = [greedy_answer(lm, inp, max_new_tokens) for inp in inputs]
    vhd = vhd_table(lm, inputs, answers, progress=progress)
    per_head = head_vhd(vhd, step=0)
    sinks = sink_table(lm, inputs, dims, tau)
    att = image_attention_table(lm, inputs, dims, tau, rho=rho)
    return VisionResult(dims, vhd, per_head, vision_aware_heads(per_head), t_vhd(vhd), sinks,
                        visual_sink_summary(sinks), att, image_centric_heads(att),
                        [lm.tokenizer.decode(a[0]) for a in answers])


def census_section(ctx):
    """Census section ``vision``: VHD and image-centric share per head for a digits VLM; a note otherwise."""
    from .census import CensusSection
    from .viz import layer_head_heatmap

    lm = ctx.lm
    if not is_vlm(lm.model):
        return CensusSection("vision", None, {"skipped": "text-only model: no image tokens, no vision analysis"})
    try:
        require_digits_model(lm)
    except WorkbenchError as err:
        return CensusSection("vision", None, {"skipped": str(err)})
    res = vision_analysis(lm, n_images=int(ctx.options.get("vision_images", 4)), progress=ctx.progress)
    df = res.per_head.rename(columns={"rank": "vhd_rank"})
    share = res.image_attention.groupby(["layer", "head"], as_index=False).agg(
        image_centric_share=("image_centric", "mean"), image_attention=("image_attention", "mean"))
    df = df.merge(share, on=["layer", "head"], how="left")
    js = res.to_json(top=10)
    summary = {k: js[k] for k in ("sink_dims", "vision_aware_heads", "visual_sinks", "image_centric_heads")}
    figs = [(c, layer_head_heatmap(df, c, title=f"{c} per head")) for c in ("vhd", "image_centric_share")]
    return CensusSection("vision", df, summary, figs)


def _register() -> None:
    from .census import register_section

    register_section("vision", census_section)


_register()
