"""Loading models: presets that work offline (:mod:`workbench.core.presets`), Hugging Face ids and local
checkpoints, as a :class:`LoadedModel` with its :class:`ModelSpec`.

Architectures the workbench cannot trace are refused before any weight loads (:mod:`workbench.core.support`);
``device`` and ``dtype`` are resolved by :mod:`workbench.core.devices`. Every model is loaded with the ``"workbench"`` attention implementation
(:mod:`workbench.core.attention`), so attention runs in a fused kernel and the tracer
and interventions can see its output and log-sum-exp.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .devices import _checkpoint_dtype, resolve_device, resolve_dtype
from .errors import ContextTooLongError, HeadIndexError, UnknownModelError, UnsupportedArchitectureError
from .support import _check_config, _check_supported

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
        layer_windows: per decoder layer, its sliding window in tokens (query i sees keys j with
            ``i - W < j <= i``), or None for full causal attention; () when unknown.
        vocab_size: rows of the language model's embedding (0 when unknown).
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    context_window: int
    layer_windows: tuple = ()
    vocab_size: int = 0

    @classmethod
    def from_config(cls, name: str, config: Any) -> "ModelSpec":
        """Read the spec from a transformers config (the text config of a VLM).

        Reads the standard names (``num_hidden_layers``, ``num_attention_heads``, ...) and, for configs
        without transformers' attribute map, the GPT-2 style ones (``n_layer``, ``n_head``, ``n_embd``,
        ``n_positions``). Sliding windows come from ``layer_types`` (``"sliding_attention"`` layers) and
        ``sliding_window``; without ``layer_types`` a ``sliding_window`` applies to every layer (Mistral, Phi-3).
        """
        text = getattr(config, "text_config", None) or config
        n_layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers")
        n_heads = _config_int(text, "num_attention_heads", "n_head", "num_heads")
        d_model = _config_int(text, "hidden_size", "n_embd", "d_model")
        window = getattr(text, "sliding_window", None)
        types = getattr(text, "layer_types", None)
        if types is not None and len(types) == n_layers:
            windows = tuple(window if t == "sliding_attention" else None for t in types)
        else:
            windows = (window,) * n_layers
        return cls(
            name=name,
            architecture=text.model_type,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(text, "head_dim", None) or d_model // n_heads,
            d_model=d_model,
            context_window=_config_int(text, "max_position_embeddings", "n_positions", "n_ctx", default=0),
            layer_windows=windows,
            vocab_size=_config_int(text, "vocab_size", default=0),
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


def _config_int(config: Any, *names: str, default: int | None = None) -> int:
    """The first of ``names`` that the config has (not None), as an int.

    Raises:
        UnsupportedArchitectureError: none of them and no default.
    """
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return int(value)
    if default is not None:
        return default
    raise UnsupportedArchitectureError(
        f"the {getattr(config, 'model_type', '?')} config has none of {', '.join(names)}: the workbench cannot "
        "tell the model's shape"
    )


def parse_heads(text: str, n_layers: int | None = None, n_heads: int | None = None,
                hint: str | None = None) -> list[tuple[int, int]]:
    """Parse a head set such as ``"3.1,7.4"`` into [(3, 1), (7, 4)], in order: the head-set grammar of
    :mod:`workbench.core.headsets` (``L.H``, ``L.H-L.H``, ``L.*``, ``*``), without analyzer selections.

    With ``n_layers`` and ``n_heads`` every head is range-checked. Empty items are skipped, so an
    empty string gives [] (callers that need heads say so).

    Raises:
        WorkbenchError: an item is malformed (the message ends with ``hint``, default the grammar).
        HeadIndexError: a head lies outside the model.
    """
    from .headsets import GRAMMAR, parse_head_set

    return parse_head_set(text, n_layers, n_heads, hint=hint or GRAMMAR)


@dataclass
class LoadedModel:
    """A model ready for tracing: the transformers model, its tokenizer and its :class:`ModelSpec`."""

    model: torch.nn.Module
    tokenizer: Any
    spec: ModelSpec
    extras: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings: where input ids must live (with a ``device_map`` later layers may
        sit elsewhere; the attention function works on each layer's own device)."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        if emb is not None and getattr(emb, "weight", None) is not None:
            return emb.weight.device
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point dtype (statistics are float32 regardless)."""
        return next(self.model.parameters()).dtype

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


# --- generic loading ---------------------------------------------------------------------------


