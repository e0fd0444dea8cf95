#!/usr/bin/env python
"""Evaluate effnet-smollm2-vqa: tower check, easy-VQA accuracy (image / blank / none), POPE and CHAIR
with none / VHR / VAR (hyper-parameters chosen on calibration scenes, reported on held-out scenes),
visual-sink removal, and the papers' claims decided on them. Writes small files under reports/effnet-smollm2-vqa/.

    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py                       # every stage, defaults
    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages tower,accuracy     # full easy-VQA test split
    PYTHONPATH=. .venv/bin/python scripts/effnet_vlm_report.py --stages calibrate,pope,chair,claims

VHD heads, visual sinks and image-centric heads: ``workbench vision --model effnet-smollm2-vqa --images 16``
(same folder: vision.json, vhd_heads.csv, visual_sinks.csv, image_centric_heads.csv).

Test scenes: ``scenes("test", n_cal + n_eval, seed=2000)``; the first n_cal are the calibration split, on
which alone VHR's and VAR's hyper-parameters are chosen (``calibrate``); ``pope``, ``chair`` and ``claims``
report the held-out n_eval scenes only.
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

from workbench.tasks.vqa_hallucination import N_CALIBRATION, POPE_SEED, SCENE_SEED, benchmark_scenes

OUT = model_dir("reports", "effnet-smollm2-vqa")
#: candidate hyper-parameters, tried on the calibration scenes only (layers: None = the method's default,
#: VHR layer 1 + the last 13 of 30, VAR layers 2-28)
VHR_GRID = [{"alpha": 1.5}, {"alpha": 2.0}, {"alpha": 3.0}, {"alpha": 2.0, "layers": list(range(15, 30))}]
VAR_GRID = [{"p": 0.6, "rho": 0.5}, {"p": 0.9, "rho": 0.5}, {"p": 0.6, "rho": 0.3},
            {"p": 0.6, "rho": 0.5, "layers": list(range(2, 15))}]
#: VHR is chosen by the claim it is tested on (CHAIR), VAR by its (POPE F1); a VHR setting may lose at most
#: this much caption recall on the calibration scenes (the claims' own rule: workbench.tasks.vqa_claims)
from workbench.tasks.vqa_claims import RECALL_SLACK  # noqa: E402


LM = None  # the loaded model, for provenance
ARGS: dict = {}


def _prov(path: Path) -> dict:
    """Provenance of one output file: code, weights hash, the command's options."""
    from workbench.io.provenance import code_sha256, collect

    cfg = {"script": "scripts/effnet_vlm_report.py", "file": path.name, **ARGS,
           "code_sha256": code_sha256(["workbench.demo.effnet_vlm", "workbench.demo.easyvqa", "workbench.tasks.vqa_eval",
                                       "workbench.tasks.vqa_hallucination", "workbench.tasks.vqa_claims",
                                       "workbench.analyzers.vision"])}
    return collect(LM, cfg, seed=SCENE_SEED)


def _json(path: Path, obj) -> None:
    """Write ``obj`` as JSON with its provenance."""
    from workbench.io.provenance import write_json

    write_json(json.loads(json.dumps(obj, default=str)), path, _prov(path))


def _csv(df: pd.DataFrame, path: Path) -> None:
    """Write a table as CSV with its provenance sidecar (``<file>.provenance.json``)."""
    from workbench.io.provenance import write_csv

    write_csv(df, path, _prov(path))


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
    _csv(s, OUT / "accuracy.csv")
    from workbench.io.provenance import write_parquet

    write_parquet(df, OUT / "accuracy_answers.parquet", _prov(OUT / "accuracy_answers.parquet"))
    res = {"n_images": a.n_images or 1000, "seconds": round(time.time() - t), "table": s.to_dict(orient="records")}
    _json(OUT / "accuracy.json", res)
    return res


