"""What the dashboard's Vision tab computes, independent of Streamlit: images for a preset VLM and one
image's vision analysis.

The analyses are the workbench's own (:mod:`workbench.analyzers.vision`, definitions in
docs/methods.md); this module only chooses the input and shapes the results for the page:

* :func:`image_source`: which images the loaded VLM takes (``effnet-smollm2-vqa``: held-out easy-VQA
  test scenes, 224 px RGB; ``digits-vlm``, the small test fixture: held-out digit composites, 32 px
  grey), decided by :func:`workbench.report.vision_report.require_digits_model` as for the CLI and the census.
* :func:`scene_picture` / :func:`upload_picture`: a held-out scene by index (the index-th image of
  :func:`workbench.report.vision_report.heldout_inputs` with its seed), or an uploaded PNG / JPEG
  (:func:`dashboards.sources.read_image_upload`) converted to the tower's input exactly as the
  preset's own images are (easy-VQA: :func:`workbench.demo.easyvqa_data.to_pixels`).
* :func:`run_vision`: for one image and question, the greedy answer
  (:func:`workbench.core.vlm.greedy_answer`), VHD per head at the first generated token
  (``head_vhd(vhd_table(lm, [inp]))``, He et al. 2025), the vision-aware heads (per-layer median
  rule), the attention on image tokens and the image-centric heads (Kang et al. 2025) and the
  visual sink tokens (phi >= tau on the backbone's sink dimensions, :func:`sink_table`) laid out on
  the image's token grid (7 x 7 for the EfficientNet tower's 49 tokens, 4 x 4 for digits-vlm's 16).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.core.errors import WorkbenchError

HELDOUT_SEED = 1234  # the seed of workbench.report.vision_report.heldout_inputs: scene i here is its i-th image
MAX_SCENE = 999  # held-out scene indices offered (the easy-VQA test split has 1,000 images)
MAX_NEW_TOKENS = 24  # a caption of four objects is about 17 tokens
SINK_MIN_LAYERS = 2  # an image token is a visual sink when it is a sink at >= this many layers (visual_sink_summary)
VLM_HINT = "effnet-smollm2-vqa (easy-VQA scenes) or digits-vlm (digit composites, the small test fixture)"


class VisionTabError(WorkbenchError):
    """The Vision tab cannot run: a text-only model, a VLM without images here, or a bad scene index / question."""


@dataclass(frozen=True)
class ImageSource:
    """The images a preset VLM takes.

    Attributes:
        kind: ``"easy-vqa"`` (effnet-smollm2-vqa) or ``"digits"`` (digits-vlm).
        n_tokens: image tokens per image (49 / 16), in reading order of a ``side`` x ``side`` grid.
        side: the token grid's side (7 / 4).
        question: the default question (easy-VQA's caption question; digits-vlm's list question).
        description: what the held-out images are, in words.
    """

    kind: str
    n_tokens: int
    side: int
    question: str
    description: str


@dataclass
class Picture:
    """One image for the tab: ``pixels`` (the tower input: (3, 224, 224) in [-1, 1] for easy-VQA,
    (1, 32, 32) in [0, 1] for digits), ``view`` (uint8 (H, W, 3): the tower input shown as an
    image) and ``label`` (its known contents, or the upload's name and size)."""

    pixels: torch.Tensor
    view: np.ndarray
    label: str


def image_source(lm) -> ImageSource:
    """The images ``lm`` takes (see module docstring).

    Raises:
        VisionTabError: ``lm`` is a text-only model, or a VLM the workbench has no images for.
    """
    from workbench.core.vlm import is_vlm
    from workbench.report.vision_report import require_digits_model

    if not is_vlm(lm.model):
        raise VisionTabError(f"{lm.spec.name} is a text-only model: the Vision tab needs a VLM preset, {VLM_HINT}")
    try:
        require_digits_model(lm)
    except WorkbenchError:
        raise VisionTabError(f"{lm.spec.name} is a VLM, but the dashboard has images only for {VLM_HINT}") from None
    if lm.extras.get("image_kind") == "easy-vqa":
        from workbench.demo import easyvqa as E
        from workbench.demo.effnet_vlm import N_IMAGE_TOKENS

        return ImageSource("easy-vqa", N_IMAGE_TOKENS, 7, E.CAPTION_QUESTION,
                           "held-out easy-VQA test scenes (2-4 shapes in a 2 x 2 grid)")
    from workbench.demo import digits as D
    from workbench.demo.digits_vlm import N_IMAGE_TOKENS

    return ImageSource("digits", N_IMAGE_TOKENS, D.GRID, D.LIST_QUESTION,
                       "held-out digit composites (1-3 digits in a 4 x 4 grid)")


def tower_view(src: ImageSource, pixels: torch.Tensor) -> np.ndarray:
    """The tower input as a uint8 RGB image (H, W, 3): easy-VQA pixels (224 px) un-normalised from
    (x - 0.5) / 0.5; digits' grey (1, 32, 32) repeated into three channels and enlarged 7x (nearest) for display."""
    if src.kind == "easy-vqa":
        x = (pixels.float() * 0.5 + 0.5).clamp(0, 1)
    else:
        x = pixels.float().clamp(0, 1).expand(3, -1, -1).repeat_interleave(7, 1).repeat_interleave(7, 2)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()


def scene_picture(src: ImageSource, index: int) -> Picture:
    """Held-out image ``index`` (0..:data:`MAX_SCENE`): easy-VQA ``scenes("test", index + 1, 1234)[index]``,
    digits ``heldout_images(index + 1, 1234)[index]`` (so index i is image i of ``heldout_inputs``).

    Raises:
        VisionTabError: the index is out of range.
    """
    if not 0 <= int(index) <= MAX_SCENE:
        raise VisionTabError(f"scene index {index} is out of range: choose 0..{MAX_SCENE}")
    i = int(index)
    if src.kind == "easy-vqa":
        from workbench.demo import easyvqa as E

        sc = E.scenes("test", i + 1, HELDOUT_SEED)[i]
        px = sc.pixels()
        return Picture(px, tower_view(src, px), f"test scene {i}: {sc.caption()}")
    from workbench.tasks.hallucination import heldout_images

    comp = heldout_images(i + 1, HELDOUT_SEED)[i]
    return Picture(comp.pixels, tower_view(src, comp.pixels),
                   f"held-out composite {i}: digits {' '.join(map(str, comp.digits))}")


def digits_pixels(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> digits-vlm input (1, 32, 32) in [0, 1]: mean of the channels, bilinear antialiased resize."""
    from workbench.demo import digits as D

    x = torch.from_numpy(rgb).float().mean(-1)[None, None] / 255.0
    x = torch.nn.functional.interpolate(x, size=(D.CANVAS, D.CANVAS), mode="bilinear", align_corners=False,
                                        antialias=True)
    return x[0].contiguous()


def upload_pixels(src: ImageSource, rgb: np.ndarray) -> torch.Tensor:
    """The tower input of an RGB image: easy-VQA's own :func:`~workbench.demo.easyvqa_data.to_pixels`
    (224 px, (x - 0.5) / 0.5), or :func:`digits_pixels`."""
    if src.kind == "easy-vqa":
        from workbench.demo.easyvqa_data import to_pixels

        return to_pixels(rgb)
    return digits_pixels(rgb)


def upload_picture(src: ImageSource, name: str, data: bytes, max_mb: float | None = None) -> Picture:
    """An uploaded PNG / JPEG as the tower's input.

    Raises:
        UploadError: too large, not a PNG / JPEG, or undecodable (:func:`dashboards.sources.read_image_upload`).
    """
    from dashboards.sources import MAX_IMAGE_MB, read_image_upload

    rgb = read_image_upload(name, data, MAX_IMAGE_MB if max_mb is None else max_mb)
    px = upload_pixels(src, rgb)
    return Picture(px, tower_view(src, px), f"upload {name} ({rgb.shape[1]} x {rgb.shape[0]} px)")


def make_input(lm, src: ImageSource, question: str, pixels: torch.Tensor):
    """The preset's prompt with its image tokens for ``question`` (a :class:`~workbench.core.vlm.VLMInput`).

    Raises:
        VisionTabError: an empty question.
    """
    if not question.strip():
        raise VisionTabError(f"enter a question, e.g. {src.question!r}")
    if src.kind == "easy-vqa":
        from workbench.demo.effnet_vlm import make_input as effnet_input

        return effnet_input(lm, question.strip(), pixels)
    from workbench.demo.digits_vlm import make_input as digits_input

    return digits_input(lm, question.strip(), pixels)


# --- the analysis of one image ----------------------------------------------------------------------------------


def sink_grid(sinks: pd.DataFrame, n_tokens: int, side: int, min_layers: int = SINK_MIN_LAYERS) -> pd.DataFrame:
    """The image tokens of one input on their grid, from a :func:`~workbench.analyzers.vision.sink_table`.

    Returns:
        DataFrame (image_index, row, col, n_layers_sink, max_phi, sink), one row per image token in
        reading order: at how many layers the token is a sink (phi >= tau), its largest phi, and
        whether it is a visual sink (a sink at >= ``min_layers`` layers, the rule of
        :func:`~workbench.analyzers.vision.visual_sink_summary`, which decides ``sink``).
    """
    from workbench.analyzers.vision import visual_sink_summary

    img = sinks[sinks.image_index >= 0]
    per = img.groupby("image_index").agg(n_layers_sink=("sink", "sum"), max_phi=("phi", "max"))
    summary = visual_sink_summary(sinks, min_layers)
    marked = set(summary.loc[summary.n_samples_sink > 0, "image_index"].astype(int))
    idx = np.arange(n_tokens)
    out = pd.DataFrame({"image_index": idx, "row": idx // side, "col": idx % side})
    out["n_layers_sink"] = per["n_layers_sink"].reindex(idx).fillna(0).astype(int).to_numpy()
    out["max_phi"] = per["max_phi"].reindex(idx).to_numpy(dtype=float)
    out["sink"] = out.image_index.isin(marked)
    return out


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sink_grid_figure(view: np.ndarray, grid: pd.DataFrame, side: int, tau: float, title: str | None = None):
    """The image with its token grid over it: each cell shaded by the number of layers at which that image
    token is a sink (phi >= ``tau``); visual sinks outlined in red. Row 0 of the grid is the image's top."""
    import plotly.graph_objects as go

    h, w = view.shape[:2]
    z = grid.pivot(index="row", columns="col", values="n_layers_sink").to_numpy()
    custom = np.stack([grid.pivot(index="row", columns="col", values=c).to_numpy(dtype=float)
                       for c in ("image_index", "max_phi")], -1)
    fig = go.Figure(go.Image(source=_png_uri(view), x0=-0.5 + side / w / 2, dx=side / w, y0=-0.5 + side / h / 2,
                             dy=side / h, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=z, x=list(range(side)), y=list(range(side)), opacity=0.45, colorscale="Reds", zmin=0,
                             customdata=custom, colorbar=dict(title=dict(text="layers as sink", side="right")),
                             hovertemplate="image token %{customdata[0]:.0f} (row %{y}, col %{x})<br>sink at %{z} "
                                           "layers; max phi %{customdata[1]:.3g}<extra></extra>"))
    for r in grid[grid.sink].itertuples():
        fig.add_shape(type="rect", x0=r.col - 0.5, x1=r.col + 0.5, y0=r.row - 0.5, y1=r.row + 0.5,
                      line=dict(color="red", width=3))
    n = int(grid.sink.sum())
    fig.update_layout(title=title or f"visual sink tokens: {n} of {len(grid)} image tokens (outlined)",
                      xaxis=dict(title="token column", range=[-0.5, side - 0.5], dtick=1, constrain="domain"),
                      yaxis=dict(title="token row", dtick=1, scaleanchor="x"),
                      height=520)
    fig.update_yaxes(autorange="reversed")
    return fig


@dataclass
class VisionView:
    """The Vision tab's results for one image and question (see :func:`run_vision`)."""

    answer: str
    answer_ids: list[int]
    per_head: pd.DataFrame  # (layer, head, vhd, rank) at the first generated token: head_vhd(vhd_table(lm, [inp]))
    vision_aware: pd.DataFrame  # vision_aware_heads(per_head, top)
    image_attention: pd.DataFrame  # per head (layer, head, image_attention, sink_attention, nonsink_ratio, image_centric)
    image_centric: pd.DataFrame  # image_centric_heads(image_attention)
    sinks: pd.DataFrame  # sink_table(lm, [inp], dims, tau)
    grid: pd.DataFrame  # sink_grid(sinks, n_tokens, side)
    sink_dims: list[int]
    tau: float
    rho: float
    side: int
    view: np.ndarray = field(repr=False, default=None)

    def vhd_figure(self):
        """Layer x head heatmap of VHD at the first generated token (layer 0 at the top)."""
        from workbench.report.viz import layer_head_heatmap

        return layer_head_heatmap(self.per_head, "vhd", "VHD per head at the first generated token")

    def image_attention_figure(self):
        """Layer x head heatmap of A_I, the attention of the last prompt query on the image tokens."""
        from workbench.report.viz import layer_head_heatmap

        return layer_head_heatmap(self.image_attention, "image_attention",
                                  "attention on image tokens A_I per head (last prompt query)")

    def sink_figure(self):
        """The image with its visual sink tokens (:func:`sink_grid_figure`)."""
        return sink_grid_figure(self.view, self.grid, self.side, self.tau)


@torch.no_grad()
def run_vision(lm, src: ImageSource, pixels: torch.Tensor, question: str, max_new_tokens: int = MAX_NEW_TOKENS,
               tau: float | None = None, rho: float | None = None, top: int = 10) -> VisionView:
    """The vision analysis of one image and question (the analyzers of :mod:`workbench.analyzers.vision`).

    Args:
        lm: a VLM :func:`image_source` accepts.
        pixels: the tower input (:attr:`Picture.pixels`).
        max_new_tokens: greedy answer length (it stops after a newline, the presets' answer end).
        tau: sink threshold on phi (default :data:`workbench.analyzers.vision.TAU`, 20).
        rho: the image-centric heads' non-sink share (default :data:`~workbench.analyzers.vision.RHO`, 0.5).
        top: vision-aware heads kept.
    Returns:
        :class:`VisionView`; the sink dimensions are the backbone's massive-activation dimensions on real
        text (:func:`workbench.tasks.vqa_hallucination.sink_dims`, cached in ``lm.extras``).
    Raises:
        VisionTabError: an empty question, or ``max_new_tokens`` < 1.
    """
    from workbench.analyzers import vision as A
    from workbench.core.vlm import greedy_answer
    from workbench.tasks.vqa_hallucination import sink_dims

    tau = A.TAU if tau is None else float(tau)
    rho = A.RHO if rho is None else float(rho)
    if int(max_new_tokens) < 1:
        raise VisionTabError(f"new tokens must be at least 1, got {max_new_tokens}")
    inp = make_input(lm, src, question, pixels)
    ans = greedy_answer(lm, inp, int(max_new_tokens))
    per_head = A.head_vhd(A.vhd_table(lm, [inp], progress=False))
    dims = sink_dims(lm)
    sinks = A.sink_table(lm, [inp], dims, tau)
    att = A.image_attention_table(lm, [inp], dims, tau, rho=rho)
    return VisionView(lm.tokenizer.decode(ans[0]), ans[0].tolist(), per_head, A.vision_aware_heads(per_head, top),
                      att.drop(columns="sample"), A.image_centric_heads(att), sinks,
                      sink_grid(sinks, src.n_tokens, src.side), list(dims), tau, rho, src.side,
                      tower_view(src, pixels))