def _load_hf(name_or_path: str, name: str | None = None, device: torch.device | None = None,
             dtype: str | torch.dtype = "float32", device_map: str | dict | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from transformers.utils import logging as hf_logging

    from .attention import register_attention

    from .presets import PRESETS

    hf_logging.disable_progress_bar()  # keep stderr for our own progress and one-line errors
    register_attention()
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UnknownModelError(
            f"unknown model {name_or_path!r}: not a preset ({', '.join(sorted(PRESETS))}), "
            f"not a local checkpoint directory, and not loadable from the Hugging Face hub ({type(err).__name__})"
        ) from None
    _check_config(config, name_or_path)
    is_vlm = hasattr(config, "vision_config")
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    # a VLM's vision tower keeps SDPA: the workbench kernel and its hooks are for the language model
    attn = {"text_config": ATTN_IMPLEMENTATION, "vision_config": "sdpa"} if is_vlm else ATTN_IMPLEMENTATION
    want = resolve_dtype(dtype, device if device_map is None else torch.device("cuda"), _checkpoint_dtype(config))
    extra = {} if device_map is None else {"device_map": device_map}
    try:
        model = auto.from_pretrained(name_or_path, dtype=want, attn_implementation=attn, **extra)
    except ValueError as err:
        if "attn_implementation" in str(err) or "attention" in str(err).lower():
            raise UnsupportedArchitectureError(
                f"{name_or_path!r} cannot use a custom attention implementation: {err}"
            ) from None
        raise
    _check_supported(model, name_or_path)
    if device_map is None and device is not None and device.type != "cpu":
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=ModelSpec.from_config(name or name_or_path, model.config))


def load_model(name_or_path: Any, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               device_map: str | dict | None = None, tokenizer: Any = None) -> LoadedModel:
    """Load a model for tracing.

    Args:
        name_or_path: a preset name (see :data:`workbench.core.presets.PRESETS`, e.g. ``"smollm2-135m"``), a local
            checkpoint directory, or a Hugging Face model id (needs network or a local HF cache); or a model
            object a researcher already holds: a transformers model (with ``tokenizer``), an nnsight
            ``LanguageModel`` or a TransformerLens ``TransformerBridge`` (:mod:`workbench.core.interop`; with
            ``device``/``dtype`` "auto" it stays where it is).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (float32 on the CPU, the checkpoint's dtype on a GPU), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``. Statistics are float32 whatever the model dtype.
        device_map: passed to transformers (accelerate) to spread a model larger than one GPU over several
            devices (e.g. ``"auto"``); then ``device`` is not used. Hugging Face checkpoints only.
        tokenizer: the tokenizer of a transformers model object (other inputs bring their own).

    Returns:
        :class:`LoadedModel` with the model in eval mode on ``device`` in ``dtype``, using the
        ``"workbench"`` attention implementation.

    Raises:
        UnknownModelError: the name is none of the above.
        MissingModelPackageError: a preset's weight package is missing.
        UnsupportedArchitectureError: an architecture the workbench cannot trace (encoder-decoder, ALiBi,
            cross-attention, attention outside transformers' AttentionInterface), refused before loading weights.
        WorkbenchError: an unknown device or dtype, CUDA without a GPU, or a device_map for a preset.
    """
    from .attention import register_attention
    from .errors import WorkbenchError
    from .presets import PRESETS

    register_attention()
    if not isinstance(name_or_path, (str, os.PathLike)):
        from .interop import from_object

        lm = from_object(name_or_path, tokenizer)
        if device != "auto" or dtype != "auto":
            dev = resolve_device(device) if device != "auto" else lm.device
            lm.model.to(device=dev, dtype=lm.dtype if dtype == "auto" else resolve_dtype(dtype, dev))
        return lm
    dev = resolve_device(device) if device_map is None else None
    resolve_dtype(dtype, dev)  # a bad dtype fails here, before any weights are read
    if name_or_path in PRESETS:
        if device_map is not None:
            raise WorkbenchError(f"device_map applies to Hugging Face checkpoints; the preset {name_or_path} "
                                 "loads on one device: use device=... instead")
        lm = PRESETS[name_or_path].load()
        want = resolve_dtype(dtype, dev, _checkpoint_dtype(lm.model.config))
        if lm.dtype != want or lm.device != dev:
            lm.model.to(device=dev, dtype=want)
        return lm
    return _load_hf(name_or_path, device=dev, dtype=dtype, device_map=device_map)
