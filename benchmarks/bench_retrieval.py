"""Benchmark: one retrieval-score test (prefill + greedy decoding with per-step top keys) with the
workbench's lean top-key recorder vs the published method (SDPA prefill, then eager attention with
``output_attentions=True`` at every decoding step, argmax of the returned rows).

Each method runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own; the
script prints seconds per test, peak memory above the loaded model, the ratios, and whether both
methods gave the same top keys and tokens.

    PYTHONPATH=. python benchmarks/bench_retrieval.py --lengths 1024,2048 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def worker(method: str, length: int, repeats: int) -> dict:
    import torch

    from workbench import load_model
    from workbench.tasks.needle import NEEDLES, build_prompt
    from workbench.analyzers.retrieval import greedy_decode

    lm = load_model("smollm2-135m")
    p = build_prompt(lm.tokenizer, NEEDLES[0], length, 50)
    ids = p.ids
    n = ids.shape[1]
    # warm-up on a short prompt (allocator, kernels), then measure the memory baseline
    greedy_decode(lm, build_prompt(lm.tokenizer, NEEDLES[0], 128, 50).ids, 2)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if method == "workbench":
            dec = greedy_decode(lm, ids)
            tokens, top = dec.tokens, dec.top_keys
        else:
            from transformers import DynamicCache

            model = lm.model
            with torch.no_grad():
                model.set_attn_implementation("sdpa")
                cache = DynamicCache(config=model.config)
                model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
                model.set_attn_implementation("eager")
                tokens, rows = [], []
                inp = ids[:, -1:]
                from workbench.analyzers.retrieval import _stop_ids

                eos, nl = _stop_ids(lm.tokenizer)
                for _ in range(50):
                    out = model(input_ids=inp, past_key_values=cache, use_cache=True, output_attentions=True)
                    w = int(out.logits[0, -1].argmax())
                    tokens.append(w)
                    rows.append(torch.stack([a[0, :, -1].argmax(-1) for a in out.attentions]))
                    if w in eos or w in nl:
                        break
                    inp = torch.tensor([[w]])
                top = torch.stack(rows)
                model.set_attn_implementation("workbench")
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "length": n, "seconds_per_test": min(times), "new_tokens": len(tokens),
            "peak_rss_above_model_mib": (peak - base_rss) / 1024, "peak_rss_mib": peak / 1024,
            "tokens": tokens, "top_keys": top.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--worker", default=None)
    ap.add_argument("--length", type=int, default=0)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.length, a.repeats)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(f"torch threads per worker: {env['OMP_NUM_THREADS']} (2 shared CPU cores)")
    for length in [int(x) for x in a.lengths.split(",")]:
        res = {}
        for method in ("workbench", "eager"):
            r = subprocess.run([sys.executable, __file__, "--worker", method, "--length", str(length),
                                "--repeats", str(a.repeats)], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"{method} at {length} failed: {r.stderr[-500:]}")
                continue
            res[method] = json.loads(r.stdout.strip().splitlines()[-1])
        if len(res) < 2:
            continue
        w, e = res["workbench"], res["eager"]
        same = w["tokens"] == e["tokens"] and w["top_keys"] == e["top_keys"]
        print(f"length {w['length']}: {w['new_tokens']} new tokens; identical tokens and top keys: {same}")
        for m in (w, e):
            print(f"  {m['method']:<9} {m['seconds_per_test']:7.2f} s/test   peak RSS above model "
                  f"{m['peak_rss_above_model_mib']:8.1f} MiB (process peak {m['peak_rss_mib']:.0f} MiB)")
        print(f"  ratio eager/workbench: time {e['seconds_per_test'] / w['seconds_per_test']:.2f}x, peak memory above "
              f"model {e['peak_rss_above_model_mib'] / max(w['peak_rss_above_model_mib'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
