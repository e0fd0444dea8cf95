"""What the workbench attention can trace exactly: refusals, before and after loading, of the architectures it
cannot (encoder-decoder, ALiBi, cross-attention, attention outside transformers' ``AttentionInterface``,
unknown attention arguments), each as one line naming the feature."""
from __future__ import annotations

from typing import Any

import torch

from .errors import UnsupportedArchitectureError


SUPPORTED_FAMILIES = "Llama, Qwen2/3, Mistral, Phi-3, Gemma-2/3, OLMo-2, GPT-NeoX, GPT-2, gpt-oss, LLaVA, Qwen2-VL"


def _refuse(name: str, config: Any, feature: str, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{name} ({getattr(config, 'model_type', '?')}) uses {feature}, which the workbench does not support: "
        f"{why}; use a decoder-only model of a supported family ({SUPPORTED_FAMILIES})"
    )


def _check_config(config: Any, name: str) -> None:
    """Refuse, before any weight is loaded, what the workbench attention cannot trace exactly.

    Refused: encoder-decoder models (T5, BART, ...), ALiBi position biases (BLOOM, MPT, Falcon with
    ``alibi=True``), cross-attention layers (``add_cross_attention``, ``cross_attention_layers``), and
    models whose transformers class does not route attention through ``AttentionInterface``.

    Raises:
        UnsupportedArchitectureError: one line naming the feature.
    """
    text = getattr(config, "text_config", None) or config
    if getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False):
        raise _refuse(name, config, "an encoder-decoder architecture",
                      "its decoder cross-attends to an encoder, and only decoder self-attention is traced")
    attn_config = getattr(text, "attn_config", None)
    if (getattr(text, "alibi", False) or text.model_type in ("bloom", "mpt")
            or getattr(attn_config, "alibi", False)):
        raise _refuse(name, config, "ALiBi position biases",
                      "the fused kernels and the closed-form statistics add no per-head linear position bias")
    if getattr(text, "add_cross_attention", False) or getattr(text, "cross_attention_layers", None):
        raise _refuse(name, config, "cross-attention layers",
                      "only decoder self-attention goes through the workbench kernel")
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    )

    mapping = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING if hasattr(config, "vision_config") else MODEL_FOR_CAUSAL_LM_MAPPING
    try:
        cls = mapping[type(config)]
    except KeyError:
        raise _refuse(name, config, "no causal language-model head in transformers",
                      "the workbench traces causal (decoder-only) language models and LLaVA-style VLMs") from None
    if not getattr(cls, "_supports_attention_backend", False):
        raise _refuse(name, config, f"its own attention code ({cls.__name__})",
                      "it does not route attention through transformers' AttentionInterface, so the workbench "
                      "kernel never sees it")


def _check_supported(model: torch.nn.Module, name: str) -> None:
    """Refuse a loaded model whose attention the workbench cannot see or trace (see :func:`_check_config`).

    Raises:
        UnsupportedArchitectureError: one line naming the feature.
    """
    from .hooks import attention_module, decoder_layers

    if not getattr(model, "_supports_attention_backend", False):
        raise _refuse(name, getattr(model, "config", None), f"its own attention code ({type(model).__name__})",
                      "it does not route attention through transformers' AttentionInterface, so the workbench "
                      "kernel never sees it")
    from .attention import IGNORED_ATTENTION_KWARGS, SUPPORTED_ATTENTION_KWARGS

    seen: set[type] = set()
    for layer in decoder_layers(model):
        attn = attention_module(layer)
        if any(getattr(m, "is_cross_attention", False) for m in layer.modules()):
            raise _refuse(name, getattr(model, "config", None), "cross-attention layers",
                          "only decoder self-attention goes through the workbench kernel")
        if type(attn) in seen:
            continue
        seen.add(type(attn))
        unknown = sorted(_attention_call_kwargs(type(attn)) - SUPPORTED_ATTENTION_KWARGS - IGNORED_ATTENTION_KWARGS)
        if unknown:
            raise _refuse(name, getattr(model, "config", None), f"the attention argument(s) {', '.join(unknown)}",
                          f"{type(attn).__name__} passes them to the attention function and the workbench kernel "
                          "does not know what they change")


def _attention_call_kwargs(cls: type) -> set[str]:
    """Keyword names an attention module's ``forward`` passes to ``attention_interface(...)``, read from its
    source (empty when the source is unavailable or has no such call)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "attention_interface":
            names.update(kw.arg for kw in node.keywords if kw.arg is not None)
    return names
