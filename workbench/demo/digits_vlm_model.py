"""The ``digits-vlm`` LLaVA model: its configuration, its assembly from SmolLM2 and the trained tower and
projector, its cached loading (the preset) and its inputs."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import digits as D
from ..core.models import LoadedModel
from ..core.presets import Preset
from ..core.vlm import is_assembled, load_assembled_llava

NAME = "digits-vlm"
# the shipped weights; WORKBENCH_DIGITS_VLM_WEIGHTS points elsewhere (e.g. a retrained file)
WEIGHTS = Path(os.environ.get("WORKBENCH_DIGITS_VLM_WEIGHTS", Path(__file__).parents[1] / "data" / "digits_vlm.safetensors"))
N_IMAGE_TOKENS = D.N_CELLS  # one 8 x 8 patch per cell
BLANK_TOKEN = " "
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_channels=1,
              image_size=D.CANVAS, patch_size=D.CELL, hidden_act="gelu", layer_norm_eps=1e-5)


def build_config(text_config):
    """LlavaConfig of the digits VLM around a Llama ``text_config`` (vocab grows by one for ``<image>``)."""
    from transformers import CLIPVisionConfig, LlavaConfig

    text = text_config.__class__(**{**text_config.to_dict(), "vocab_size": text_config.vocab_size + 1})
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=text, image_token_id=text_config.vocab_size,
                      projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
                      image_seq_length=N_IMAGE_TOKENS, tie_word_embeddings=True)
    return cfg


def _vision_prefixes() -> tuple[str, ...]:
    return ("model.vision_tower.", "model.multi_modal_projector.")


def assemble(base: LoadedModel, vision_state: dict[str, torch.Tensor] | None = None):
    """Build the LLaVA model from the loaded SmolLM2 ``base`` (its weights copied, frozen) and a tokenizer.

    Args:
        base: ``load_model("smollm2-135m")``.
        vision_state: trained tower + projector weights (keys ``model.vision_tower.*``,
            ``model.multi_modal_projector.*``); None keeps the seeded random initialisation.
    Returns:
        (LlavaForConditionalGeneration in eval mode with workbench attention in the language model
        and SDPA in the vision tower, tokenizer with ``<image>`` added)
    """
    from transformers import LlavaForConditionalGeneration

    from ..core.attention import register_attention

    register_attention()
    tok = _tokenizer(base.tokenizer)
    cfg = build_config(base.model.config)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    sd = {}
    for k, v in base.model.state_dict().items():
        if k.startswith("model."):
            sd["model.language_model." + k[len("model."):]] = v
    emb = sd["model.language_model.embed_tokens.weight"]
    # the <image> row is never read (its embeddings are replaced); the mean keeps its logit ordinary
    sd["model.language_model.embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith(_vision_prefixes())]
    if bad or unexpected:
        raise RuntimeError(f"digits-vlm assembly failed: missing {bad[:3]}, unexpected {unexpected[:3]}")
    if vision_state is not None:
        model.load_state_dict(vision_state, strict=False)
    model.tie_weights()
    set_attention(model)
    return model.eval(), tok


def set_attention(model, text: str = "workbench", vision: str = "sdpa") -> None:
    """Language model attention ``text`` (workbench kernel by default), vision tower attention ``vision``."""
    model.set_attn_implementation({"text_config": text, "vision_config": vision})


def _tokenizer(base_tok):
    import copy

    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": [D.IMAGE_TOKEN]})
    return tok


def vision_state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable part (tower + projector) of the LLaVA model's state dict."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k.startswith(_vision_prefixes())}


# --- loading ------------------------------------------------------------------------------------


def load() -> LoadedModel:
    """Load ``digits-vlm`` (assembling the cached checkpoint on first use).

    Raises:
        MissingModelPackageError: the SmolLM2 weights are missing (see the smollm2-135m preset).
        FileNotFoundError: the trained weights are missing: run ``python scripts/train_digits_vlm.py``.
    """
    return load_assembled_llava(NAME, WEIGHTS, assemble, "scripts/train_digits_vlm.py",
                                {"image_size": D.CANVAS, "n_image_tokens": N_IMAGE_TOKENS})


# registered in workbench.core.presets.PRESETS by the package root (lazily: imported when the preset is used)
PRESET = Preset(name=NAME, description="SmolLM2-135M + a CLIP tower trained on sklearn digits (LLaVA, 16 image tokens)",
                load=load, is_cached=lambda: is_assembled(NAME, WEIGHTS))


# --- inputs ---------------------------------------------------------------------------------------


def make_input(lm: LoadedModel, question: str, pixels: torch.Tensor | None):
    """The digits-vlm input for a question about an image (1, 32, 32); ``pixels=None`` gives the
    prompt without image tokens (the "image removed" control). Returns a :class:`~workbench.core.vlm.VLMInput`."""
    from ..core.vlm import VLMInput

    n = 0 if pixels is None else N_IMAGE_TOKENS
    ids = lm.tokenizer(D.prompt_text(question, n), return_tensors="pt").input_ids
    return VLMInput(ids, None if pixels is None else pixels[None], {})
