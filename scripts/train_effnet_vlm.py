#!/usr/bin/env python
"""Train the effnet-smollm2-vqa projector and LoRA adapter (seeded; see workbench/demo/effnet_vlm.py).

    PYTHONPATH=. .venv/bin/python scripts/train_effnet_vlm.py        # writes workbench/data/effnet_smollm2_vqa_projector.safetensors
    PYTHONPATH=. .venv/bin/python scripts/train_effnet_vlm.py --steps 5 --out /tmp/p.safetensors

The frozen tower's features are computed once and cached under ~/.cache/workbench/effnet-lite0-features/.
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    from workbench.demo import effnet_vlm as V

    d = V.TRAIN_DEFAULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=d["n_images"], help="train images (first ids) used")
    ap.add_argument("--n-scenes", type=int, default=d["n_scenes"], help="train scenes used")
    ap.add_argument("--steps-align", type=int, default=d["steps_align"], help="alignment steps (no LM)")
    ap.add_argument("--steps", type=int, default=d["steps"], help="end-to-end steps through the frozen LM")
    ap.add_argument("--batch", type=int, default=d["batch"])
    ap.add_argument("--turns", type=int, default=d["turns"], help="questions per single-image sequence")
    ap.add_argument("--lr", type=float, default=d["lr"])
    ap.add_argument("--seed", type=int, default=d["seed"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=V.WEIGHTS)
    ap.add_argument("--lora-from", type=int, default=d["lora_from"], help="first language-model layer with a LoRA adapter")
    ap.add_argument("--lora-rank", type=int, default=d["lora_rank"])
    ap.add_argument("--init", type=Path, default=None, help="continue from a weights file this script wrote (skips alignment)")
    ap.add_argument("--balanced", type=int, default=d["balanced"],
                    help="synthetic yes/no questions per image whose answer the question does not predict")
    ap.add_argument("--projector-lr", type=float, default=d["projector_lr"],
                    help="> 0: train the projector too in the end-to-end stage, at this peak learning rate")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    info = V.train(n_images=a.n_images, n_scenes=a.n_scenes, steps_align=a.steps_align, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                   turns=a.turns, lora_from=a.lora_from, lora_rank=a.lora_rank, out=a.out, init=a.init, balanced=a.balanced, projector_lr=a.projector_lr, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
