"""Benchmark: the tracer's cost against a plain SDPA forward, and eager output_attentions.

For each context length (default 512, 2048, 4096 tokens of real text) on SmolLM2-135M, in one run:

* ``plain``: stock transformers SDPA forward (the floor);
* ``tracer_sinks``: the workbench tracer recording the mean received attention (sink statistic)
  of every key for all layers and heads;
* ``tracer_census``: the tracer recording received attention, entropy and distance (the census);
* ``eager``: transformers eager attention with ``output_attentions=True`` (skipped, with the
  memory it would need, when L*H*N^2 floats would not fit in 60% of available memory).

Prints a table with median seconds, peak extra resident memory (MiB) and both as ratios to
``plain``; ``--json`` writes the rows as JSON too. Run: ``python benchmarks/bench_tracer.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure  # noqa: E402

from workbench import Tracer, load_model  # noqa: E402
from workbench.text import token_windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="512,2048,4096")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    spec = lm.spec
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        ids = token_windows(lm.tokenizer, n, 1)

        def plain():
            lm.model.set_attn_implementation("sdpa")
            with torch.no_grad():
                lm.model(ids, use_cache=False)
            lm.model.set_attn_implementation("workbench")

        sinks = Tracer(lm, stats=("received",))
        census = Tracer(lm, stats=("received", "entropy", "distance"))

        def eager():
            lm.model.set_attn_implementation("eager")
            try:
                with torch.no_grad():
                    lm.model(ids, use_cache=False, output_attentions=True)
            finally:
                lm.model.set_attn_implementation("workbench")

        base = measure(plain, args.repeats)
        results = {"plain": base, "tracer_sinks": measure(lambda: sinks.run(ids, allow_longer=True), args.repeats),
                   "tracer_census": measure(lambda: census.run(ids, allow_longer=True), args.repeats)}
        need = spec.n_layers * spec.n_heads * n * n * 4 * 2  # maps kept + one layer's softmax temporaries
        if need < 0.6 * psutil.virtual_memory().available:
            results["eager"] = measure(eager, max(1, args.repeats - 1))
        else:
            results["eager"] = {"skipped": f"needs about {need / 2**30:.1f} GiB"}
        for name, r in results.items():
            row = {"tokens": n, "method": name, **r}
            if "seconds" in r:
                row["time_ratio"] = r["seconds"] / base["seconds"]
                row["memory_ratio"] = r["peak_mib"] / max(base["peak_mib"], 1e-9)
            rows.append(row)
            print(_fmt(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": spec.name, "threads": args.threads, "rows": rows}, indent=1))


def _fmt(r: dict) -> str:
    if "skipped" in r:
        return f"{r['tokens']:>6} {r['method']:<14} skipped: {r['skipped']}"
    return (f"{r['tokens']:>6} {r['method']:<14} {r['seconds']:8.3f} s  {r['peak_mib']:9.1f} MiB   "
            f"time x{r['time_ratio']:.2f}  memory x{r['memory_ratio']:.2f}")


if __name__ == "__main__":
    main()
