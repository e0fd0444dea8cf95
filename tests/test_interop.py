"""load_model takes the model objects researchers already hold (workbench.core.interop): a transformers model with its
tokenizer, an nnsight LanguageModel and a TransformerLens TransformerBridge all give the same LoadedModel, whose
Tracer trace equals the one of the same checkpoint loaded by name. Tiny random-weight Llama built offline from a
config (no downloads)."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from workbench import Tracer, load_model
from workbench.core.errors import WorkbenchError

ARRAYS = ("received", "entropy", "top_key", "z")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.core.tiny_models import _tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, initializer_range=0.15)
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    _tokenizer().save_pretrained(d)
    ids = torch.randint(3, 250, (1, 24), generator=torch.Generator().manual_seed(1))
    return d, AutoTokenizer.from_pretrained(d), ids


def _trace(lm, ids):
    return Tracer(lm, stats=("received", "entropy", "top_key"), z=True).run(ids)


def _same_trace(lm, checkpoint):
    d, _, ids = checkpoint
    by_name = load_model(str(d))
    ref, got = _trace(by_name, ids), _trace(lm, ids)
    for name in ARRAYS:
        assert torch.equal(got[name], ref[name]), name
    assert dataclasses.replace(lm.spec, name=by_name.spec.name) == by_name.spec


def test_plain_transformers_model_with_its_tokenizer(checkpoint):
    from transformers import LlamaForCausalLM

    d, tok, _ = checkpoint
    model = LlamaForCausalLM.from_pretrained(d)
    lm = load_model(model, tokenizer=tok)
    assert lm.model is model and model.config._attn_implementation == "workbench"
    _same_trace(lm, checkpoint)
    with pytest.raises(WorkbenchError, match="without a tokenizer"):
        load_model(LlamaForCausalLM.from_pretrained(d))


def test_nnsight_language_model(checkpoint):
    from nnsight.modeling.language import LanguageModel
    from transformers import LlamaForCausalLM

    d, tok, ids = checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is deprecated in nnsight 0.8 in favour of TransformersModel
        nn = LanguageModel(LlamaForCausalLM.from_pretrained(d), tokenizer=tok)
    lm = load_model(nn)
    assert lm.model is nn._module and lm.tokenizer is tok
    _same_trace(lm, checkpoint)


def test_transformer_lens_bridge(checkpoint):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaForCausalLM

    d, tok, ids = checkpoint
    bridge = TransformerBridge.boot_transformers(str(d), hf_model=LlamaForCausalLM.from_pretrained(d), tokenizer=tok)
    with torch.no_grad():
        before = bridge(ids, return_type="logits")
    lm = load_model(bridge)
    # the bridge's own tensors, not a copy
    assert {p.data_ptr() for p in lm.model.parameters()} <= {p.data_ptr() for p in bridge.original_model.parameters()}
    _same_trace(lm, checkpoint)
    with torch.no_grad():
        ours = lm.model(input_ids=ids).logits
        after = bridge(ids, return_type="logits")
    assert torch.equal(before, after)  # the bridge is left as it was
    torch.testing.assert_close(ours, before, atol=1e-5, rtol=1e-5)


def test_not_a_model_is_a_one_line_error():
    with pytest.raises(WorkbenchError, match="cannot load a dict"):
        load_model({"not": "a model"})
