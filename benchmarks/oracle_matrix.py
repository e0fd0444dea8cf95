"""Print the oracle matrix: max errors of the workbench against float32 eager, per architecture and dtype.

    OMP_NUM_THREADS=1 python benchmarks/oracle_matrix.py [--device cuda] [--json out.json] [ARCH ...]

For bfloat16 each cell is ``ours / eager-bf16``: the workbench in bfloat16 and transformers' own bfloat16
eager attention, both against the float32 eager reference; ``layer 0`` is the first decoder layer, where
both bfloat16 paths see the same inputs. Tiny random-weight models (workbench/core/oracle.py), no downloads.
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

from workbench.core.oracle import ARCHITECTURES, compare  # noqa: E402

COLUMNS = ("pattern", "row_sum", "received", "entropy", "top_key", "z", "resid_pre", "logits", "pattern_rms", "z_rms",
           "logits_rms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archs", nargs="*", default=list(ARCHITECTURES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
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
                print(f"{arch:<9} {r['dtype']:<8} closure={r['closure']:.1e} {cells}"
                      + (f" | layer 0: {l0}" if l0 else ""), flush=True)
    print(f"# {len(rows)} rows on {args.device} in {time.perf_counter() - t0:.0f} s "
          f"(torch {torch.__version__}, threads {torch.get_num_threads()})")
    if args.json:
        out = [{k: v for k, v in r.items() if k != "spec"} for r in rows]
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
