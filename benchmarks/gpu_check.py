"""CUDA check of the kernel-backed path: oracle matrix and GPU benchmark in one command, no downloads.

    python benchmarks/gpu_check.py                      # on a CUDA machine: oracle checks, then the benchmark
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code paths on the CPU, tiny sizes (a smoke test)
    python benchmarks/gpu_check.py --skip-bench         # oracle checks only

Everything is built from configs with random weights (nothing is downloaded).

1. **Kernel oracle** (every backend that can run on the device x float32/bfloat16 x causal / left padding /
   sliding window / finite bias / soft-cap): output and log-sum-exp of
   :func:`workbench.core.kernels.attention_with_lse` under :func:`~workbench.core.kernels.force_backend` against the
   float64 eager softmax :func:`workbench.core.oracle.eager_attention`.
2. **Model oracle** (tiny Llama, Mistral with a window shorter than the input, Gemma-2 with soft-capping and
   windows, gpt-oss with learned sinks; float32 and bfloat16; a left-padded batch of 2): attention patterns
   (``AttentionCall.probs``) and received attention against transformers' eager ``output_attentions`` on the
   same weights, and bfloat16 row sums.
3. **Benchmark** (CUDA): a random-weight Llama-3-8B-shaped model in bfloat16 at 4k, 16k and 32k tokens: plain
   SDPA forward vs the workbench tracer with sink statistics (mean received attention), median time and peak
   CUDA memory (``torch.cuda.max_memory_allocated``), and the first length at which eager
   ``output_attentions`` runs out of memory. ``--tiny`` uses a 2-layer model at 128/256/512 tokens.

Exit status: 0 when every check passes (or when there is no CUDA device and ``--device cuda`` was asked: a
message says so), 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import plain_forward  # noqa: E402
from workbench.core.attention import AttentionCall, attention_hooks, register_attention  # noqa: E402
from workbench.core.kernels import BACKENDS, Features, attention_with_lse, force_backend  # noqa: E402
from workbench.core.models import LoadedModel, ModelSpec  # noqa: E402
from workbench.core.oracle import eager_attention  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# tolerances against float64 eager, per model dtype (bf16: the kernels round P to bf16 before P @ V)
TOL = {torch.float32: {"out": 2e-5, "lse": 2e-5, "pattern": 2e-5, "received": 2e-5},
       torch.bfloat16: {"out": 3e-2, "lse": 5e-3, "pattern": 2e-2, "received": 2e-2}}


class _Tok:
    pad_token_id = 0
    chat_template = None

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]


def kernel_oracle(device: torch.device, n: int) -> list[dict]:
    """Every backend that supports the device, on random inputs, against float64 eager."""
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    b, hq, hkv, d = 2, 8, 2, 64
    qpos = torch.arange(n)[:, None]
    kpos = torch.arange(n)[None, :]
    for dtype in DTYPES.values():
        q = torch.randn(b, hq, n, d, generator=g).to(device, dtype)
        k = torch.randn(b, hkv, n, d, generator=g).to(device, dtype)
        v = torch.randn(b, hkv, n, d, generator=g).to(device, dtype)
        for case in ("causal", "padding", "window", "bias", "softcap", "softcap+padding"):
            vis = (kpos <= qpos).expand(b, n, n).clone()
            if "padding" in case:
                vis[1, :, : n // 8] = False
            if case == "window":
                vis &= kpos > qpos - n // 4
            add = torch.zeros(b, 1, n, n, dtype=torch.float64).masked_fill(~vis[:, None], float("-inf"))
            if case == "bias":
                add = add + 0.5 * torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
            add = add.to(device)
            mask = None if case in ("causal", "softcap") else add.to(dtype)
            cap = 5.0 if "softcap" in case else None
            # the kernel adds the mask in the model dtype: the reference adds the same rounded values
            ref_out, ref_lse, _ = eager_attention(q, k, v, add if mask is None else mask.double(), 0.125, cap)
            feats = Features(mask=mask is not None, softcap=cap is not None, causal=mask is None)
            for name, be in BACKENDS.items():
                if not be.supports(q, k, feats):
                    continue
                with force_backend(name):
                    t = time.perf_counter()
                    out, lse = attention_with_lse(q, k, v, mask, 0.125, softcap=cap)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    sec = time.perf_counter() - t
                e_out = float((out.double() - ref_out).abs().max())
                e_lse = float((lse.double() - ref_lse).abs().max())
                ok = (e_out < TOL[dtype]["out"] and e_lse < TOL[dtype]["lse"] and bool(torch.isfinite(out).all())
                      and bool(torch.isfinite(lse).all()))
                rows.append({"check": "kernel", "backend": name, "dtype": str(dtype).replace("torch.", ""),
                             "case": case, "max_err_out": e_out, "max_err_lse": e_lse, "seconds": sec, "ok": ok})
    return rows


def _tiny_models(dtype: torch.dtype):
    from transformers import (Gemma2Config, Gemma2ForCausalLM, GptOssConfig, GptOssForCausalLM, LlamaConfig,
                              LlamaForCausalLM, MistralConfig, MistralForCausalLM)

    common = dict(vocab_size=128, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                  pad_token_id=0)
    yield "llama", LlamaForCausalLM, LlamaConfig(**common)
    yield "mistral", MistralForCausalLM, MistralConfig(**common, sliding_window=16)
    yield "gemma2", Gemma2ForCausalLM, Gemma2Config(**common, sliding_window=16, attn_logit_softcapping=5.0,
                                                   final_logit_softcapping=None, query_pre_attn_scalar=32)
    yield "gpt_oss", GptOssForCausalLM, GptOssConfig(**common, sliding_window=16, num_local_experts=4,
                                                     num_experts_per_tok=2,
                                                     layer_types=["sliding_attention", "full_attention"],
                                                     rope_parameters={"rope_type": "default", "rope_theta": 1e4})


def model_oracle(device: torch.device, n: int) -> list[dict]:
    """Patterns and received attention of tiny random models against transformers' eager attention."""
    register_attention()
    rows = []
    for dtype in DTYPES.values():
        for arch, cls, cfg in _tiny_models(dtype):
            torch.manual_seed(1)
            cfg._attn_implementation = "workbench"
            model = cls(cfg).eval()
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.q_proj.weight.mul_(4.0)
                    if hasattr(layer.self_attn, "sinks"):
                        layer.self_attn.sinks.copy_(torch.linspace(-1, 2, cfg.num_attention_heads))
            model = model.to(device=device, dtype=dtype)
            ids = torch.randint(3, 128, (2, n), device=device)
            pad = torch.ones_like(ids)
            pad[1, : n // 8] = 0
            calls: list[AttentionCall] = []

            class Grab:
                def on_attention(self, call):
                    calls.append(call)

            with torch.no_grad(), attention_hooks(Grab()):
                model(ids, attention_mask=pad)
            model.set_attn_implementation("eager")
            with torch.no_grad():
                eager = model(ids, attention_mask=pad, output_attentions=True).attentions
            model.set_attn_implementation("workbench")
            e_pat = e_recv = e_rows = 0.0
            valid = pad.bool()  # query rows that see some key
            for call in calls:
                p = call.probs()
                ref = eager[call.layer].float()
                m = valid[:, None, :, None]
                e_pat = max(e_pat, float(((p - ref) * m).abs().max()))
                e_recv = max(e_recv, float(((p - ref) * m).sum(2).abs().max()))
                if call.sinks is None:
                    rs = p.sum(-1)[valid[:, None, :].expand(-1, p.shape[1], -1)]
                    e_rows = max(e_rows, float((rs - 1).abs().max()))
            ok = e_pat < TOL[dtype]["pattern"] and e_recv < TOL[dtype]["received"] * n and e_rows < 1e-3
            rows.append({"check": "model", "arch": arch, "dtype": str(dtype).replace("torch.", ""), "tokens": n,
                         "max_err_pattern": e_pat, "max_err_received_sum": e_recv, "max_row_sum_dev": e_rows,
                         "ok": ok})
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _peak(device, base):
    return (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")


def benchmark(device: torch.device, tiny: bool, lengths: list[int], repeats: int) -> list[dict]:
    """Plain SDPA forward vs the tracer with sink statistics; the eager output_attentions OOM length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.tracer import Tracer

    register_attention()
    if tiny:
        cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1 << 16)
    else:  # Llama-3-8B's shape
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                          max_position_embeddings=1 << 17)
    cfg._attn_implementation = "workbench"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    lm = LoadedModel(model=model, tokenizer=_Tok(), spec=ModelSpec.from_config("llama3-8b-shape", cfg))
    tracer = Tracer(lm, stats=("received",))
    rows = []
    for n in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device=device)

        def plain():
            plain_forward(model, ids, logits_to_keep=1)

        def traced():
            tracer.run(ids, allow_longer=True, logits_to_keep=1)

        res = {"plain": ([], []), "tracer": ([], [])}
        for fn in (plain, traced):  # warm-up (kernels, allocator)
            fn()
        for _ in range(repeats):  # interleaved
            for name, fn in (("plain", plain), ("tracer", traced)):
                base = _peak_reset(device)
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                res[name][0].append(time.perf_counter() - t)
                res[name][1].append(_peak(device, base))
        row = {"check": "bench", "tokens": n, "dtype": "bfloat16", "device": str(device)}
        for name, (ts, ms) in res.items():
            row[f"{name}_seconds"] = statistics.median(ts)
            row[f"{name}_peak_mib"] = max(ms)
        row["time_ratio"] = row["tracer_seconds"] / row["plain_seconds"]
        row["memory_ratio"] = row["tracer_peak_mib"] / row["plain_peak_mib"] if device.type == "cuda" else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    # eager output_attentions: the first length that does not fit
    oom_at = None
    for n in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device=device)
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                model(ids, use_cache=False, output_attentions=True, logits_to_keep=1)
        except torch.cuda.OutOfMemoryError if device.type == "cuda" else MemoryError:
            oom_at = n
            break
        finally:
            model.set_attn_implementation("workbench")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows.append({"check": "eager_oom", "first_length_out_of_memory": oom_at, "lengths_tried": lengths})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test of the same code)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (for CPU smoke tests)")
    ap.add_argument("--skip-bench", action="store_true", help="oracle checks only")
    ap.add_argument("--lengths", default=None, help="benchmark lengths, comma-separated (default 4096,16384,32768)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch %s): nothing to check. Run it on a GPU, or "
              "`--device cpu --tiny` for a CPU smoke test of the same code." % torch.__version__)
        return 0
    device = torch.device(args.device)
    n_oracle = 64 if args.tiny else 512
    rows = kernel_oracle(device, n_oracle) + model_oracle(device, 48 if args.tiny else 256)
    for r in rows:
        print(json.dumps(r), flush=True)
    if not args.skip_bench:
        lengths = ([int(x) for x in args.lengths.split(",")] if args.lengths
                   else [128, 256, 512] if args.tiny else [4096, 16384, 32768])
        rows += benchmark(device, args.tiny, lengths, args.repeats)
    bad = [r for r in rows if r.get("ok") is False]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"gpu_check: {len(rows)} rows, {len(bad)} failed checks on {device}")
    for r in bad:
        print("FAILED", json.dumps(r))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
