"""CLI: ``workbench vision`` (vision-aware heads, visual sinks, image-centric heads) and
``workbench hallucination`` (POPE-style and CHAIR-style object hallucination, with VHR or VAR)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from .retrieval import address_option, executor_option, gpus_option, threads_option, workers_option


def _out_dir(out: Path, model: str) -> Path:
    from ...io.runs import model_dir

    d = model_dir(out, model)
    d.mkdir(parents=True, exist_ok=True)
    return d


@app.command()
def vision(
    model: str = typer.Option("effnet-smollm2-vqa", help="a VLM preset (effnet-smollm2-vqa; digits-vlm, the small test fixture)"),
    images: int = typer.Option(8, min=1, help="held-out images to analyse (easy-VQA test scenes; digit composites for digits-vlm)"),
    tau: float = typer.Option(20.0, help="sink threshold on phi = max |x_d / rms(x)| over the sink dimensions"),
    rho: float = typer.Option(0.5, help="visual non-sink ratio threshold of image-centric heads"),
    top: int = typer.Option(20, min=1, help="heads listed in the summary"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root (writes ROOT/<model>/vision.*)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Vision-aware heads (VHD, T-VHD), visual sink tokens and image-centric heads of a VLM."""
    from ...core.models import load_model
    from ...report.vision_report import vision_analysis, write_vision_html

    lm = load_model(model, device=device, dtype=dtype)
    res = vision_analysis(lm, n_images=images, tau=tau, rho=rho, progress=not as_json)
    d = _out_dir(out, lm.spec.name)
    from ...io.provenance import code_sha256, collect, write_csv, write_json

    prov = collect(lm, {"command": "vision", "model": model, "images": images, "tau": tau, "rho": rho, "top": top,
                        "code_sha256": code_sha256(["workbench.analyzers.vision", "workbench.report.vision_report", "workbench.core.vlm"])})
    write_csv(res.per_head, d / "vhd_heads.csv", prov)
    write_csv(res.t_vhd, d / "t_vhd.csv", prov)
    write_csv(res.visual_sinks, d / "visual_sinks.csv", prov)
    write_csv(res.image_centric, d / "image_centric_heads.csv", prov)
    result = {"model": lm.spec.name, "n_images": images, **res.to_json(top)}
    write_json(result, d / "vision.json", prov)
    share = res.image_attention.groupby(["layer", "head"], as_index=False).agg(
        image_centric_share=("image_centric", "mean"), image_attention=("image_attention", "mean"))
    result["provenance"] = prov
    write_vision_html(result, res.per_head, d / "vision.html", share)
    write_csv(share, d / "image_attention_heads.csv", prov)
    result["files"] = {"json": str(d / "vision.json"), "html": str(d / "vision.html")}
    va = res.vision_aware.head(8)
    human = (f"sink dims {res.sink_dims}; visual sink image positions: "
             f"{res.visual_sinks[res.visual_sinks.n_samples_sink > 0].image_index.tolist()}\n"
             f"top vision-aware heads (layer, head, VHD):\n{va.to_string(index=False)}\n"
             f"image-centric heads:\n{res.image_centric.head(8).to_string(index=False)}\nfiles: {d}")
    emit(result, as_json, human)


@app.command()
def hallucination(
    model: str = typer.Option("digits-vlm", help="a VLM preset (digits-vlm)"),
    method: str = typer.Option("none", help="none | vhr | var"),
    split: str = typer.Option("random", help="POPE negatives: random | popular | adversarial"),
    images: int = typer.Option(40, min=1, help="held-out composites (POPE: 1 positive + 1 negative question each)"),
    chair: bool = typer.Option(False, "--chair", help="also run the CHAIR-style listing task"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root: answers are cached under ROOT/<model>/hallucination/ "
                                                        "(keyed by the full configuration and code, resumable)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """POPE-style yes/no (and optionally CHAIR-style listing) hallucination metrics with 95% bootstrap CIs."""
    from ...tasks.hallucination import check_method, chair_metrics, pope_items, pope_metrics, run_chair, run_pope, heldout_images
    from ...core.intervals import cluster_ci
    from ...core.models import load_model
    from ...report.vision_report import require_digits_model

    from ...core.executor import make_executor

    check_method(method, split)
    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    require_digits_model(lm)
    imgs = heldout_images(images)
    cache = _out_dir(out, lm.spec.name) / "hallucination"  # one answers-<config hash>.jsonl per configuration
    with ex:
        df = run_pope(lm, imgs, pope_items(imgs), method, [split], cache=cache, progress=not as_json, executor=ex)
        chair_df = run_chair(lm, imgs, method, cache=cache, progress=not as_json, executor=ex) if chair else None
    from ...tasks.hallucination import method_params
    from ...io.provenance import collect, write_json

    result = {"model": lm.spec.name, "method": method, "params": method_params(method), "split": split,
              **cluster_ci(df, pope_metrics)}
    if chair:
        result["chair"] = cluster_ci(chair_df, chair_metrics)
    result["file"] = str(write_json(result, cache.parent / f"hallucination_{method}_{split}_{images}.json",
                                    collect(lm, {"command": "hallucination", "model": model, "method": method,
                                                 "params": result["params"], "split": split, "images": images,
                                                 "chair": chair})))
    human = (f"{lm.spec.name} POPE-{split} with {method}: accuracy {result['accuracy']:.3f} precision "
             f"{result['precision']:.3f} recall {result['recall']:.3f} F1 {result['f1']:.3f} yes-ratio {result['yes_ratio']:.3f}")
    emit(result, as_json, human)