def stage_prior(lm, a) -> dict:
    """How far the question alone answers easy-VQA: per distinct question, the majority answer of that exact
    question in the train split (no model, no image), scored on the test split; and, from
    ``accuracy_answers.parquet``, each condition's yes/no accuracy on the questions where that prior is wrong
    (only the image can answer those)."""
    from collections import Counter, defaultdict

    from workbench.demo import easyvqa as V

    votes: dict[str, Counter] = defaultdict(Counter)
    for q, ans, _ in V.questions("train"):
        votes[q][ans] += 1
    overall = Counter(ans for q, ans, _ in V.questions("train") if V.is_yesno(ans)).most_common(1)[0][0]

    def prior(q):
        return votes[q].most_common(1)[0][0] if q in votes else overall

    test = V.questions("test")
    yn = [(q, ans) for q, ans, _ in test if V.is_yesno(ans)]
    res = {"rule": "majority answer of the same question string in easy-VQA train (no image)",
           "n_yesno": len(yn), "n_seen_in_train": sum(q in votes for q, _ in yn),
           "prior_accuracy_yesno": float(np.mean([prior(q) == ans for q, ans in yn])),
           "prior_accuracy_open": float(np.mean([prior(q) == ans for q, ans, _ in test if not V.is_yesno(ans)]))}
    from workbench.demo.effnet_train import absent_answer

    res["absent_rule"] = "answer every yes/no question as if the thing it names were not in the image (absent_answer)"
    res["absent_rule_accuracy_yesno"] = float(np.mean([absent_answer(q) == ans for q, ans in yn]))
    p = OUT / "accuracy_answers.parquet"
    if p.exists():
        df = pd.read_parquet(p)
        df = df[df.kind == "yesno"].copy()
        df["prior_right"] = [prior(q) == ans for q, ans in zip(df.question, df.answer)]
        df["says_absent"] = [absent_answer(q) == pred for q, pred in zip(df.question, df.pred)]
        df["present"] = [absent_answer(q) != ans for q, ans in zip(df.question, df.answer)]

        def row(c, g):
            present, absent = float(g[g.present].correct.mean()), float(g[~g.present].correct.mean())
            return {"condition": c, "n": int((~g.prior_right).sum()),
                    "accuracy_where_prior_wrong": float(g[~g.prior_right].correct.mean()),
                    "accuracy_where_prior_right": float(g[g.prior_right].correct.mean()),
                    "share_answered_as_absent": float(g.says_absent.mean()), "n_present": int(g.present.sum()),
                    "accuracy_where_present": present, "accuracy_where_absent": absent,
                    "balanced_accuracy": (present + absent) / 2}

        res["against_prior"] = [row(c, g) for c, g in df.groupby("condition", sort=False)]
    _json(OUT / "prior.json", res)
    return res


def _scenes(a):
    return benchmark_scenes(a.n_eval, a.n_cal)


def stage_calibrate(lm, a) -> dict:
    """Choose VHR's and VAR's hyper-parameters on the calibration scenes (never the held-out ones): VAR by
    mean POPE F1 over the three splits, VHR by CHAIR_S on captions of the first ``n_cal_chair`` calibration
    scenes among the settings whose recall is at most RECALL_SLACK below no intervention's."""
    from workbench.demo import easyvqa as V
    from workbench.tasks.vqa_hallucination import chair_metrics, pope_metrics, run_chair, run_pope

    cal, _ = _scenes(a)
    items = V.pope_items(cal, seed=1)
    res = {"n_scenes": len(cal), "n_questions_per_split": int((items.split == "random").sum()),
           "n_caption_scenes": min(a.n_cal_chair, len(cal)), "rule": {
               "var": "max mean POPE F1 over random/popular/adversarial",
               "vhr": f"min CHAIR_S among settings with caption recall >= recall(none) - {RECALL_SLACK}"}}

    def pope(method, params):
        df = run_pope(lm, cal, items, method, params, progress=a.progress)
        per = {sp: pope_metrics(df[df.split == sp]) for sp in ("random", "popular", "adversarial")}
        return {"f1_mean": float(np.mean([m["f1"] for m in per.values()])), "splits": per}

    def chair(method, params):
        return chair_metrics(run_chair(lm, cal[: a.n_cal_chair], method, params, progress=a.progress))

    res["none"] = {"params": None, "pope": pope("none", None), "chair": chair("none", None)}
    res["var"] = [{"params": p, "pope": pope("var", p)} for p in VAR_GRID]
    res["vhr"] = [{"params": p, "chair": chair("vhr", p)} for p in VHR_GRID]
    floor = res["none"]["chair"]["recall"] - RECALL_SLACK
    ok = [r for r in res["vhr"] if r["chair"]["recall"] >= floor] or res["vhr"]
    res["chosen"] = {"var": max(res["var"], key=lambda r: r["pope"]["f1_mean"])["params"],
                     "vhr": min(ok, key=lambda r: (r["chair"]["chair_s"], -r["chair"]["recall"]))["params"]}
    _json(OUT / "calibration.json", res)
    return res


def _chosen() -> dict:
    p = OUT / "calibration.json"
    if not p.exists():
        raise SystemExit("no calibration.json: run --stages calibrate first (hyper-parameters come from the calibration scenes)")
    return json.loads(p.read_text())["chosen"]


