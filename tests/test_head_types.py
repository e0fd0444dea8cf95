"""Classic head types: kernel-backed scores equal TransformerLens' head_detector; planted heads are found."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from workbench.core.attention import AttentionCall, attention_with_lse
from workbench.analyzers.head_types import (HEAD_TYPES, HeadTypeScorer, detection_pairs, head_type_scores,
                                  repeated_random_tokens)

tl_hd = pytest.importorskip("transformer_lens.head_detector")
TL_PATTERN = {"previous_token": tl_hd.get_previous_token_head_detection_pattern,
              "duplicate_token": tl_hd.get_duplicate_token_head_detection_pattern,
              "induction": tl_hd.get_induction_head_detection_pattern}


def _dense(pairs, n):
    d = torch.zeros(n, n)
    d[pairs[0], pairs[1]] = 1
    return d


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_detection_pairs_equal_transformer_lens_patterns(kind):
    g = torch.Generator().manual_seed(1)
    for tokens in (torch.randint(0, 6, (1, 30), generator=g), repeated_random_tokens(50, 12, 1, seed=3)):
        ours = _dense(detection_pairs(tokens[0], kind), tokens.shape[1])
        assert torch.equal(ours, TL_PATTERN[kind](tokens))


def _tl_scores(patterns, tokens, kind, exclude_bos, exclude_current):
    """TransformerLens' own score from dense patterns (L, H, T, T)."""
    det = TL_PATTERN[kind](tokens[None])
    return torch.tensor([[tl_hd.compute_head_attention_similarity_score(
        patterns[layer, h], det, exclude_bos=exclude_bos, exclude_current_token=exclude_current, error_measure="mul")
        for h in range(patterns.shape[1])] for layer in range(patterns.shape[0])])


@pytest.mark.parametrize("exclude_bos,exclude_current", [(False, False), (True, False), (False, True), (True, True)])
def test_kernel_scores_equal_transformer_lens_on_eager_patterns(tiny_lm, exclude_bos, exclude_current):
    tokens = repeated_random_tokens(97, 10, 2, seed=0, low=3)
    tokens[1, 4] = tokens[1, 7]  # an extra duplicate inside the first half
    df = head_type_scores(tiny_lm, tokens, exclude_bos=exclude_bos, exclude_current_token=exclude_current)
    tiny_lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = tiny_lm.model(input_ids=tokens, output_attentions=True).attentions
    finally:
        tiny_lm.model.set_attn_implementation("workbench")
    for kind in HEAD_TYPES:
        ref = torch.stack([_tl_scores(torch.stack([a[b] for a in att]), tokens[b], kind, exclude_bos, exclude_current)
                           for b in range(len(tokens))]).mean(0)
        ours = torch.tensor(df[f"{kind}_score"].to_numpy()).view_as(ref)
        torch.testing.assert_close(ours, ref.float(), atol=2e-5, rtol=1e-4)


def test_planted_previous_token_and_induction_heads_are_found():
    """Head 0 attends to the previous position, head 1 to the token after the earlier occurrence."""
    half, big = 20, 60.0
    n, dim = 2 * half, 64
    tok = torch.randperm(dim)[:half]
    tokens = torch.cat([tok, tok])
    eye = torch.eye(dim)
    q = torch.zeros(1, 2, n, dim)
    k = torch.zeros(1, 2, n, dim)
    q[0, 0, 1:] = big * eye[torch.arange(n - 1)]  # query i looks for position i-1
    k[0, 0] = eye[torch.arange(n)]
    q[0, 1] = big * eye[tokens]  # query i looks for keys whose previous token equals t_i
    k[0, 1, 1:] = eye[tokens[:-1]]
    v = torch.randn(1, 2, n, dim)
    out, lse = attention_with_lse(q, k, v, None, 1.0)
    call = AttentionCall(layer=0, query=q, key=k, value=v, mask=None, output=out, lse=lse, scale=1.0)
    scorer = HeadTypeScorer(tokens, exclude_current_token=True)
    scorer.on_attention(call)
    prev, ind = scorer.scores["previous_token"][0][0], scorer.scores["induction"][0][0]
    assert prev[0].item() == pytest.approx(1.0, abs=1e-6)
    assert prev[1].item() < 0.2
    # the first half has no earlier occurrence, so a perfect induction head scores 1/2 there
    plain = HeadTypeScorer(tokens)
    plain.on_attention(call)
    assert plain.scores["induction"][0][0, 1].item() == pytest.approx(0.5, abs=1e-4)
    assert ind[0].item() < 0.1


