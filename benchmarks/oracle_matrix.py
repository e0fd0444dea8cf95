"""Print the oracle matrix: max errors of the workbench against float32 eager, per architecture and dtype.

    OMP_NUM_THREADS=1 python benchmarks/oracle_matrix.py [--device cuda] [--json out.json] [ARCH ...]

For bfloat16 each cell is ``ours / eager-bf16``: the workbench in bfloat16 and transformers' own bfloat16
eager attention, both against the float32 eager reference; ``layer 0`` is the first decoder layer, where
both bfloat16 paths see the same inputs. ``same q,k,v`` is the issue's criterion isolated from drift
(:func:`workbench.core.oracle.same_input_errors`): the worst layer's max pattern error, ours / bf16 eager, each
layer on the q, k, v it received. Tiny random-weight models (workbench/core/oracle.py), no downloads.
``--real`` adds the same-input row for the embedded real models (SmolLM2 at 256 tokens, Gemma-3 at 700).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from workbench.core.oracle import compare, compare_same_inputs, same_input_errors  # noqa: E402
from workbench.core.tiny_models import ARCHITECTURES  # noqa: E402

COLUMNS = ("pattern", "row_sum", "received", "entropy", "top_key", "z", "resid_pre", "logits", "pattern_rms", "z_rms",
           "logits_rms")


def _same(layers: list[dict]) -> str:
    """The worst layer of a same-input comparison: max and rms pattern error, ours / bf16 eager, and row sums."""
    m = max(layers, key=lambda d: d["ours"])
    e = max(d["eager"] for d in layers)
    lo = min(d["eager"] - d["ours"] for d in layers)
    return (f"max {m['ours']:.1e}/{e:.1e} rms {max(d['ours_rms'] for d in layers):.1e}/"
            f"{max(d['eager_rms'] for d in layers):.1e} row_sum {max(d['row_sum'] for d in layers):.1e} "
            f"(smallest per-layer margin {lo:.1e}, {len(layers)} layers)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archs", nargs="*", default=list(ARCHITECTURES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--real", action="store_true", help="also the same-input bf16 rows of the real models")
    args = ap.parse_args(argv)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            for dtype in (torch.float32, torch.bfloat16):
                r = compare(arch, dtype, tmp, args.device)
                rows.append(r)
                fmt = (lambda k, d=r: f"{d['ours'][k]:.1e}") if dtype == torch.float32 else \
                    (lambda k, d=r: f"{d['ours'][k]:.1e}/{d['eager'][k]:.1e}")
                cells = " ".join(f"{k}={fmt(k)}" for k in COLUMNS)
                l0 = " ".join(f"{k}={r['ours_layers'][0][k]:.1e}/{r['eager_layers'][0][k]:.1e}"
                              for k in ("pattern", "entropy", "z")) if dtype != torch.float32 else ""
                same = ""
                if dtype != torch.float32:
                    layers = compare_same_inputs(arch, dtype, tmp, args.device)
                    r["same_inputs"] = layers
                    same = " | same q,k,v: " + _same(layers)
                print(f"{arch:<9} {r['dtype']:<8} closure={r['closure']:.1e} {cells}"
                      + (f" | layer 0: {l0}" if l0 else "") + same, flush=True)
    if args.real:
        from workbench.core.models import cache_dir, load_model
        from workbench.tasks.text import token_windows

        for preset, n in (("smollm2-135m", 256), ("gemma3-270m", 700)):
            ids = token_windows(load_model(preset).tokenizer, n, 1)
            layers = same_input_errors(cache_dir() / preset, torch.bfloat16,
                                       {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, args.device)
            rows.append({"arch": preset, "dtype": "bfloat16", "tokens": n, "same_inputs": layers})
            print(f"{preset:<13} bfloat16 {n} tokens | same q,k,v: {_same(layers)}", flush=True)
    print(f"# {len(rows)} rows on {args.device} in {time.perf_counter() - t0:.0f} s "
          f"(torch {torch.__version__}, threads {torch.get_num_threads()})")
    if args.json:
        out = [{k: v for k, v in r.items() if k != "spec"} for r in rows]
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
