"""Kernel backends, architecture features (sliding windows, soft-capping, learned sinks, finite biases),
float32 statistics in bfloat16 models, scoped hooks, device/dtype loading.

Every reference here is an eager softmax written in this file with its own masks (never the project's
helpers): scores = softcap(scale q.k) + mask, sinks appended as an extra logit, float64 softmax.
"""
from __future__ import annotations

import threading

import pytest
import torch

from tests.conftest import make_tiny_lm
from workbench.core import stats as S
from workbench.core.attention import (
    SUPPORTED_ATTENTION_KWARGS,
    active_hooks,
    AttentionCall,
    attention_hooks,
    workbench_attention,
)
from workbench.core.errors import UnsupportedArchitectureError, WorkbenchError
from workbench.core.kernels import BACKENDS, attention_with_lse, force_backend
from workbench.core.reference_kernel import reference_attention
from workbench.core.oracle import eager_attention

# --- kernels on random inputs -------------------------------------------------------------------------


def _visible(case: str, b: int, nq: int, nk: int, window: int = 6, pad: int = 5) -> torch.Tensor:
    """(B, Nq, Nk) bool visibility, bottom-right causal, built here independently."""
    qpos = torch.arange(nq)[:, None] + (nk - nq)
    kpos = torch.arange(nk)[None, :]
    vis = (kpos <= qpos).expand(b, nq, nk).clone()
    if case == "padding":
        vis[1, :, :pad] = False  # item 1 is left-padded: nobody sees its first keys
    if case == "window":
        vis &= kpos > qpos - window
    return vis


def _case_mask(case: str, b: int, nq: int, nk: int, seed: int = 0) -> torch.Tensor:
    vis = _visible(case, b, nq, nk)
    add = torch.zeros(b, nq, nk, dtype=torch.float64).masked_fill(~vis, float("-inf"))
    if case == "bias":
        g = torch.Generator().manual_seed(seed)
        add = add + 0.7 * torch.randn(b, nq, nk, generator=g, dtype=torch.float64)
    return add[:, None]


