#!/usr/bin/env python
"""Train the digits-vlm vision tower and projector (deterministic; see workbench/demo/digits_vlm.py).

    PYTHONPATH=. .venv/bin/python scripts/train_digits_vlm.py            # writes workbench/data/digits_vlm.safetensors
    PYTHONPATH=. .venv/bin/python scripts/train_digits_vlm.py --steps-lm 0 --out /tmp/w.safetensors
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    from workbench.demo import digits_vlm as V

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-tower", type=int, default=V.TRAIN_DEFAULTS["steps_tower"])
    ap.add_argument("--steps-align", type=int, default=V.TRAIN_DEFAULTS["steps_align"])
    ap.add_argument("--steps-lm", type=int, default=V.TRAIN_DEFAULTS["steps_lm"])
    ap.add_argument("--batch", type=int, default=V.TRAIN_DEFAULTS["batch"])
    ap.add_argument("--lr", type=float, default=V.TRAIN_DEFAULTS["lr"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=V.WEIGHTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    info = V.train(steps_tower=a.steps_tower, steps_align=a.steps_align, steps_lm=a.steps_lm, batch=a.batch,
                   lr=a.lr, seed=a.seed, out=a.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