@pytest.mark.slow
def test_smollm2_scores_agree_with_transformer_bridge(smollm2):
    """Same tokens through TransformerLens' TransformerBridge (eager) and through our kernel."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from workbench.core.models import cache_dir

    path = str(cache_dir() / "smollm2-135m")  # the dequantized copy is a plain HF checkpoint
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # its own copy: the bridge makes it eager
    bridge = TransformerBridge.boot_transformers(path, hf_model=hf, tokenizer=smollm2.tokenizer)
    with torch.no_grad():
        text = "The cat sat on the mat because the mat was warm. The cat sat on the mat because the mat was warm."
        # detect_head itself (prepends BOS, as TransformerLens does)
        ref = tl_hd.detect_head(bridge, text, "previous_token_head")
        ids = bridge.to_tokens(text)
        rnd = repeated_random_tokens(smollm2.model.config.vocab_size, 24, 1, seed=0)
        _, cache = bridge.run_with_cache(rnd)
        pats = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(30)])
        ref_ind = _tl_scores(pats, rnd[0], "induction", False, False)
    ours = head_type_scores(smollm2, ids, ("previous_token",))["previous_token_score"].to_numpy().reshape(30, 9)
    ours_ind = head_type_scores(smollm2, rnd, ("induction",))["induction_score"].to_numpy().reshape(30, 9)
    assert np.abs(ours - ref.numpy()).max() < 1e-4  # measured 2.4e-7
    assert np.abs(ours_ind - ref_ind.numpy()).max() < 1e-4
    # the top heads agree
    assert set(np.argsort(-ours.ravel())[:5]) == set(np.argsort(-ref.numpy().ravel())[:5])


@pytest.mark.slow
def test_census_section(smollm2):
    from workbench.report.census import run_census

    res = run_census(smollm2, n_samples=1, seq_len=64, out_dir=None, sections=["attention", "head_types"], progress=False)
    assert {"first_token_mass", "previous_token_score", "duplicate_token_score", "induction_score"} <= set(res.heads.columns)
    assert len(res.heads) == 30 * 9
    # exact: duplicate-token and induction scores are TransformerLens' own scores of transformers' eager patterns
    # on the section's repeated random tokens (4 sequences of 2 x 32 tokens, seed 0)
    from tests.test_tracer import eager_maps

    rnd = repeated_random_tokens(smollm2.model.config.vocab_size, 32, 4, seed=0)
    A, _ = eager_maps(smollm2, rnd)  # (L, B, H, N, N)
    for kind in ("duplicate_token", "induction"):
        ref = torch.stack([_tl_scores(A[:, b].double(), rnd[b], kind, False, False) for b in range(4)]).mean(0)
        ours = torch.tensor(res.heads.sort_values(["layer", "head"])[f"{kind}_score"].to_numpy()).view(30, 9)
        assert float((ours - ref).abs().max()) < 1e-4
        top = [(int(i) // 9, int(i) % 9) for i in torch.argsort(-ref.flatten())[:5]]
        got = [(h["layer"], h["head"]) for h in res.summary["head_types"][f"top_{kind}_heads"]]
        assert got[:3] == top[:3] and sorted(ref.flatten().tolist())[-3] - sorted(ref.flatten().tolist())[-4] > 1e-4
