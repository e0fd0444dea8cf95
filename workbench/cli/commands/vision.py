"""CLI: ``workbench vision`` (vision-aware heads, visual sinks, image-centric heads) and
``workbench hallucination`` (POPE-style and CHAIR-style object hallucination, with VHR or VAR)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from .retrieval import address_option, executor_option, gpus_option, threads_option, workers_option


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
    import pandas as pd

    from ...core.models import load_model
    from ...report.vision_report import vision_report

    lm = load_model(model, device=device, dtype=dtype)
    result = vision_report(lm, n_images=images, tau=tau, rho=rho, top=top, out=out, progress=not as_json)
    va = pd.DataFrame(result["vision_aware_heads"]).head(8)
    human = (f"sink dims {result['sink_dims']}; visual sink image positions: "
             f"{[s['image_index'] for s in result['visual_sinks']]}\n"
             f"top vision-aware heads (layer, head, VHD):\n{va.to_string(index=False)}\n"
             f"image-centric heads:\n{pd.DataFrame(result['image_centric_heads']).head(8).to_string(index=False)}\n"
             f"files: {Path(result['files']['json']).parent}")
    emit(result, as_json, human)


@app.command()
def hallucination(
    model: str = typer.Option("effnet-smollm2-vqa", help="a VLM preset: effnet-smollm2-vqa (easy-VQA scenes) or "
                                                         "digits-vlm (digit composites, the test fixture)"),
    method: str = typer.Option("none", help="none | vhr | var"),
    split: str = typer.Option("random", help="POPE negatives: random | popular | adversarial"),
    images: int = typer.Option(40, min=1, help="held-out images or scenes (POPE: 1 positive + 1 negative question each)"),
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
    from ...core.executor import make_executor
    from ...core.models import load_model
    from ...report.hallucination_report import hallucination_report
    from ...tasks.hallucination import check_method

    check_method(method, split)
    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    with ex:
        result = hallucination_report(lm, method, split, images, chair, out=out, progress=not as_json, executor=ex)
    human = (f"{lm.spec.name} POPE-{split} with {method}: accuracy {result['accuracy']:.3f} precision "
             f"{result['precision']:.3f} recall {result['recall']:.3f} F1 {result['f1']:.3f} yes-ratio {result['yes_ratio']:.3f}")
    emit(result, as_json, human)
