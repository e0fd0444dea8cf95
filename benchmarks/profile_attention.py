"""Profile of one attention layer: where the tracer's time goes, and the floor of an unfused tracer.

    python benchmarks/profile_attention.py                    # 2048, 4096, 8192 tokens; writes reports/profile_attention.md

For SmolLM2-135M's attention shapes (9 query heads, 3 key/value heads, head dim 64, causal) on random
q, k, v it times, per layer and in the same run:

===================  =============================================================================
``flash``            ``_scaled_dot_product_flash_attention_for_cpu`` (output + log-sum-exp): the
                     attention cost of the plain forward
``received``         the exact received-attention statistic (:func:`workbench.core.stats.head_statistics`)
``score_gemm``       its QK^T product alone, in the same blocks (the part no unfused tracer can avoid)
``received_m1024``   the row-sampled estimate from 1024 query rows (:func:`workbench.core.stats.sampled_received`)
``elementwise``      ``received - score_gemm``: the exp, diagonal masking and column sums
===================  =============================================================================

Unless ``--no-model``, it also times the plain SDPA forward of the real model at each length and
prints the predicted exact-tracer ratio ``(plain + layers * received) / plain`` and the floor of any
tracer that recomputes QK^T outside the kernel, ``(plain + layers * score_gemm) / plain`` (free
elementwise work). Ratios are printed against ``flash`` from the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workbench.core import stats as S  # noqa: E402
from workbench.core.attention import AttentionCall, attention_with_lse  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def score_gemm_only(call: AttentionCall, chunk_elements: int) -> None:
    """The exact statistic's GEMMs (score - lse), block for block as in ``_causal_statistics``."""
    b, hq, nq, d = call.query.shape
    hkv, nk = call.key.shape[1], call.key.shape[2]
    rep = hq // hkv
    q = (call.query * call.scale).reshape(b * hkv, rep, nq, d)
    k = call.key.reshape(b * hkv, nk, d)
    lse = call.lse.reshape(b * hkv, rep, nq)
    step = S._chunk_rows(call, chunk_elements)
    for a in range(0, nq, step):
        z = min(nq, a + step)
        c = z - a
        qc = q[:, :, a:z].reshape(b * hkv, rep * c, d)
        torch.baddbmm((-lse[:, :, a:z]).reshape(b * hkv, rep * c, 1).expand(-1, -1, z), qc, k[:, :z].transpose(1, 2))


def profile(n: int, repeats: int, chunk_elements: int, sample_rows: int) -> dict[str, float]:
    """Per-layer milliseconds of each part at ``n`` tokens."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 9, n, 64), torch.randn(1, 3, n, 64), torch.randn(1, 3, n, 64)
    scale = 0.125
    out, lse = attention_with_lse(q, k, v, None, scale)
    call = AttentionCall(0, q, k, v, None, out, lse, scale)
    rows = S.sample_query_rows(n, sample_rows)
    r = {
        "flash": timed(lambda: attention_with_lse(q, k, v, None, scale), repeats),
        "received": timed(lambda: S.head_statistics(call, None, received=True, rows=False,
                                                    chunk_elements=chunk_elements), repeats),
        "score_gemm": timed(lambda: score_gemm_only(call, chunk_elements), repeats),
        f"received_m{sample_rows}": timed(lambda: S.sampled_received(call, rows, None, chunk_elements), repeats),
    }
    r["elementwise"] = r["received"] - r["score_gemm"]  # exp, diagonal mask, column sums
    return r


def plain_forward_seconds(lengths: list[int]) -> dict[int, float]:
    """Median seconds of SmolLM2's stock SDPA forward at each length (real prose)."""
    from workbench import load_model
    from workbench.tasks.text import token_windows

    lm = load_model("smollm2-135m")
    lm.model.set_attn_implementation("sdpa")
    out = {}
    for n in lengths:
        ids = token_windows(lm.tokenizer, n, 1)
        with torch.no_grad():
            out[n] = timed(lambda ids=ids: lm.model(ids, use_cache=False), 1 if n > 4096 else 2) / 1000
    lm.model.set_attn_implementation("workbench")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk-elements", type=int, default=S.DEFAULT_CHUNK_ELEMENTS)
    ap.add_argument("--sample-rows", type=int, default=1024)
    ap.add_argument("--no-model", action="store_true", help="skip the real-model plain forward")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "profile_attention.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",") if x]
    rows = {n: profile(n, a.repeats, a.chunk_elements, a.sample_rows) for n in lengths}
    plain = {} if a.no_model else plain_forward_seconds(lengths)
    names = list(next(iter(rows.values())))
    lines = ["# Attention profile: one SmolLM2-135M layer (9 query heads, 3 KV heads, d=64, causal)", "",
             f"torch {torch.__version__}, {a.threads} threads, score blocks of {a.chunk_elements} floats, "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Milliseconds per layer (ratio to `flash` in the same run).", "",
             "| tokens | " + " | ".join(names) + (" | plain forward (s) | attention share | predicted exact tracer"
                                                    " | floor: QK^T alone |" if plain else " |"),
             "|---" * (len(names) + 1 + (4 if plain else 0)) + "|"]
    for n, r in rows.items():
        cells = [f"{r[k]:.1f} ({r[k] / r['flash']:.2f}x)" for k in names]
        if plain:
            share = 30 * r["flash"] / 1000 / plain[n]
            predicted = (plain[n] + 30 * r["received"] / 1000) / plain[n]
            floor = (plain[n] + 30 * r["score_gemm"] / 1000) / plain[n]
            cells += [f"{plain[n]:.2f}", f"{share:.0%}", f"{predicted:.2f}x", f"{floor:.2f}x"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    from workbench.io.provenance import collect, markdown_footer

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text + markdown_footer(collect(None, {"command": "benchmarks/profile_attention.py",
                                                            **{k: v for k, v in vars(a).items() if k != "out"}})))
    print(text)


if __name__ == "__main__":
    main()
