#!/usr/bin/env python
"""How well the colour of an easy-VQA image can be read, linearly, from the effnet-smollm2-vqa tower's
tokens and from its projector's output: a logistic-regression probe (scikit-learn) on the max and the mean
over the 49 tokens, trained on the first ``--n-train`` train images with a colour, scored on the first
``--n-test`` such test images. Prints one JSON line: tower and projector test accuracy.

    PYTHONPATH=. .venv/bin/python scripts/effnet_colour_probe.py [--weights FILE]

Used to choose ``--projector-lr`` in ``scripts/train_effnet_vlm.py`` (reports/effnet-smollm2-vqa/README.md).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from workbench import load_model
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_llava import WEIGHTS, assemble

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="a file scripts/train_effnet_vlm.py wrote")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, _ = assemble(load_model("smollm2-135m"), load_file(str(a.weights)))  # the model's own tower and projector
    tower, proj = model.model.vision_tower, model.model.multi_modal_projector

    def pooled(split: str, n: int):
        labels = V.image_labels(split)
        ids = [i for i in sorted(V.image_paths(split)) if labels[i][0] is not None][:n]
        f_all, z_all = [], []
        with torch.no_grad():
            for b in range(0, len(ids), 32):
                f = tower(torch.stack([V.image_pixels(split, i) for i in ids[b:b + 32]])).last_hidden_state
                z = proj(f)
                f_all.append(torch.cat([f.amax(1), f.mean(1)], -1))
                z_all.append(torch.cat([z.amax(1), z.mean(1)], -1))
        return torch.cat(f_all).numpy(), torch.cat(z_all).numpy(), np.array([labels[i][0] for i in ids])

    f_tr, z_tr, y_tr = pooled("train", a.n_train)
    f_te, z_te, y_te = pooled("test", a.n_test)

    def probe(x_tr, x_te):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_tr, y_tr)
        return round(float(clf.score(x_te, y_te)), 4)

    print(json.dumps({"weights": str(a.weights), "n_train": len(y_tr), "n_test": len(y_te),
                      "tower_colour_accuracy": probe(f_tr, f_te), "projector_colour_accuracy": probe(z_tr, z_te)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
