#!/usr/bin/env python
"""Does digits-vlm's yes/no logit margin follow the image? AUC of logit(Yes) - logit(No) for present vs
absent digits, with the image and with a blank image (0.5 = no information).

    PYTHONPATH=. .venv/bin/python scripts/digits_vlm_margin.py --images 20
"""
import argparse
import json
import sys

import torch


def main() -> int:
    from sklearn.metrics import roc_auc_score

    from workbench.demo import digits as D
    from workbench import load_model
    from workbench.demo.digits_vlm import make_input
    from workbench.tasks.hallucination import heldout_images, pope_items

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model("digits-vlm")
    yes, no = (lm.tokenizer(t).input_ids[0] for t in (" Yes", " No"))
    imgs = heldout_images(a.images)
    items = pope_items(imgs)
    items = items[items.split == "random"]
    out = {}
    for cond in ("image", "blank image"):
        margins = []
        for r in items.itertuples():
            px = imgs[r.image].pixels if cond == "image" else D.blank_pixels()
            inp = make_input(lm, D.YESNO_QUESTION.format(d=r.digit), px)
            with torch.no_grad():
                lg = lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs()).logits[0, -1]
            margins.append(float(lg[yes] - lg[no]))
        out[cond] = {"auc": float(roc_auc_score(items.label.to_numpy(), margins)),
                     "mean_margin_present": float(torch.tensor(margins)[torch.tensor(items.label.to_numpy())].mean()),
                     "mean_margin_absent": float(torch.tensor(margins)[~torch.tensor(items.label.to_numpy())].mean())}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
