"""Benchmark: the retrieval sweep with ``--executor local`` (one process, T threads) versus
``--executor ray --workers W`` (W actors, 1 thread each), wall time of both in one run.

Each variant runs the same grid into its own fresh folder; the Ray variant's time includes starting
the local cluster and loading the model in every worker (what a user waits for). Prints one JSON
object per variant (wall seconds, tests, the summary's top heads) and the ratio local / ray, and
checks that both found the same per-head scores. On a shared machine wall time depends on the load:
run both back to back and read the ratio with that in mind.

    PYTHONPATH=. python benchmarks/bench_executor.py --lengths 256 512 1024 2048 --depths 0 20 40 60 80 100
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench import load_model
from workbench.core.executor import LocalExecutor, ModelLoader
from workbench.core.ray_executor import RayExecutor
from workbench.tasks.needle import load_needles
from workbench.studies.retrieval_sweep import DEFAULT_DEPTHS, DEFAULT_LENGTHS, run_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    ap.add_argument("--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS))
    ap.add_argument("--needles", type=int, default=None, help="first N needles (default all)")
    ap.add_argument("--local-threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--order", default="local,ray", help="which variant runs first")
    args = ap.parse_args()
    lm = load_model(args.model)
    needles = load_needles()[: args.needles] if args.needles else load_needles()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.order.split(","):
            if name == "local":
                ex = LocalExecutor(threads=args.local_threads)
            else:
                ex = RayExecutor(ModelLoader.of(args.model), workers=args.workers, threads=1)
            t0 = time.perf_counter()
            with ex:
                res = run_sweep(lm, args.lengths, args.depths, needles, Path(tmp) / name, executor=ex, progress=False)
            wall = time.perf_counter() - t0
            runs[name] = (wall, res)
            print(json.dumps({"variant": name, **ex.describe(), "wall_s": round(wall, 1), "tests": res.summary["n_tests"],
                              "correct": res.summary["n_correct"], "top_heads": res.summary["top_heads"][:5]}), flush=True)
    if {"local", "ray"} <= set(runs):
        a, b = runs["local"][1].heads.score.to_numpy(), runs["ray"][1].heads.score.to_numpy()
        print(json.dumps({"local_over_ray_wall": round(runs["local"][0] / runs["ray"][0], 3),
                          "max_abs_score_difference": float(np.max(np.abs(a - b))),
                          "torch_threads_driver": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
