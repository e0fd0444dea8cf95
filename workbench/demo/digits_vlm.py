"""``digits-vlm``: a small LLaVA-style vision-language model built on the real SmolLM2-135M.

No pretrained vision-language model can be downloaded here, so the workbench builds one:

* vision tower: a tiny CLIP vision transformer (2 layers, width 64, 4 heads, 1 input channel,
  32 x 32 composites of 4 x 4 cells, 8 x 8 patches -> one patch token per cell, 16 tokens),
  randomly initialised and trained;
* projector: LLaVA-1.5's two-layer GELU MLP (64 -> 576 -> 576), trained;
* language model: the frozen SmolLM2-135M-Instruct (``workbench.load_model("smollm2-135m")``)
  with one added token, ``<image>``.

Together they are a genuine Hugging Face ``LlavaForConditionalGeneration`` (Liu et al. 2023,
"Visual instruction tuning"): the prompt ``Image: <image>*16\nQuestion: ...\nAnswer:`` holds 16
placeholder tokens whose input embeddings are replaced by the projected patch features, so every
analyzer that works on llava-hf checkpoints works on this model.

Training (:func:`train`, script ``scripts/train_digits_vlm.py``) is deterministic (fixed seeds,
fixed data order), backbone frozen, on CPU:

1. the tower learns to classify each cell (digit or blank) with a linear probe on its patch
   feature (no language model involved);
2. tower and projector learn to map each cell token onto the word embedding of what it shows
   (the digit's token, or a space for a blank cell) -- a feature-alignment stage without
   language-model passes;
3. tower and projector are trained end to end through the frozen language model on answers to
   "What digits are in the image?" (`` 3 7``) and "Is there a 5 in the image?" (`` Yes``/`` No``).
   This is the slow stage: 150 steps of 8 questions took 330 s on 2 CPU cores (about 1-2 s a
   step when the cores are free, 10-30 s when shared); stages 1 and 2 take seconds. With only 30
   steps the model ignored the image (always "No", always " 1 2 3 4"); 150 steps make it read it.

Only the trained tower and projector ship (``workbench/data/digits_vlm.safetensors``, 1.8 MB);
the first :func:`load` assembles the full checkpoint from the SmolLM2 cache into
``cache_dir()/digits-vlm-<hash>`` and later loads read it.

Modules: :mod:`.digits_vlm_model` (configuration, assembly, loading, inputs) and :mod:`.digits_vlm_train`
(training); every name stays importable from here.
"""
from __future__ import annotations

from .digits_vlm_model import (BLANK_TOKEN, N_IMAGE_TOKENS, NAME, PRESET, VISION, WEIGHTS, assemble, build_config, load,
                               make_input, set_attention, vision_state_dict)
from .digits_vlm_train import TRAIN_DEFAULTS, train, training_item

__all__ = ["BLANK_TOKEN", "NAME", "N_IMAGE_TOKENS", "PRESET", "TRAIN_DEFAULTS", "VISION", "WEIGHTS", "assemble",
           "build_config", "load", "make_input", "set_attention", "train", "training_item", "vision_state_dict"]