def stage_pope(lm, a) -> dict:
    from workbench.demo import easyvqa as V
    from workbench.core.intervals import cluster_ci, mcnemar, paired_cluster_ci
    from workbench.tasks.vqa_hallucination import pope_metrics, run_pope

    _, ev = _scenes(a)
    items = V.pope_items(ev, seed=POPE_SEED)
    chosen = _chosen()
    runs = {m: run_pope(lm, ev, items, m, chosen.get(m), progress=a.progress) for m in a.methods.split(",")}
    _csv(pd.concat(runs.values()), OUT / "pope_answers.csv")
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
                              "answers_changed": int((sub.pred.to_numpy() != base.pred.to_numpy()).sum()),
                              "n_questions": int(len(sub))})
    res = {"n_scenes": len(ev), "n_questions_per_split": int((items.split == "random").sum()), "table": table, "paired": tests}
    _json(OUT / "pope.json", res)
    _csv(pd.DataFrame(table), OUT / "pope.csv")
    return res


def stage_chair(lm, a) -> dict:
    from workbench.core.intervals import cluster_ci, mcnemar, paired_cluster_ci
    from workbench.tasks.vqa_hallucination import chair_metrics, run_chair

    _, ev = _scenes(a)
    ev = ev[: a.n_chair]
    chosen = _chosen()
    runs = {m: run_chair(lm, ev, m, chosen.get(m), progress=a.progress) for m in a.methods.split(",") if m != "no-visual-sinks"}
    _csv(pd.concat(runs.values()), OUT / "chair_captions.csv")
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


def stage_claims(lm, a) -> dict:
    """Each paper's claim decided on the held-out tables (pope.json, chair.json) by the rules of
    :mod:`workbench.tasks.vqa_claims` (stated in the file)."""
    from workbench.tasks.vqa_claims import paper_claims

    pope, chair = (json.loads((OUT / f).read_text()) for f in ("pope.json", "chair.json"))
    res = {"claims": paper_claims(pope, chair, RECALL_SLACK)}
    _json(OUT / "claims.json", res)
    return res


