"""The oracle matrix: every supported architecture, float32 and bfloat16, workbench vs eager attention.

Tiny random-weight models built from transformers configs (2 layers, 24 tokens, a left-padded batch of
two; Mistral/Phi-3/Gemma/gpt-oss with an 8-token sliding window; Gemma-2 soft-capped; gpt-oss with learned
sinks; LLaVA and Qwen2-VL with an image per row) are loaded with :func:`workbench.load_model` and traced,
and compared with the same checkpoint under transformers' eager attention with ``output_attentions``
(:mod:`workbench.core.oracle` reduces eager's own maps with plain torch, not with :mod:`workbench.core.stats`).

float32: patterns, received attention and row sums within 1e-5; entropy, z, residuals and logits
within 5e-5; eager's probability at our top key is eager's row maximum (within 1e-6).
bfloat16, against the float32 eager reference, with transformers' own bfloat16 eager as the yardstick.
The issue's criterion, isolated from residual-stream drift (:func:`workbench.core.oracle.same_input_errors`): in
every layer, on the q, k, v that layer received, our patterns are no further from transformers' eager
attention in float32 than its bfloat16 eager attention is (max and rms over real rows), and rows (plus the
learned sink's share) sum to 1 within 1e-3; this also runs on SmolLM2-135M and Gemma-3-270M (slow).
Whole-model bounds on the drift: every pattern row sums to 1 within 1e-3 (gpt-oss: with the learned sink's probability exp(sink - lse'));
in layer 0, where both bfloat16 paths attend over the same q and k, patterns and received attention
are no further from float32 eager than bfloat16 eager's (+2e-3); over the whole model, where each path
carries its own bfloat16 residual stream, the rms error of the patterns is within 1.1x bfloat16 eager's,
of z and logits within 1.25x, and every max error within 2x (+1e-3); the top key is within twice the
pattern error of eager's argmax.
"""
from __future__ import annotations

import pytest
import torch

from workbench.core.oracle import compare, compare_checkpoint, compare_same_inputs, same_input_errors
from workbench.core.tiny_models import ARCHITECTURES

FP32_TOL = {"pattern": 1e-5, "received": 1e-5, "row_sum": 1e-5, "top_key": 1e-6,
            "entropy": 5e-5, "z": 5e-5, "resid_pre": 5e-5, "logits": 5e-5,
            "pattern_rms": 1e-6, "z_rms": 1e-5, "logits_rms": 1e-5}
BF16_ROW_SUM = 1e-3  # |pattern row sum (+ sink probability) - 1|
# max |ours - fp32| <= max |eager bf16 - fp32| + slack; received attention is a mean of pattern entries
BF16_LAYER0_SLACK = {"pattern": 2e-3, "received": 2e-3}
# rms |ours - fp32| <= factor * rms |eager bf16 - fp32|, whole model. z and logits carry the MLPs' bf16 drift,
# which differs between the paths after layer 0 (gpt-oss, a mixture of experts: measured 1.20x and 1.16x)
BF16_RMS_FACTOR = {"pattern_rms": 1.1, "z_rms": 1.25, "logits_rms": 1.25}
BF16_MAX_FACTOR = 2.0  # max |ours - fp32| <= 2 * max |eager bf16 - fp32| (+ 1e-3), whole model

_ROWS: dict = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("oracle")


def row(arch, dtype, workdir):
    key = (arch, dtype)
    if key not in _ROWS:
        _ROWS[key] = compare(arch, dtype, workdir)
    return _ROWS[key]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_float32_equals_eager(arch, workdir):
    r = row(arch, torch.float32, workdir)
    assert r["eager_leak"] == 0.0  # our visibility (padding, causal, windows) is eager's
    assert r["closure"] <= 1e-5  # rows (plus gpt-oss's sink) sum to 1
    bad = {k: v for k, v in r["ours"].items() if not v <= FP32_TOL[k]}
    assert not bad, f"{arch} float32 beyond {FP32_TOL}: {bad}"