CASES = ["causal", "padding", "window", "bias"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("nq,nk", [(37, 37), (5, 37)])
def test_reference_and_cpu_flash_equal_eager(case, dtype, nq, nk):
    torch.manual_seed(3)
    b = 2
    q = torch.randn(b, 4, nq, 16).to(dtype)
    k, v = torch.randn(b, 2, nk, 16).to(dtype), torch.randn(b, 2, nk, 16).to(dtype)
    add = _case_mask(case, b, nq, nk)
    mask = None if case == "causal" else add.to(dtype)
    ref_out, ref_lse, _ = eager_attention(q, k, v, add if mask is None else mask.double(), 0.3)
    tol_out, tol_lse = (2e-5, 2e-5) if dtype == torch.float32 else (2e-2, 2e-3)
    results = {}
    for name in ("reference", "cpu-flash"):
        with force_backend(name):
            out, lse = attention_with_lse(q, k, v, mask, 0.3)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        assert (out.double() - ref_out).abs().max() < tol_out, name
        assert (lse.double() - ref_lse).abs().max() < tol_lse, name
        results[name] = (out, lse)
    # reference == fused kernel
    assert (results["reference"][1] - results["cpu-flash"][1]).abs().max() < tol_lse
    assert (results["reference"][0].float() - results["cpu-flash"][0].float()).abs().max() < tol_out


def test_fully_masked_rows_give_zero_output_and_lse_on_every_cpu_backend():
    torch.manual_seed(4)
    q, k, v = torch.randn(2, 4, 12, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    vis = _visible("padding", 2, 12, 12)  # item 1: queries 0..4 see only padded keys
    mask = torch.zeros(2, 1, 12, 12).masked_fill(~vis[:, None], float("-inf"))
    for name in ("reference", "cpu-flash"):
        with force_backend(name):
            out, lse = attention_with_lse(q, k, v, mask, 0.5)
        assert torch.equal(out[1, :, :5], torch.zeros_like(out[1, :, :5])), name
        assert torch.equal(lse[1, :, :5], torch.zeros_like(lse[1, :, :5])), name
        assert torch.isfinite(lse).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("case", ["causal", "window", "padding"])
def test_reference_softcap_equals_eager(case):
    torch.manual_seed(5)
    q, k, v = torch.randn(2, 4, 40, 16) * 3, torch.randn(2, 2, 40, 16) * 3, torch.randn(2, 2, 40, 16)
    add = _case_mask(case, 2, 40, 40)
    out, lse = reference_attention(q, k, v, None if case == "causal" else add.float(), 0.25, causal=case == "causal",
                                   softcap=2.0, q_block=16, k_block=8)
    ref_out, ref_lse, _ = eager_attention(q, k, v, add, 0.25, softcap=2.0)
    assert (out.double() - ref_out).abs().max() < 1e-5
    assert (lse.double() - ref_lse).abs().max() < 1e-5


def test_reference_skips_key_blocks_outside_a_sliding_window():
    """O(N x W): with a window, the keys visited per query block stay within block + window."""
    nq, w = 64, 8
    mask = _case_mask("window", 1, nq, nq).float()
    torch.manual_seed(6)
    q, k, v = torch.randn(1, 2, nq, 8), torch.randn(1, 2, nq, 8), torch.randn(1, 2, nq, 8)
    seen_widths = []
    real_matmul = torch.matmul

    def spy(a, b_):
        if b_.dim() == 4 and b_.shape[-2] == 8 and a.shape[-1] == 8:  # q @ k^T of one block
            seen_widths.append(b_.shape[-1])
        return real_matmul(a, b_)

    torch.matmul = spy
    try:
        out, lse = reference_attention(q, k, v, mask, 0.3, q_block=8, k_block=64)
    finally:
        torch.matmul = real_matmul
    assert seen_widths and max(seen_widths) <= 8 + w  # never the full 64 keys
    ref_out, ref_lse, _ = eager_attention(q, k, v, mask.double(), 0.3)
    assert (out.double() - ref_out).abs().max() < 1e-5


def test_cuda_backends_are_unreachable_on_cpu():
    q = torch.randn(1, 2, 4, 8)
    from workbench.core.kernels import Features, select_backend

    for feats in (Features(False, False, True), Features(True, False, False), Features(True, True, False)):
        assert not select_backend(q, q, feats).name.startswith("cuda")
    assert select_backend(q, q, Features(False, True, True)).name == "reference"  # soft-capping on the CPU
    for name in ("cuda-flash", "cuda-efficient", "cuda-flex"):
        assert not BACKENDS[name].supports(q, q, Features(False, False, True))


# --- the attention function -------------------------------------------------------------------------


class _Mod(torch.nn.Module):
    layer_idx = 0
    is_causal = True


def test_unknown_attention_kwargs_raise_one_line_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(UnsupportedArchitectureError, match="cu_seq_lens_q"):
        workbench_attention(_Mod(), q, q, q, None, cu_seq_lens_q=torch.tensor([0, 4]))
    with pytest.raises(UnsupportedArchitectureError, match="position_bias"):
        workbench_attention(_Mod(), q, q, q, None, position_bias=torch.zeros(1, 2, 4, 4))
    # bookkeeping and None-valued features pass
    workbench_attention(_Mod(), q, q, q, None, position_ids=torch.arange(4)[None], softcap=None, sliding_window=None)
    assert {"softcap", "s_aux", "sliding_window"} <= SUPPORTED_ATTENTION_KWARGS


def test_finite_mask_values_reach_scores_and_statistics():
    """A finite additive bias: scores() adds it exactly as the kernel did (it used to be dropped)."""
    torch.manual_seed(7)
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    add = _case_mask("bias", 2, 10, 10)
    seen = []

    class Grab:
        def on_attention(self, call):
            seen.append(call)

    with attention_hooks(Grab()):
        out, _ = workbench_attention(_Mod(), q, k, v, add.float(), scaling=0.4)
    call = seen[0]
    ref_out, ref_lse, ref_p = eager_attention(q, k, v, add.float().double(), 0.4)
    assert (call.lse.double() - ref_lse).abs().max() < 1e-5
    assert (call.probs().double() - ref_p).abs().max() < 1e-6
    st = S.head_statistics(call)
    assert (st["received_sum"].double() - ref_p.sum(2)).abs().max() < 1e-5
    assert (out.transpose(1, 2).double() - ref_out).abs().max() < 1e-5


# --- tiny models with the features: Gemma-2 (soft-cap + window), gpt-oss (sinks + window) ----------------


def _tiny(arch: str, dtype: torch.dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM, GptOssConfig, GptOssForCausalLM

    from workbench.core.attention import register_attention

    register_attention()
    torch.manual_seed(11)
    common = dict(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, sliding_window=6, max_position_embeddings=128, pad_token_id=0)
    if arch == "gemma2":
        cfg = Gemma2Config(**common, attn_logit_softcapping=2.0, final_logit_softcapping=None, query_pre_attn_scalar=16)
        cls = Gemma2ForCausalLM
    else:
        cfg = GptOssConfig(**common, num_local_experts=4, num_experts_per_tok=2,
                           layer_types=["sliding_attention", "full_attention"],
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        cls = GptOssForCausalLM
    cfg._attn_implementation = "workbench"
    model = cls(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)  # sharp attention: soft-capping and sinks matter
            if hasattr(layer.self_attn, "sinks"):
                layer.self_attn.sinks.copy_(torch.linspace(-1.0, 2.0, cfg.num_attention_heads))
    return model.to(dtype)


def _eager_from_call(call: AttentionCall, model, pad: torch.Tensor):
    """Independent eager attention of a captured call: own causal/window/padding mask from the 2-D padding
    mask and the config."""
    cfg = model.config
    layer = call.layer
    nq, nk = call.query.shape[2], call.key.shape[2]
    qpos = torch.arange(nq)[:, None] + (nk - nq)
    kpos = torch.arange(nk)[None, :]
    vis = (kpos <= qpos) & pad.bool()[:, None, :nk]  # (B, Nq, Nk)
    if cfg.layer_types[layer] == "sliding_attention":
        vis &= kpos > qpos - cfg.sliding_window
    add = torch.zeros(vis.shape, dtype=torch.float64).masked_fill(~vis, float("-inf"))[:, None]
    softcap = getattr(cfg, "attn_logit_softcapping", None)
    sinks = getattr(model.model.layers[layer].self_attn, "sinks", None)
    scale = model.model.layers[layer].self_attn.scaling
    return eager_attention(call.query, call.key, call.value, add, scale, softcap=softcap,
                  sinks=None if sinks is None else sinks.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["gemma2", "gpt_oss"])
def test_softcap_and_sinks_statistics_equal_eager(arch, dtype):
    model = _tiny(arch, dtype)
    ids = torch.randint(3, 64, (2, 24))
    pad = torch.ones_like(ids)
    pad[1, :5] = 0  # left padding: item 1's first five query rows see no key
    calls = []

    class Grab:
        def on_attention(self, call):
            calls.append(call)

    with torch.no_grad(), attention_hooks(Grab()):
        logits = model(ids, attention_mask=pad).logits
    assert len(calls) == 2
    errs = {}
    for call in calls:
        assert call.sliding_window == (6 if model.config.layer_types[call.layer] == "sliding_attention" else None)
        assert (call.softcap is not None) == (arch == "gemma2") and (call.sinks is not None) == (arch == "gpt_oss")
        ref_out, ref_lse, ref_p = _eager_from_call(call, model, pad)
        p = call.probs()
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        errs["pattern"] = max(errs.get("pattern", 0), float((p.double() - ref_p).abs().max()))
        errs["lse"] = max(errs.get("lse", 0), float((call.lse.double() - ref_lse).abs().max()))
        assert torch.equal(call.lse[1, :, :5], torch.zeros_like(call.lse[1, :, :5]))  # fully masked rows
        sub = call.probs(heads=[1, 3])
        assert (sub - p[:, [1, 3]]).abs().max() < 1e-6  # head-subset path == all-heads path
        st = S.head_statistics(call)
        st_sub = S.head_statistics(call, heads=[1, 3])
        for name in ("received_sum", "entropy", "distance", "top_prob"):
            assert torch.isfinite(st[name]).all(), name
            assert (st_sub[name] - st[name][:, [1, 3]]).abs().max() < 1e-5, name
        ref_recv = ref_p.sum(2)
        errs["received"] = max(errs.get("received", 0), float((st["received_sum"].double() - ref_recv).abs().max()))
        valid = pad.bool()[:, None, :].expand(-1, 4, -1)  # rows that see some key
        ref_ent = -(torch.where(ref_p > 0, ref_p * ref_p.log(), torch.zeros(()))).sum(-1)
        errs["entropy"] = max(errs.get("entropy", 0), float((st["entropy"].double() - ref_ent)[valid].abs().max()))
        ref_dist = (ref_p * (torch.arange(24)[:, None] - torch.arange(24)[None, :]).double()).sum(-1)
        errs["distance"] = max(errs.get("distance", 0), float((st["distance"].double() - ref_dist)[valid].abs().max()))
        ref_top = ref_p.argmax(-1)
        top_gap = ref_p.gather(-1, st["top_key"][..., None]).squeeze(-1) - ref_p.max(-1).values
        assert (top_gap[valid].abs() < 1e-6).all()  # the top key is eager's (up to exact ties)
        assert (st["top_key"][valid] == ref_top[valid]).float().mean() > 0.99
        out_err = (call.output.double() - ref_out)
        errs["z"] = max(errs.get("z", 0), float(out_err[:, :, :, :].abs().max()))
    tol = {torch.float32: dict(pattern=1e-5, lse=1e-5, received=1e-5, entropy=1e-4, distance=1e-4, z=1e-5),
           torch.bfloat16: dict(pattern=2e-4, lse=2e-4, received=2e-4, entropy=5e-4, distance=3e-3, z=1e-2)}[dtype]
    print(f"max error vs eager, {arch} {dtype}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    for name, e in errs.items():
        assert e < tol[name], (name, e)
    # logits against transformers' own eager attention on the same weights (float32: tight)
    if dtype == torch.float32:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            eager = model(ids, attention_mask=pad).logits
        model.set_attn_implementation("workbench")
        assert (logits[0] - eager[0]).abs().max() < 1e-4 and (logits[1, 5:] - eager[1, 5:]).abs().max() < 1e-4


# --- float32 statistics in a bfloat16 model -----------------------------------------------------------


def test_bf16_rows_sum_to_one_and_head_subset_equals_all_heads():
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16)
    lm.model.to(torch.bfloat16)
    with torch.no_grad():
        for layer in lm.model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    ids = torch.randint(3, 97, (2, 64))
    pad = torch.ones_like(ids)
    pad[1, :7] = 0
    calls = []

    class Grab:
        def on_attention(self, call):
            calls.append(call)

    with torch.no_grad(), attention_hooks(Grab()):
        lm.model(ids, attention_mask=pad)
    for call in calls:
        rows = call.probs().sum(-1)  # (B, H, Nq)
        seen = pad.bool()[:, None, :].expand_as(rows)
        assert (rows[seen] - 1).abs().max() < 1e-3
        assert torch.equal(rows[~seen], torch.zeros_like(rows[~seen]))
        full = S.head_statistics(call)
        sub = S.head_statistics(call, heads=[1, 2])
        assert (sub["received_sum"] - full["received_sum"][:, [1, 2]]).abs().max() < 1e-5
        assert torch.equal(sub["top_key"], full["top_key"][:, [1, 2]])


def test_logits_bit_identical_to_stock_sdpa_without_hooks(tiny_lm):
    ids = torch.randint(3, 97, (2, 40))
    pad = torch.ones_like(ids)
    pad[1, :6] = 0
    with torch.no_grad():
        ours = tiny_lm.model(ids).logits
        ours_pad = tiny_lm.model(ids, attention_mask=pad).logits
        tiny_lm.model.set_attn_implementation("sdpa")
        stock = tiny_lm.model(ids).logits
        stock_pad = tiny_lm.model(ids, attention_mask=pad).logits
        tiny_lm.model.set_attn_implementation("workbench")
    assert torch.equal(ours, stock)
    assert torch.equal(ours_pad[0], stock_pad[0]) and torch.equal(ours_pad[1, 6:], stock_pad[1, 6:])


# --- absolute positions on sliding-window caches -------------------------------------------------------


def test_key_positions_are_absolute_on_a_sliding_window_cache():
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM

    from workbench.core.attention import register_attention

    register_attention()
    torch.manual_seed(12)
    cfg = Gemma3TextConfig(vocab_size=50, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
    cfg._attn_implementation = "workbench"
    model = Gemma3ForCausalLM(cfg).eval()
    seen = []

    class Grab:
        def on_attention(self, call):
            seen.append((call.layer, call.query_positions.clone(), call.key_positions.clone(), call.key.shape[2]))

    ids = torch.randint(3, 50, (1, 7))
    with torch.no_grad(), attention_hooks(Grab()):
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    steps = [s for s in seen if s[0] == 0]  # the sliding layer
    assert torch.equal(steps[0][1], torch.arange(7)) and torch.equal(steps[0][2], torch.arange(7))
    for t, (_, qpos, kpos, nk) in enumerate(steps[1:], start=1):
        pos = 6 + t  # absolute position of the decoded token
        assert qpos.tolist() == [pos]
        assert kpos.tolist() == list(range(pos - nk + 1, pos + 1))  # the cache keeps only the last keys
        assert nk < pos + 1
    full = [s for s in seen if s[0] == 1]
    assert full[-1][2].tolist() == list(range(7 + 3))


# --- scoped hooks --------------------------------------------------------------------------------------


def test_two_threads_trace_and_ablate_at_once_without_seeing_each_other():
    from workbench.interventions.ablation import HeadAblation
    from workbench.core.tracer import Tracer

    lm = make_tiny_lm(n_layers=2)
    ids = torch.randint(3, 97, (1, 48))
    ablate = [(0, 1), (1, 0), (1, 3)]
    with torch.no_grad():
        ref_clean = lm.model(ids).logits
        with HeadAblation(ablate, "zero").applied():
            ref_ablated = lm.model(ids).logits
    ref_trace = Tracer(lm, stats=("received", "entropy")).run(ids)
    assert not torch.allclose(ref_clean, ref_ablated)

    barrier = threading.Barrier(2, timeout=60)

    class Gate:  # both threads stop inside layer 0's attention until the other is there too
        def on_attention(self, call):
            if call.layer == 1:
                barrier.wait()

    results, errors = {}, []

    def ablating():
        try:
            with torch.no_grad(), attention_hooks(Gate()), HeadAblation(ablate, "zero").applied():
                results["ablated"] = lm.model(ids).logits
                results["ablated_hooks"] = len(active_hooks())
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def tracing():
        try:
            tracer = Tracer(lm, stats=("received", "entropy"))
            with torch.no_grad(), attention_hooks(Gate()), tracer:
                results["logits"] = lm.model(ids).logits
            results["trace"] = tracer.trace(ids)
        except Exception as err:  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=ablating), threading.Thread(target=tracing)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results["ablated_hooks"] == 2  # its own gate and ablation, never the tracer
    assert torch.equal(results["ablated"], ref_ablated)
    assert torch.equal(results["logits"], ref_clean)  # the other thread's ablation was never seen
    for name in ("received", "entropy"):
        assert torch.equal(results["trace"][name], ref_trace[name])


# --- device and dtype ---------------------------------------------------------------------------------


def test_device_and_dtype_resolution():
    from workbench.core.devices import resolve_device, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, torch.bfloat16) == torch.float32  # float32 on the CPU
    assert resolve_dtype("auto", torch.device("cuda"), torch.bfloat16) == torch.bfloat16  # checkpoint's on a GPU
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("float16") == torch.float16
    with pytest.raises(WorkbenchError, match="unknown dtype"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(WorkbenchError, match="--device cpu"):
            resolve_device("cuda")


def test_cli_rejects_bad_dtype_in_one_line(capsys):
    from workbench.cli import main

    assert main(["trace", "--prompt", "hello", "--dtype", "float8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dtype") and "\n" not in err


@pytest.mark.slow
def test_real_model_in_bfloat16_rows_sum_to_one():
    from workbench import load_model
    from workbench.tasks.text import token_windows

    lm = load_model("smollm2-135m", device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.device.type == "cpu"
    ids = token_windows(lm.tokenizer, 256, 1)[:1]
    worst = 0.0

    class Rows:
        def on_attention(self, call):
            nonlocal worst
            if call.layer in (0, 5, 29):
                worst = max(worst, float((call.probs().sum(-1) - 1).abs().max()))

    with torch.no_grad(), attention_hooks(Rows()):
        lm.model(ids)
    assert worst < 1e-3


# --- benchmarks/gpu_check.py: its CPU-runnable parts ----------------------------------------------------


def test_gpu_check_runs_its_checks_on_the_cpu(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    cpu = torch.device("cpu")
    rows = gc.kernel_oracle(cpu, 32) + gc.model_oracle(cpu, 24)
    assert {r["backend"] for r in rows if r["check"] == "kernel"} == {"cpu-flash", "reference"}
    assert {r["arch"] for r in rows if r["check"] == "model"} == {"llama", "mistral", "gemma2", "gpt_oss"}
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    bench = gc.benchmark(cpu, tiny=True, lengths=[64], repeats=1)
    assert bench[0]["tracer_seconds"] > 0 and bench[-1]["check"] == "eager_oom"
    if not torch.cuda.is_available():  # without CUDA the default command says so and exits 0
        assert gc.main([]) == 0
        assert "no CUDA device" in capsys.readouterr().out
