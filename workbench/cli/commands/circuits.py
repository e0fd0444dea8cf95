"""CLI: ``workbench heads`` (classic head types) and ``workbench patch`` (IOI / colored-objects patching)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit


@app.command()
def heads(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    samples: int = typer.Option(4, min=1, help="real-text windows for the previous-token score"),
    seq_len: int = typer.Option(256, min=1, help="tokens per text window"),
    random_seqs: int = typer.Option(4, "--random", min=1, help="repeated random sequences for duplicate/induction scores"),
    half_len: int = typer.Option(128, min=1, help="length of the random block (each sequence is 2 x this)"),
    seed: int = typer.Option(0, help="seed of the random tokens"),
    top: int = typer.Option(5, min=1, help="top heads listed per type"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root (writes ROOT/<model>/head_types.parquet and .csv)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Classic head types: previous-token, duplicate-token and induction scores of every head
    (TransformerLens head_detector definitions, computed from the attention kernel's LSE)."""
    from ...analyzers.head_types import HEAD_TYPES
    from ...core.models import load_model
    from ...report.head_types_report import head_types_report

    lm = load_model(model, device=device, dtype=dtype)
    settings = {"samples": samples, "seq_len": seq_len, "random": random_seqs, "half_len": half_len, "seed": seed}
    res = head_types_report(lm, samples=samples, seq_len=seq_len, n_random=random_seqs, half_len=half_len, seed=seed,
                            top=top, out=out, config={"command": "heads", "model": model, **settings})
    res.pop("scores")
    lines = [f"{k}: " + ", ".join(f"L{r['layer']}H{r['head']}={r['score']:.3f}" for r in res[f"top_{k}"])
             for k in HEAD_TYPES]
    emit(res, as_json, "\n".join(lines) + f"\nwrote {res['table']}")


@app.command()
def patch(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    task: str = typer.Option("ioi", help="ioi, colored_objects, or both (then the circuits' overlap is reported)"),
    n: int = typer.Option(32, min=1, help="prompt pairs per task"),
    seed: int = typer.Option(0, help="seed of the prompt generator"),
    k: int = typer.Option(5, min=1, help="heads per circuit stage"),
    stages: int = typer.Option(2, min=1, help="circuit stages (1: heads writing to the logits)"),
    overlap_k: int = typer.Option(10, min=1, help="top-k heads compared for the overlap"),
    activation: bool = typer.Option(True, help="also run activation patching of every head"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root (writes ROOT/<model>/circuits/ and circuits.html)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Activation and path patching of head outputs z on clean/corrupted prompt pairs; circuit per task."""
    # one Python call does the work: circuits.report.patch_circuits
    from circuits.report import TASK_NAMES, patch_circuits
    from ...core.errors import WorkbenchError
    from ...core.models import load_model

    names = list(TASK_NAMES) if task == "both" else [task]
    if not set(names) <= set(TASK_NAMES):
        raise WorkbenchError(f"unknown task {task!r}: use ioi, colored_objects or both")
    lm = load_model(model, device=device, dtype=dtype)
    result = patch_circuits(lm, names, n=n, seed=seed, k=k, stages=stages, overlap_k=overlap_k, activation=activation,
                            out=out, config={"command": "patch", "model": model, "task": task, "n": n, "seed": seed,
                                             "k": k, "stages": stages, "overlap_k": overlap_k, "activation": activation})
    result.pop("provenance")
    lines = []
    for name, info in result["tasks"].items():
        lines.append(f"{name}: LD clean {info['ld_clean']:.3f}, corrupted {info['ld_corrupted']:.3f}, top-1 {info['top1_clean']:.2f}")
        lines += [f"  stage {r['stage']}: L{r['layer']}H{r['head']} effect {r['effect']:+.3f}" for r in info["circuit"]]
    if "overlap" in result:
        lines.append("overlap: " + json.dumps(result["overlap"]))
    emit(result, as_json, "\n".join(lines) + f"\nwrote {result['out']}")