def check_bfloat16(r: dict, name: str) -> None:
    """The bfloat16 criteria of the module docstring for one comparison row of workbench.core.oracle."""
    ours, eager = r["ours"], r["eager"]
    assert r["closure"] <= BF16_ROW_SUM, f"{name}: bf16 pattern rows (+ sink) sum to 1 only within {r['closure']:.2e}"
    # layer 0: both bfloat16 paths attend over the same q and k (VLMs: up to the vision tower's SDPA vs eager)
    o0, e0 = r["ours_layers"][0], r["eager_layers"][0]
    worse = {k: (o0[k], e0[k]) for k, slack in BF16_LAYER0_SLACK.items() if not o0[k] <= e0[k] + slack}
    assert not worse, f"{name} bf16 layer 0 (ours, eager bf16) max errors against eager fp32: {worse}"
    # the whole model: later layers see each path's own bfloat16 residual stream
    worse = {k: (ours[k], eager[k]) for k, f in BF16_RMS_FACTOR.items() if not ours[k] <= f * eager[k]}
    assert not worse, f"{name} bf16 (ours, eager bf16) rms errors against eager fp32: {worse}"
    worse = {k: (ours[k], eager[k]) for k in ("pattern", "row_sum", "received", "entropy", "z", "resid_pre", "logits")
             if not ours[k] <= BF16_MAX_FACTOR * eager[k] + 1e-3}
    assert not worse, f"{name} bf16 (ours, eager bf16) max errors against eager fp32: {worse}"
    # top key: if |A' - A| <= e entrywise then A[argmax A'] >= max A - 2e
    for o in r["ours_layers"]:
        assert o["top_key"] <= 2 * o["pattern"] + 1e-6


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_bfloat16_no_worse_than_eager_bfloat16(arch, workdir):
    check_bfloat16(row(arch, torch.bfloat16, workdir), arch)


def check_same_inputs(layers: list[dict], name: str) -> None:
    """Every layer: ours no further from float32 eager than bfloat16 eager on the same q, k, v; rows sum to 1."""
    assert layers, f"{name}: no attention call reached the workbench"
    for i, r in enumerate(layers):
        assert r["ours"] <= r["eager"] and r["ours_rms"] <= r["eager_rms"], f"{name} layer {i}: {r}"
        assert r["row_sum"] <= BF16_ROW_SUM, f"{name} layer {i}: {r}"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_bfloat16_same_inputs_no_worse_than_eager_bfloat16(arch, workdir):
    check_same_inputs(compare_same_inputs(arch, torch.bfloat16, workdir), arch)


@pytest.mark.slow
@pytest.mark.parametrize("preset,n", [("smollm2-135m", 256), ("gemma3-270m", 700)])
def test_real_models_bfloat16_same_inputs_no_worse_than_eager_bfloat16(preset, n):
    """The real models in bfloat16 on pydoc prose (Gemma-3: past its 512-token window, so sliding and global
    layers both count), every layer on its own q, k, v."""
    from workbench.core.models import cache_dir, load_model
    from workbench.tasks.text import token_windows

    lm = load_model(preset)
    ids = token_windows(lm.tokenizer, n, 1)
    layers = same_input_errors(cache_dir() / preset, torch.bfloat16,
                               {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert len(layers) == lm.spec.n_layers
    check_same_inputs(layers, preset)


@pytest.mark.slow
def test_smollm2_bfloat16_no_worse_than_eager_bfloat16(smollm2):
    """The real model in bfloat16 on 256 tokens of pydoc prose, by the same criteria as the matrix."""
    from workbench.core.models import cache_dir
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 256, 1)
    r = compare_checkpoint(cache_dir() / "smollm2-135m", torch.bfloat16,
                           {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    check_bfloat16(r, "smollm2-135m")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_spec_and_windows_match_the_model(arch, workdir):
    r = row(arch, torch.float32, workdir)
    spec = r["spec"]
    assert {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "head_dim": spec.head_dim,
            "d_model": spec.d_model} == r["observed"]
    assert list(spec.layer_windows) == r["windows"]
    for w, edge in zip(r["windows"], r["window_edge"]):
        if w is not None:  # eager attends to the oldest key in the window: the window is exactly w
            assert w < 24 and edge > 0


def test_matrix_covers_the_issue_architectures():
    assert {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3", "olmo2", "gpt_neox", "gpt2",
            "gpt_oss", "llava", "qwen2_vl"} <= set(ARCHITECTURES)
    sliding = {a for a, make in ARCHITECTURES.items() if getattr(make(), "sliding_window", None)}
    assert {"mistral", "phi3", "gemma2", "gemma3", "gpt_oss"} <= sliding
    assert ARCHITECTURES["gemma2"]().attn_logit_softcapping