def _ci(v, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def stage_summary(lm, a) -> dict:
    """``summary.md``: the tables of the files above (those that exist), written from them, with provenance."""
    from workbench.io.provenance_files import markdown_footer

    def load(name):
        p = OUT / name
        return json.loads(p.read_text()) if p.exists() else None

    md = ["# effnet-smollm2-vqa: easy-VQA accuracy, POPE, CHAIR and the papers' claims", "",
          "Written by `scripts/effnet_vlm_report.py --stages summary` from the JSON files of this folder.", ""]
    acc = load("accuracy.json")
    if acc:
        md += [f"## easy-VQA test accuracy ({acc['n_images']} images; 95% bootstrap over images)", "",
               "| condition | kind | n | accuracy | yes-ratio |", "|---|---|---|---|---|"]
        md += [f"| {r['condition']} | {r['kind']} | {r['n']} | {_ci(r['accuracy'], [r['ci_low'], r['ci_high']])} | "
               f"{'' if r['yes_ratio'] != r['yes_ratio'] or r['yes_ratio'] is None else round(r['yes_ratio'], 3)} |"
               for r in acc["table"]]
        md.append("")
    pr = load("prior.json")
    if pr:
        md += [f"Question-only prior ({pr['rule']}): yes/no {pr['prior_accuracy_yesno']:.3f} "
               f"({pr['n_seen_in_train']} of {pr['n_yesno']} test yes/no questions occur in train), open "
               f"{pr['prior_accuracy_open']:.3f}.", ""]
        if pr.get("against_prior"):
            if "absent_rule_accuracy_yesno" in pr:
                md += [f"Answering every yes/no question as if the named thing were absent (the truthful answers "
                       f"for a blank image) scores {pr['absent_rule_accuracy_yesno']:.3f}.", ""]
            md += ["| condition | yes/no where the prior is wrong (n) | where it is right | answered as if absent | "
                   "where the thing is present (n) | where absent | balanced accuracy (chance 0.5) |",
                   "|---|---|---|---|---|---|---|"]
            nan = float("nan")
            md += [f"| {r['condition']} | {r['accuracy_where_prior_wrong']:.3f} ({r['n']}) | "
                   f"{r['accuracy_where_prior_right']:.3f} | {r.get('share_answered_as_absent', nan):.3f} | "
                   f"{r.get('accuracy_where_present', nan):.3f} ({r.get('n_present', '?')}) | "
                   f"{r.get('accuracy_where_absent', nan):.3f} | {r.get('balanced_accuracy', nan):.3f} |"
                   for r in pr["against_prior"]]
            md.append("")
    cal = load("calibration.json")
    if cal:
        md += [f"## Calibration ({cal['n_scenes']} calibration scenes, {cal['n_questions_per_split']} POPE questions "
               f"per split; captions of {cal['n_caption_scenes']})", "", f"Rules: {cal['rule']}", "",
               "| method | params | POPE F1 (mean of splits) | CHAIR_S | recall |", "|---|---|---|---|---|",
               f"| none | | {cal['none']['pope']['f1_mean']:.3f} | {cal['none']['chair']['chair_s']:.3f} | "
               f"{cal['none']['chair']['recall']:.3f} |"]
        md += [f"| var | {r['params']} | {r['pope']['f1_mean']:.3f} | | |" for r in cal["var"]]
        md += [f"| vhr | {r['params']} | | {r['chair']['chair_s']:.3f} | {r['chair']['recall']:.3f} |" for r in cal["vhr"]]
        md += ["", f"Chosen: {cal['chosen']}", ""]
    pope = load("pope.json")
    if pope:
        md += [f"## POPE on held-out scenes ({pope['n_scenes']} scenes, {pope['n_questions_per_split']} questions per split)",
               "", "| split | method | accuracy | precision | recall | F1 | yes-ratio |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['split']} | {r['method']} | {_ci(r['accuracy'], r['accuracy_ci'])} | {_ci(r['precision'], r['precision_ci'])} "
               f"| {_ci(r['recall'], r['recall_ci'])} | {_ci(r['f1'], r['f1_ci'])} | {r['yes_ratio']:.3f} |" for r in pope["table"]]
        md += ["", "| split | method vs none | F1 difference [95%] | McNemar p | answers changed |", "|---|---|---|---|---|"]
        md += [f"| {t['split']} | {t['method']} | [{t['f1_diff_ci'][0]:+.3f}, {t['f1_diff_ci'][1]:+.3f}] | "
               f"{t['mcnemar_correct']['p_value']:.3g} | {t['answers_changed']} of {t.get('n_questions', '?')} |"
               for t in pope["paired"]]
        md.append("")
    chair = load("chair.json")
    if chair:
        md += [f"## CHAIR on held-out scenes ({chair['n_scenes']} captions per method)", "",
               "| method | CHAIR_S | CHAIR_I | objects per caption | recall |", "|---|---|---|---|---|"]
        md += [f"| {r['method']} | {_ci(r['chair_s'], r['chair_s_ci'])} | {_ci(r['chair_i'], r['chair_i_ci'])} | "
               f"{_ci(r['length'], r['length_ci'])} | {_ci(r['recall'], r['recall_ci'])} |" for r in chair["table"]]
        md += ["", "| method vs none | CHAIR_S difference [95%] | recall difference [95%] | McNemar p |", "|---|---|---|---|"]
        md += [f"| {t['method']} | [{t['chair_s_diff_ci'][0]:+.3f}, {t['chair_s_diff_ci'][1]:+.3f}] | "
               f"[{t['recall_diff_ci'][0]:+.3f}, {t['recall_diff_ci'][1]:+.3f}] | {t['mcnemar_hallucinated']['p_value']:.3g} |"
               for t in chair["paired"]]
        md.append("")
    claims = load("claims.json")
    if claims:
        md += ["## The papers' claims here", "", "| claim | rule | verdict |", "|---|---|---|"]
        md += [f"| {c['claim']} | {c['rule']} | {c['verdict']} |" for c in claims["claims"]]
        md.append("")
    (OUT / "summary.md").write_text("\n".join(md) + markdown_footer(_prov(OUT / "summary.md")))
    return {"lines": len(md)}


def main() -> int:
    global OUT, LM
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="tower,accuracy,prior,calibrate,pope,chair,claims,summary")
    ap.add_argument("--n-images", type=int, default=None, help="easy-VQA test images (default all 1000)")
    ap.add_argument("--n-cal", type=int, default=N_CALIBRATION, help="calibration scenes (POPE: 2 questions per scene and split)")
    ap.add_argument("--n-cal-chair", type=int, default=40, help="calibration scenes captioned to choose VHR")
    ap.add_argument("--n-eval", type=int, default=250, help="held-out scenes (POPE: 2 questions per scene and split)")
    ap.add_argument("--n-chair", type=int, default=200, help="held-out scenes captioned (CHAIR)")
    ap.add_argument("--methods", default="none,vhr,var,no-visual-sinks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("reports"), help="report root: files go to <out>/effnet-smollm2-vqa/")
    a = ap.parse_args()
    OUT = model_dir(a.out, "effnet-smollm2-vqa")
    ARGS.update({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()})
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    lm = None
    for st in stages:
        t = time.time()
        if st == "tower":
            res = stage_tower(a)
        elif st in ("claims", "summary", "prior"):
            res = globals()[f"stage_{st}"](None, a)
        else:
            if lm is None:
                from workbench import load_model

                lm = LM = load_model("effnet-smollm2-vqa")
            res = globals()[f"stage_{st}"](lm, a)
        print(json.dumps({"stage": st, "seconds": round(time.time() - t), **res}, default=str)[:4000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
