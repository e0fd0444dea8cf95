"""Tiny random-weight models of every supported architecture, and their inputs, for the oracle matrix
(:mod:`workbench.core.oracle`) and the architecture tests: two-layer transformers configs (no downloads), a
byte-level tokenizer, a left-padded batch of two 24-token sequences (VLMs: with a small image in each), and
the visibility (padding, causality, sliding window) each query row has.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

VOCAB = 300  # 3 special tokens, 256 byte tokens (ids 3..258), image tokens at 290..293
N_TOKENS = 24
PAD = 5  # left padding of the second sequence
WINDOW = 8  # sliding window of the sliding-window architectures (shorter than the input)
IMAGE_TOKEN, VISION_START, VISION_END = 290, 292, 293
INIT_STD = 0.15  # larger than the default 0.02 so that attention is peaked and soft-capping is active


def _common(**kw: Any) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                initializer_range=INIT_STD, tie_word_embeddings=False)
    base.update(kw)
    return base


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as T

    def gpt_neox():
        c = _common(rotary_pct=0.5)
        c.pop("num_key_value_heads")
        return T.GPTNeoXConfig(**c)

    return {
        "llama": lambda: T.LlamaConfig(**_common(head_dim=16)),
        "qwen2": lambda: T.Qwen2Config(**_common()),
        "qwen3": lambda: T.Qwen3Config(**_common(head_dim=16)),
        "mistral": lambda: T.MistralConfig(**_common(head_dim=16, sliding_window=WINDOW)),
        "phi3": lambda: T.Phi3Config(**_common(sliding_window=WINDOW)),
        "gemma2": lambda: T.Gemma2Config(**_common(head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=3.0,
                                                   final_logit_softcapping=3.0, query_pre_attn_scalar=16)),
        "gemma3": lambda: T.Gemma3TextConfig(**_common(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                                                       layer_types=["sliding_attention", "full_attention"])),
        "olmo2": lambda: T.Olmo2Config(**_common()),
        "gpt_neox": gpt_neox,
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=INIT_STD),
        "gpt_oss": lambda: T.GptOssConfig(**_common(head_dim=16, sliding_window=WINDOW, num_local_experts=4,
                                                    num_experts_per_tok=2,
                                                    layer_types=["sliding_attention", "full_attention"],
                                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
        "llava": lambda: T.LlavaConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
            text_config=dict(model_type="llama", **_common(head_dim=16)), image_token_index=IMAGE_TOKEN,
            image_seq_length=4),
        "qwen2_vl": lambda: T.Qwen2VLConfig(
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2),
            text_config=dict(**_common(rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3],
                                                            rope_theta=10000.0))),
            image_token_id=IMAGE_TOKEN, video_token_id=291, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END),
    }


ARCHITECTURES: dict[str, Callable[[], Any]] = _configs()
"""Architecture name -> a function building its tiny transformers config."""


def _tokenizer():
    """A byte-level tokenizer without merges: ids 0-2 are <pad>, <s>, </s>, ids 3..258 the 256 bytes, so any
    text (the census's pydoc prose) tokenises."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({ch: 3 + i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab, [], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def save_tiny(arch: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny random-weight model of ``arch`` (float32) and save it with a tokenizer to ``path``.

    Raises:
        KeyError: an unknown architecture name.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = ARCHITECTURES[arch]()
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):  # learned sink logits comparable to the scores, not ~0
                p.normal_(0.0, 1.0)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    _tokenizer().save_pretrained(path)
    return path


def make_inputs(config: Any, device: str | torch.device = "cpu", seed: int = 1) -> dict[str, torch.Tensor]:
    """The padded batch: ``input_ids`` and ``attention_mask`` (2, N_TOKENS), the second row left-padded by
    PAD tokens; a VLM also gets one small image per row (``pixel_values`` and, for Qwen2-VL,
    ``image_grid_thw`` and ``mm_token_type_ids``) with its image tokens in the text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (2, N_TOKENS), generator=g)  # byte tokens
    mask = torch.ones(2, N_TOKENS, dtype=torch.long)
    ids[1, :PAD], mask[1, :PAD] = 0, 0
    ids[0, 0], ids[1, PAD] = 1, 1  # start-of-text
    out: dict[str, torch.Tensor] = {}
    mt = config.model_type
    if mt == "llava":
        for b in range(2):
            s = 1 + (PAD if b else 0) + 3
            ids[b, s: s + 4] = IMAGE_TOKEN
        out["pixel_values"] = torch.randn(2, 3, 28, 28, generator=g)
    elif mt == "qwen2_vl":
        for b in range(2):
            s = 1 + (PAD if b else 0) + 3
            ids[b, s], ids[b, s + 1: s + 5], ids[b, s + 5] = VISION_START, IMAGE_TOKEN, VISION_END
        out["pixel_values"] = torch.randn(32, 3 * 2 * 14 * 14, generator=g)
        out["image_grid_thw"] = torch.tensor([[1, 4, 4], [1, 4, 4]])
        out["mm_token_type_ids"] = (ids == IMAGE_TOKEN).int()  # 1 = image token (M-RoPE positions)
    out["input_ids"], out["attention_mask"] = ids, mask
    return {k: v.to(device) for k, v in out.items()}


def layer_windows(config: Any) -> list[int | None]:
    """Each decoder layer's sliding window (None: full causal attention), read from the config."""
    text = getattr(config, "text_config", None) or config
    n = text.num_hidden_layers
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if types is not None:
        return [window if t == "sliding_attention" else None for t in types]
    return [window] * n


def visibility(attention_mask: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, N, N) bool: query i (a real token) sees key j (a real token, j <= i, i - j < window)."""
    n = attention_mask.shape[1]
    real = attention_mask.bool()
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    causal = j <= i
    if window is not None:
        causal = causal & (i - j < window)
    return causal[None].to(real.device) & real[:, :, None] & real[:, None, :]
