"""Benchmark: overhead of ACT calibration (closed form on the kernel output) versus the plain forward.

Runs, in the same process and interleaved (so machine load hits every variant alike), a plain forward
pass of SmolLM2-135M over real text and the same pass with ACT on
  * ``fixed``: 9 heads with fixed sink sets (no detection; the cost of the closed form alone),
  * ``auto-9``: 9 heads with ACT's sink sets detected from the input (one extra O(N^2 D) pass per head),
  * ``auto-all``: all 270 heads, detected sinks (the worst case).
Prints one JSON object per (length, variant) with the median wall time, the median CPU time of this
process and both ratios to the plain forward. On a shared machine the CPU-time ratio is the one to read
(other processes inflate wall time at random); run with ``--threads 1`` so that CPU time is the work done.

    PYTHONPATH=. python benchmarks/bench_act.py --lengths 512 2048 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from workbench import load_model
from workbench.interventions.act import ACTCalibration
from workbench.tasks.text import token_windows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    L, H = lm.spec.n_layers, lm.spec.n_heads
    nine = [(layer, h) for layer, h in zip(range(3, 30, 3), range(9))]
    variants = {
        "plain": None,
        "fixed": lambda: ACTCalibration(nine, sinks={hh: [1, 2, 3] for hh in nine}),
        "auto-9": lambda: ACTCalibration(nine),
        "auto-all": lambda: ACTCalibration([(a, b) for a in range(L) for b in range(H)]),
    }
    for n in args.lengths:
        ids = token_windows(lm.tokenizer, n, 1, split="all")
        times = {k: [] for k in variants}
        cpu = {k: [] for k in variants}
        with torch.no_grad():
            lm.model(ids[:, :64], use_cache=False)  # warm-up
            for _ in range(args.repeats):
                for name, make in variants.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    if make is None:
                        lm.model(ids, use_cache=False, logits_to_keep=1)
                    else:
                        with make().applied():
                            lm.model(ids, use_cache=False, logits_to_keep=1)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        base, cbase = statistics.median(times["plain"]), statistics.median(cpu["plain"])
        for name, ts in times.items():
            c = statistics.median(cpu[name])
            print(json.dumps({"tokens": n, "variant": name, "median_wall_s": round(statistics.median(ts), 3),
                              "wall_ratio_to_plain": round(statistics.median(ts) / base, 3),
                              "median_cpu_s": round(c, 3), "cpu_ratio_to_plain": round(c / cbase, 3),
                              "threads": args.threads, "repeats": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
