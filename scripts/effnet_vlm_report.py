#!/usr/bin/env python
"""Evaluate effnet-smollm2-vqa: tower check, easy-VQA accuracy (image / blank / none), POPE and CHAIR
with none / VHR / VAR (hyper-parameters chosen on calibration scenes, reported on held-out scenes),
visual-sink removal, VHD heads and visual sinks. Writes small files under reports/effnet-smollm2-vqa/.

    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages tower,accuracy --n-images 1000
    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages calibrate,pope --n-cal 20 --n-eval 100
    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages chair --n-chair 60
    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages heads --n-heads 6

Test scenes: ``scenes("test", n_cal + n_eval, seed=2000)``; the first n_cal are the calibration split.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.io.runs import model_dir

OUT = model_dir("reports", "effnet-smollm2-vqa")
SCENE_SEED = 2000
VHR_GRID = [{"alpha": 1.5}, {"alpha": 2.0}, {"alpha": 3.0}]
VAR_GRID = [{"p": 0.6, "rho": 0.5}, {"p": 0.9, "rho": 0.5}]


LM = None  # the loaded model, for provenance
ARGS: dict = {}


def _json(path: Path, obj) -> None:
    """Write ``obj`` with its provenance (workbench.provenance: code, weights hash, the command's options)."""
    from workbench.io.provenance import code_sha256, collect, write_json

    cfg = {"script": "scripts/effnet_vlm_report.py", "file": path.name, **ARGS,
           "code_sha256": code_sha256(["workbench.demo.effnet_vlm", "workbench.demo.easyvqa", "workbench.tasks.vqa_eval",
                                       "workbench.tasks.vqa_hallucination", "workbench.analyzers.vision"])}
    write_json(json.loads(json.dumps(obj, default=str)), path, collect(LM, cfg, seed=SCENE_SEED))


def stage_tower(a) -> dict:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from workbench.demo.effnet_vlm import load_tower

    tower = load_tower()
    d = load_sample_images()
    res = {}
    for name, img in zip(d.filenames, d.images):
        im = Image.fromarray(img).resize((224, 224), Image.BICUBIC)
        x = (torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0 - 0.5) / 0.5
        p = tower.classify(x).softmax(-1)[0]
        t = p.topk(5)
        res[Path(name).name] = {"top5_imagenet_index": t.indices.tolist(), "top5_prob": [round(float(v), 4) for v in t.values]}
    res["note"] = "ImageNet-1k class indices (no installed package ships the class names); 442 = bell cote, 985 = daisy"
    _json(OUT / "tower_check.json", res)
    return res


def stage_accuracy(lm, a) -> dict:
    from workbench.tasks.vqa_eval import image_ablation, summary

    t = time.time()
    df = image_ablation(lm, "test", a.n_images, progress=a.progress)
    s = summary(df)
    s.to_csv(OUT / "accuracy.csv", index=False)
    df.groupby(["condition", "kind"]).correct.mean()
    res = {"n_images": a.n_images or 1000, "seconds": round(time.time() - t), "table": s.to_dict(orient="records")}
    _json(OUT / "accuracy.json", res)
    return res


def _scenes(a):
    from workbench.demo import easyvqa as V

    sc = V.scenes("test", a.n_cal + a.n_eval, SCENE_SEED)
    return sc[: a.n_cal], sc[a.n_cal:]


def stage_calibrate(lm, a) -> dict:
    from workbench.demo import easyvqa as V
    from workbench.tasks.vqa_hallucination import pope_metrics, run_pope

    cal, _ = _scenes(a)
    items = V.pope_items(cal, seed=1)
    res = {"n_scenes": len(cal), "n_questions_per_split": int((items.split == "random").sum()), "vhr": [], "var": []}
    for method, grid in (("vhr", VHR_GRID), ("var", VAR_GRID)):
        for params in grid:
            df = run_pope(lm, cal, items, method, params, progress=a.progress)
            res[method].append({"params": params, **pope_metrics(df)})
    res["chosen"] = {m: max(res[m], key=lambda r: (r["f1"], r["accuracy"]))["params"] for m in ("vhr", "var")}
    _json(OUT / "calibration.json", res)
    return res


def _chosen() -> dict:
    p = OUT / "calibration.json"
    return json.loads(p.read_text())["chosen"] if p.exists() else {"vhr": {"alpha": 2.0}, "var": {"p": 0.6, "rho": 0.5}}


def stage_pope(lm, a) -> dict:
    from workbench.demo import easyvqa as V
    from workbench.core.intervals import cluster_ci, mcnemar, paired_cluster_ci
    from workbench.tasks.vqa_hallucination import pope_metrics, run_pope

    _, ev = _scenes(a)
    items = V.pope_items(ev, seed=2)
    chosen = _chosen()
    runs = {m: run_pope(lm, ev, items, m, chosen.get(m), progress=a.progress) for m in a.methods.split(",")}
    pd.concat(runs.values()).to_csv(OUT / "pope_answers.csv", index=False)
    table, tests = [], []
    for split in ("random", "popular", "adversarial"):
        for m, df in runs.items():
            sub = df[df.split == split]
            table.append({"split": split, "method": m, "params": chosen.get(m), **cluster_ci(sub, pope_metrics)})
            if m != "none":
                base = runs["none"][runs["none"].split == split]
                tests.append({"split": split, "method": m, "vs": "none",
                              "f1_diff_ci": paired_cluster_ci(base, sub, pope_metrics, "f1"),
                              "mcnemar_correct": mcnemar(sub.correct.to_numpy(), base.correct.to_numpy()),
                              "answers_changed": int((sub.pred.to_numpy() != base.pred.to_numpy()).sum())})
    res = {"n_scenes": len(ev), "n_questions_per_split": int((items.split == "random").sum()), "table": table, "paired": tests}
    _json(OUT / "pope.json", res)
    pd.DataFrame(table).to_csv(OUT / "pope.csv", index=False)
    return res


def stage_chair(lm, a) -> dict:
    from workbench.core.intervals import cluster_ci, mcnemar, paired_cluster_ci
    from workbench.tasks.vqa_hallucination import chair_metrics, run_chair

    _, ev = _scenes(a)
    ev = ev[: a.n_chair]
    chosen = _chosen()
    runs = {m: run_chair(lm, ev, m, chosen.get(m), progress=a.progress) for m in a.methods.split(",") if m != "no-visual-sinks"}
    pd.concat(runs.values()).to_csv(OUT / "chair_captions.csv", index=False)
    table, tests = [], []
    for m, df in runs.items():
        table.append({"method": m, "params": chosen.get(m), **cluster_ci(df, chair_metrics)})
        if m != "none":
            base = runs["none"]
            tests.append({"method": m, "vs": "none",
                          "chair_s_diff_ci": paired_cluster_ci(base, df, chair_metrics, "chair_s"),
                          "recall_diff_ci": paired_cluster_ci(base, df, chair_metrics, "recall"),
                          "mcnemar_hallucinated": mcnemar((df.hallucinated.map(len) > 0).to_numpy(),
                                                          (base.hallucinated.map(len) > 0).to_numpy())})
    res = {"n_scenes": len(ev), "table": table, "paired": tests}
    _json(OUT / "chair.json", res)
    return res


def stage_heads(lm, a) -> dict:
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_vlm import make_input
    from workbench.analyzers.vision import (head_vhd, image_attention_table, image_centric_heads, sink_table, vhd_table,
                                  vision_aware_heads, visual_sink_summary)
    from workbench.tasks.vqa_hallucination import sink_dims

    _, ev = _scenes(a)
    inputs = [make_input(lm, V.CAPTION_QUESTION, s.pixels()) for s in ev[: a.n_heads]]
    per_head = head_vhd(vhd_table(lm, inputs, progress=a.progress))
    per_head.to_csv(OUT / "vhd_heads.csv", index=False)
    dims = sink_dims(lm)
    sinks = visual_sink_summary(sink_table(lm, inputs, dims))
    sinks.to_csv(OUT / "visual_sinks.csv", index=False)
    att = image_attention_table(lm, inputs, dims)
    ic = image_centric_heads(att)
    ic.to_csv(OUT / "image_centric_heads.csv", index=False)
    res = {"n_scenes": len(inputs), "sink_dims": dims,
           "top_vision_aware_heads": vision_aware_heads(per_head, 10)[["layer", "head", "vhd"]].to_dict(orient="records"),
           "visual_sink_positions": sinks[sinks.n_samples_sink > 0][["image_index", "share", "max_phi"]].to_dict(orient="records"),
           "image_centric_heads": ic.head(10).to_dict(orient="records"),
           "mean_image_attention": float(att.image_attention.mean())}
    _json(OUT / "heads.json", res)
    return res


def main() -> int:
    global OUT, LM
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="tower,accuracy,calibrate,pope,chair,heads")
    ap.add_argument("--n-images", type=int, default=None, help="easy-VQA test images (default all 1000)")
    ap.add_argument("--n-cal", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--n-chair", type=int, default=60)
    ap.add_argument("--n-heads", type=int, default=6)
    ap.add_argument("--methods", default="none,vhr,var,no-visual-sinks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    OUT = a.out
    ARGS.update({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    lm = None
    for st in stages:
        t = time.time()
        if st == "tower":
            res = stage_tower(a)
        else:
            if lm is None:
                from workbench import load_model

                lm = LM = load_model("effnet-smollm2-vqa")
            res = globals()[f"stage_{st}"](lm, a)
        print(json.dumps({"stage": st, "seconds": round(time.time() - t), **res}, default=str)[:4000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
