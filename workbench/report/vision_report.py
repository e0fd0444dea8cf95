"""The vision analysis of a preset VLM in one call, for the CLI, the census and the reports.

:func:`vision_analysis` runs, on held-out images of the preset's own kind (``effnet-smollm2-vqa``:
easy-VQA test scenes and "Describe the image."; ``digits-vlm``, the fast test fixture: digit
composites and "What digits are in the image?"): the massive-activation analyzer on real text (sink dimensions), VHD per head at
the first generated token and T-VHD over the greedy answer, visual sink tokens, and image-centric
heads (see :mod:`workbench.analyzers.vision` for the definitions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..demo import digits as D
from ..core.errors import WorkbenchError
from ..core.models import LoadedModel
from ..core.vlm import greedy_answer, is_vlm, require_vlm


class NoImageSourceError(WorkbenchError):
    """The model is a VLM but not one the digit images can drive (its image size differs)."""


def require_digits_model(lm: LoadedModel) -> None:
    """Raise unless ``lm`` is a VLM the CLI has images for: ``effnet-smollm2-vqa`` (easy-VQA scenes) or
    ``digits-vlm`` (32 x 32 digit composites)."""
    require_vlm(lm.model, lm.spec.name)
    if lm.extras.get("image_kind") != "easy-vqa" and lm.extras.get("image_size") != D.CANVAS:
        raise NoImageSourceError(
            f"{lm.spec.name} is a VLM, but the CLI has images only for the effnet-smollm2-vqa (easy-VQA scenes) and "
            "digits-vlm (digit composites) presets: use --model effnet-smollm2-vqa, or call "
            "workbench.analyzers.vision.vhd_table / sink_table with your processor's inputs"
        )


def heldout_inputs(lm: LoadedModel, n_images: int, seed: int = 1234) -> tuple[list, str]:
    """``n_images`` held-out VLM inputs of the preset's image kind and their description: easy-VQA test
    scenes (``scenes("test", n, seed)``) asked "Describe the image." for ``effnet-smollm2-vqa``, digit
    composites asked "What digits are in the image?" for ``digits-vlm``."""
    if lm.extras.get("image_kind") == "easy-vqa":
        from ..demo import easyvqa as E
        from ..demo.effnet_vlm import make_input as effnet_input

        return ([effnet_input(lm, E.CAPTION_QUESTION, s.pixels()) for s in E.scenes("test", n_images, seed)],
                f"held-out easy-VQA test scenes (2-4 shapes), question '{E.CAPTION_QUESTION}'")
    from ..demo.digits_vlm import make_input
    from ..tasks.hallucination import heldout_images

    return ([make_input(lm, D.LIST_QUESTION, c.pixels) for c in heldout_images(n_images, seed)],
            "held-out digit composites, question 'What digits are in the image?'")


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
    source: str = ""  # the held-out images and question (heldout_inputs)

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
            "images": self.source,
        }


@torch.no_grad()
def vision_analysis(lm: LoadedModel, n_images: int = 8, seed: int = 1234, tau: float = 20.0, rho: float = 0.5,
                    max_new_tokens: int = 8, progress: bool = True) -> VisionResult:
    """VHD, T-VHD, visual sinks and image-centric heads on ``n_images`` held-out images (:func:`heldout_inputs`).

    Raises:
        NotAVisionModelError / NoImageSourceError: the model cannot take the digit images.
    """
    from ..tasks.hallucination import _sink_dims
    from ..analyzers.vision import (head_vhd, image_attention_table, image_centric_heads, sink_table, t_vhd, vhd_table,
                         vision_aware_heads, visual_sink_summary)

    require_digits_model(lm)
    dims = _sink_dims(lm)
    inputs, source = heldout_inputs(lm, n_images, seed)
    answers = [greedy_answer(lm, inp, max_new_tokens) for inp in inputs]
    vhd = vhd_table(lm, inputs, answers, progress=progress)
    per_head = head_vhd(vhd, step=0)
    sinks = sink_table(lm, inputs, dims, tau)
    att = image_attention_table(lm, inputs, dims, tau, rho=rho)
    return VisionResult(dims, vhd, per_head, vision_aware_heads(per_head), t_vhd(vhd), sinks,
                        visual_sink_summary(sinks), att, image_centric_heads(att),
                        [lm.tokenizer.decode(a[0]) for a in answers], source)


def vision_report(lm: LoadedModel, n_images: int = 8, tau: float = 20.0, rho: float = 0.5, top: int = 20,
                  out: str | Path | None = "runs", progress: bool = True) -> dict:
    """``workbench vision`` as one call: :func:`vision_analysis`, then its files under ``out/<model>/``.

    Files (each with the run's provenance): ``vision.json`` (the returned object without ``files``),
    ``vision.html`` (:func:`write_vision_html`), ``vhd_heads.csv``, ``t_vhd.csv``, ``visual_sinks.csv``,
    ``image_centric_heads.csv`` and ``image_attention_heads.csv`` (per head: mean attention on image tokens and
    image-centric share). ``out=None`` writes nothing.

    Returns:
        ``{"model", "n_images", **VisionResult.to_json(top), "provenance", "files"}``; ``files`` maps ``json`` and
        ``html`` to their paths (absent when ``out`` is None).
    Raises:
        NotAVisionModelError / NoImageSourceError: the model cannot take the held-out images.
    """
    from ..io.provenance import code_sha256, collect, write_csv, write_json

    res = vision_analysis(lm, n_images=n_images, tau=tau, rho=rho, progress=progress)
    prov = collect(lm, {"command": "vision", "model": lm.spec.name, "images": n_images, "tau": tau, "rho": rho,
                        "top": top, "code_sha256": code_sha256(["workbench.analyzers.vision", "workbench.report.vision_report",
                                                                "workbench.core.vlm"])})
    result = {"model": lm.spec.name, "n_images": n_images, **res.to_json(top)}
    share = res.image_attention.groupby(["layer", "head"], as_index=False).agg(
        image_centric_share=("image_centric", "mean"), image_attention=("image_attention", "mean"))
    if out is not None:
        from ..io.runs import model_dir

        d = model_dir(out, lm.spec.name)
        d.mkdir(parents=True, exist_ok=True)
        for df, name in ((res.per_head, "vhd_heads"), (res.t_vhd, "t_vhd"), (res.visual_sinks, "visual_sinks"),
                         (res.image_centric, "image_centric_heads"), (share, "image_attention_heads")):
            write_csv(df, d / f"{name}.csv", prov)
        write_json(result, d / "vision.json", prov)
    result["provenance"] = prov
    if out is not None:
        write_vision_html(result, res.per_head, d / "vision.html", share)
        result["files"] = {"json": str(d / "vision.json"), "html": str(d / "vision.html")}
    return result


VHD_DEFINITION = ("VHD(l, h) = ||z_image - z_text||_2: L2 distance between the head's output z (its d_head-dim "
                  "attention output before o_proj) at the first generated token with the image and in the matched "
                  "text-only pass (image tokens removed); units: those of z (the value vectors' scale). "
                  "He et al. 2025; mean over the images; layer 0 at the top.")


def write_vision_html(result: dict, per_head: pd.DataFrame, path, share: pd.DataFrame | None = None) -> None:
    """Write ``vision.html`` from the ``vision.json`` result and the per-head VHD table (``vhd_heads.csv``).

    Figures: VHD per head with the top-10 vision-aware heads beside it; T-VHD per generated token;
    optionally (``share``: layer, head, image_attention, image_centric_share) the attention on image
    tokens and the image-centric share. Tables: image-centric heads and visual sink tokens. Every
    figure has its definition and units; the footer gives the result's provenance.
    """
    import plotly.graph_objects as go

    from .viz import format_head, layer_head_heatmap, table_html, top_heads, visible_whitespace, write_html

    figs = [("Vision-aware heads: VHD per head", layer_head_heatmap(per_head, "vhd", "VHD per head"),
             VHD_DEFINITION, "<b>top 10 heads by VHD</b>" + table_html(top_heads(per_head, "vhd"), 3))]
    tv = pd.DataFrame(result.get("t_vhd") or [])
    if len(tv):
        fig = go.Figure()
        for sample, g in tv.groupby("sample"):
            fig.add_trace(go.Scatter(x=g["step"], y=g["t_vhd"], mode="lines+markers", name=f"image {sample}",
                                     text=[visible_whitespace(t) for t in g["token"].astype(str)],
                                     hovertemplate="step %{x} token %{text}<br>T-VHD %{y:.4g}<extra></extra>"))
        fig.update_layout(title="T-VHD per generated token", xaxis_title="generation step",
                          yaxis_title="T-VHD (sum of VHD over heads)")
        figs.append(("T-VHD over the answer", fig,
                     "T-VHD(t) = sum over all layers and heads of VHD at generation step t (same units as VHD); "
                     "a token that depends on the image has a large T-VHD. Hover shows the token (· = space)."))
    if share is not None and len(share):
        figs.append(("Attention on image tokens", layer_head_heatmap(share, "image_attention", "A_I per head"),
                     "A_I = attention mass a head's last-prompt query puts on the image tokens, a probability in "
                     "[0, 1], mean over the images; layer 0 at the top.",
                     table_html(top_heads(share, "image_attention"), 3)))
        figs.append(("Image-centric share", layer_head_heatmap(share, "image_centric_share", "image-centric share"),
                     "Share of images (0-1) for which the head is image-centric: A_I >= 0.2 and at least rho of it "
                     "on non-sink image tokens (Kang et al. 2025).", table_html(top_heads(share, "image_centric_share"), 3)))
    ic = pd.DataFrame(result.get("image_centric_heads") or [])
    vs = pd.DataFrame(result.get("visual_sinks") or [])
    dims = result.get("sink_dims")
    images = result.get("images") or "held-out digit composites, question 'What digits are in the image?'"
    intro = (f"Model <b>{result.get('model')}</b>; {result.get('n_images')} {images}. Sink dimensions (massive activations) {dims}. Mean attention on "
             f"image tokens over all heads: {float(result.get('image_attention_mean', float('nan'))):.3f}. "
             f"Answers: {', '.join(repr(a.strip()) for a in result.get('answers', []))}.</p>"
             + ("<h2>Image-centric heads (layer.head)</h2><p class='definition'>share: fraction of images for which "
                "the head is image-centric; image_attention: mean A_I (probability); nonsink_ratio: share of A_I on "
                "non-sink image tokens.</p>" + table_html(ic, 3, 15) if len(ic) else "")
             + ("<h2>Visual sink tokens</h2><p class='definition'>image_index: position among the image tokens; "
                "n_samples_sink: images in which it is a sink (phi >= tau on the sink dimensions); phi: the "
                "massive-activation score (ratio to the median).</p>" + table_html(vs, 3, 15) if len(vs) else "")
             + "<p>")
    heads_txt = ", ".join(format_head(r["layer"], r["head"]) for r in (result.get("vision_aware_heads") or [])[:8])
    if heads_txt:
        intro = intro.replace("</p>", f" Top vision-aware heads: {heads_txt}.</p>", 1)
    write_html(figs, path, f"Vision heads: {result.get('model')}", intro, provenance=result.get("provenance"))


def census_section(ctx):
    """Census section ``vision``: VHD and image-centric share per head for a preset VLM; a note otherwise."""
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
