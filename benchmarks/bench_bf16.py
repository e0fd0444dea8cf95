"""SmolLM2-135M in bfloat16 on the CPU: plain SDPA forward vs the tracer with sink statistics, interleaved.

    python benchmarks/bench_bf16.py                          # 2048 and 8192 tokens, 3 interleaved pairs each
    python benchmarks/bench_bf16.py --lengths 2048 --repeats 3 --out reports/benchmarks_bf16.json

For each length, one warm-up of each method, then ``--repeats`` rounds of (plain, tracer) in turn, so both
see the same machine state. ``plain`` is transformers' stock SDPA forward of the same bfloat16 model;
``tracer`` is ``Tracer(lm, stats=("received",))``: mean received attention of every head of every layer,
exact, computed in float32 from the kernel's log-sum-exp. Reported: median seconds, peak extra resident
memory (MiB, ``benchmarks/common.PeakRSS``) and the ratios tracer / plain (the targets are <= 1.3x time and
<= 1.2x memory). Input: real text (Python's docs, ``workbench.tasks.text.token_windows``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import PeakRSS, plain_forward  # noqa: E402

from workbench import Tracer, load_model  # noqa: E402
from workbench.tasks.text import token_windows  # noqa: E402


def run(lengths: list[int], repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    lm = load_model("smollm2-135m", device="cpu", dtype="bfloat16")
    model = lm.model
    tracer = Tracer(lm, stats=("received",))
    rows = []
    for n in lengths:
        ids = token_windows(lm.tokenizer, n, 1)

        def plain():
            plain_forward(model, ids)

        def traced():
            tracer.run(ids, allow_longer=True)

        for fn in (plain, traced):
            fn()
        res = {"plain": ([], []), "tracer": ([], [])}
        for _ in range(repeats):
            for name, fn in (("plain", plain), ("tracer", traced)):
                with PeakRSS() as m:
                    t = time.perf_counter()
                    fn()
                    res[name][0].append(time.perf_counter() - t)
                res[name][1].append(m.peak / 2**20)
        row = {"tokens": n, "dtype": "bfloat16", "device": "cpu", "threads": threads, "repeats": repeats}
        for name, (ts, ms) in res.items():
            row[f"{name}_seconds"] = statistics.median(ts)
            row[f"{name}_seconds_all"] = ts
            row[f"{name}_peak_mib"] = max(ms)
        row["time_ratio"] = row["tracer_seconds"] / row["plain_seconds"]
        row["pair_time_ratios"] = [t / p for p, t in zip(res["plain"][0], res["tracer"][0])]
        row["memory_ratio"] = row["tracer_peak_mib"] / max(row["plain_peak_mib"], 1e-9)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=max(1, min(2, torch.get_num_threads())))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = run([int(x) for x in args.lengths.split(",")], args.repeats, args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                        "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
