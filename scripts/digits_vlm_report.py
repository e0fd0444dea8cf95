#!/usr/bin/env python
"""Measure the digits VLM and write reports/digits-vlm/: image use, vision heads, hallucination tables.

    PYTHONPATH=. .venv/bin/python scripts/digits_vlm_report.py --images 40 [--out runs]

``workbench reproduce`` runs it with ``--out reports``; report.json and report.md carry their provenance.

Answers are cached in <out>/digits-vlm/hallucination/answers-<configuration hash>.jsonl, so a rerun resumes.
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def md_table(df, digits: int = 3) -> str:
    """A pandas DataFrame as a Markdown table (no tabulate dependency)."""
    def cell(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fmt(m: dict, k: str) -> str:
    lo, hi = m[f"{k}_ci"]
    return f"{m[k]:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> int:
    from workbench import load_model
    from workbench.tasks import hallucination as H
    from workbench.core.intervals import cluster_ci
    from workbench.io.runs import model_dir
    from workbench.report.vision_report import vision_analysis

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--vision-images", type=int, default=8)
    ap.add_argument("--ablation-images", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model("digits-vlm")
    d = model_dir(a.out, "digits-vlm")
    d.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    md = ["# digits-vlm: image use, vision heads, object hallucination", ""]

    abl = H.image_ablation(lm, H.heldout_images(a.ablation_images, seed=99))
    report["image_ablation"] = abl.to_dict(orient="records")
    md += ["## Does the model use the image?", "", md_table(abl), ""]

    res = vision_analysis(lm, n_images=a.vision_images)
    vj = res.to_json(20)
    report["vision"] = {k: vj[k] for k in ("sink_dims", "vision_aware_heads", "visual_sinks", "image_centric_heads",
                                           "sink_tokens_per_layer", "text_sinks", "image_attention_mean")}
    md += ["## Vision heads", "", f"Sink (massive-activation) dimensions found on text: {res.sink_dims}", "",
           "Top vision-aware heads (VHD at the first generated token, mean over images):", "",
           md_table(res.vision_aware.head(15)), "",
           "Visual sinks (image-token index, share of images where it is a sink at >= 2 layers):", "",
           md_table(res.visual_sinks.head(10), 2), "",
           "Image-centric heads (share of images; A_I >= 0.2 and non-sink ratio >= 0.5):", "",
           md_table(res.image_centric.head(15)), ""]

    # closed-form VAR against the eager map edit on the real model's attention calls (real sinks)
    from workbench.demo import digits as D
    from workbench.core.attention import attention_hooks
    from workbench.demo.digits_vlm import make_input
    from workbench.interventions.var import VisualAttentionRedistribution, var_eager, var_output
    from workbench.core.vlm import image_positions

    class Check:
        worst, n_sel, n_calls = 0.0, 0, 0

        def on_attention(self, call):
            if call.layer not in var.layers:
                return None
            nk = call.key.shape[2]
            sinks = var.detector.sinks[call.layer][0, :nk]
            image = torch.zeros(nk, dtype=torch.bool)
            image[img_pos] = True
            got, sel = var_output(call, sinks, image)
            want, _ = var_eager(call, sinks, image)
            Check.worst = max(Check.worst, float((got.float() - want).abs().max()))
            Check.n_sel += int(sel.sum())
            Check.n_calls += 1

    for comp in H.heldout_images(4, seed=7):
        inp = make_input(lm, D.LIST_QUESTION, comp.pixels)
        img_pos = image_positions(lm.model, inp.input_ids)
        var = VisualAttentionRedistribution(lm, img_pos, H._sink_dims(lm))
        with var.detector, attention_hooks(Check()), torch.no_grad():
            lm.model(input_ids=inp.input_ids, **inp.kwargs())
    report["var_closed_form_vs_eager"] = {"max_abs_error": Check.worst, "selected_head_queries": Check.n_sel,
                                          "calls": Check.n_calls}
    md += ["## VAR closed form vs eager map edit (real model, 4 images, all VAR layers)", "",
           f"max |closed form - eager| = {Check.worst:.3g} over {Check.n_calls} attention calls; "
           f"{Check.n_sel} (head, query) pairs selected as image-centric", ""]

    imgs = H.heldout_images(a.images)
    items = H.pope_items(imgs)
    cache = d / "hallucination"  # answers-<configuration hash>.jsonl (workbench.tasks.hallucination.cache_file)
    pope, chair = {}, {}
    for method in H.METHODS:
        df = H.run_pope(lm, imgs, items, method, cache=cache)
        for split in H.SPLITS:
            pope[(method, split)] = cluster_ci(df[df.split == split], H.pope_metrics)
        chair[method] = cluster_ci(H.run_chair(lm, imgs, method, cache=cache), H.chair_metrics)
    report["pope"] = {f"{m}/{s}": v for (m, s), v in pope.items()}
    report["chair"] = chair
    md += [f"## POPE-style ({a.images} held-out images, 1 positive + 1 negative each; 95% bootstrap CI over images)", "",
           "| split | method | accuracy | precision | recall | F1 | yes-ratio |", "|---|---|---|---|---|---|---|"]
    for split in H.SPLITS:
        for method in H.METHODS:
            m = pope[(method, split)]
            md.append(f"| {split} | {method} | " + " | ".join(fmt(m, k) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")) + " |")
    md += ["", f"## CHAIR-style ('What digits are in the image?', {a.images} images)", "",
           "| method | CHAIR_S | CHAIR_I | length (digits) | recall |", "|---|---|---|---|---|"]
    for method in H.METHODS:
        m = chair[method]
        md.append(f"| {method} | " + " | ".join(fmt(m, k) for k in ("chair_s", "chair_i", "length", "recall")) + " |")
    from workbench.io.provenance import code_sha256, collect, markdown_footer, write_json

    settings = {k: v for k, v in vars(a).items() if k != "out"}
    prov = collect(lm, {"command": "digits_vlm_report", "model": lm.spec.name, **settings, "methods": list(H.METHODS),
                        "splits": list(H.SPLITS), "code_sha256": code_sha256([*H.CACHE_CODE, "workbench.report.vision_report"])})
    write_json(json.loads(json.dumps(report, default=str)), d / "report.json", prov)
    (d / "report.md").write_text("\n".join(md) + "\n" + markdown_footer(prov))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
