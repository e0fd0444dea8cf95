"""CLI: ``workbench heads`` (classic head types) and ``workbench patch`` (IOI / colored-objects patching)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..cli import DEVICE_OPTION, DTYPE_OPTION, app, emit


def _model_dir(out: Path | None, model_name: str) -> Path:
    from ..runs import model_dir

    return model_dir(out, model_name)


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
    from ..head_types import HEAD_TYPES, classic_head_scores
    from ..models import load_model
    from ..text import token_windows

    lm = load_model(model, device=device, dtype=dtype)
    text = token_windows(lm.tokenizer, seq_len, samples)
    df = classic_head_scores(lm, text, n_random=random_seqs, half_len=half_len, seed=seed, progress=True)
    from ..provenance import code_sha256, collect, write_csv, write_parquet

    path = _model_dir(out, lm.spec.name) / "head_types.parquet"
    settings = {"samples": samples, "seq_len": seq_len, "random": random_seqs, "half_len": half_len, "seed": seed}
    prov = collect(lm, {"command": "heads", "model": model, **settings,
                        "code_sha256": code_sha256(["workbench.head_types", "workbench.stats", "workbench.text"])}, seed)
    write_parquet(df, path, prov)
    write_csv(df, path.with_suffix(".csv"), prov)
    res = {"model": lm.spec.name, "table": str(path), "settings": settings, "provenance": prov}
    lines = []
    for k in HEAD_TYPES:
        col = f"{k}_score"
        best = df.nlargest(top, col)
        res[f"top_{k}"] = [{"layer": int(r.layer), "head": int(r.head), "score": float(getattr(r, col))}
                           for r in best.itertuples()]
        lines.append(f"{k}: " + ", ".join(f"L{r.layer}H{r.head}={getattr(r, col):.3f}" for r in best.itertuples()))
    emit(res, as_json, "\n".join(lines) + f"\nwrote {path}")


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
    from circuits import (activation_patching, circuit_overlap, extract_circuit, make_task, set_overlap,
                            task_baseline)
    from ..models import load_model
    from ..viz import layer_head_heatmap, write_html

    from ..errors import WorkbenchError

    names = ["ioi", "colored_objects"] if task == "both" else [task]
    if not set(names) <= {"ioi", "colored_objects"}:
        raise WorkbenchError(f"unknown task {task!r}: use ioi, colored_objects or both")
    lm = load_model(model, device=device, dtype=dtype)
    d = _model_dir(out, lm.spec.name) / "circuits"
    from ..provenance import collect, write_csv, write_json, write_parquet

    prov = collect(lm, {"command": "patch", "model": model, "task": task, "n": n, "seed": seed, "k": k, "stages": stages,
                        "overlap_k": overlap_k, "activation": activation}, seed)
    d.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": lm.spec.name, "out": str(d), "tasks": {}}
    figs, direct, acts, circuits = [], {}, {}, {}
    for name in names:
        t = make_task(name, lm.tokenizer, n=n, seed=seed)
        base = task_baseline(lm, t)
        info = {k2: v for k2, v in base.items() if not k2.endswith("per_pair")}
        info["example"] = t.prompts[0]
        info["example_corrupted"] = t.corrupted_prompts[0]
        circuit, tables = extract_circuit(lm, t, k=k, stages=stages)
        write_csv(circuit, d / f"{name}_circuit.csv", prov)
        for s, tab in tables.items():
            write_parquet(tab, d / f"{name}_path_stage{s}.parquet", prov)
            figs.append((f"{name}: path patching effect, stage {s}", layer_head_heatmap(tab, "effect", colorscale="RdBu")))
        direct[name], circuits[name] = tables[1], circuit
        info["circuit"] = json.loads(circuit.to_json(orient="records"))
        if activation:
            act = activation_patching(lm, t)
            write_parquet(act, d / f"{name}_activation.parquet", prov)
            acts[name] = act
            info["top_activation_patching"] = json.loads(act.nlargest(k, "normalised")[["layer", "head", "normalised"]]
                                                         .to_json(orient="records"))
            figs.append((f"{name}: activation patching (normalised)", layer_head_heatmap(act, "normalised", colorscale="RdBu")))
        result["tasks"][name] = info
    if len(names) == 2:
        a, b = names
        ov = {"path_patching_to_logits": circuit_overlap(direct[a], direct[b], k=overlap_k),
              "circuits": set_overlap(list(zip(circuits[a].layer, circuits[a]["head"])),
                                      list(zip(circuits[b].layer, circuits[b]["head"])))}
        if activation:
            ov["activation_patching"] = circuit_overlap(acts[a], acts[b], k=overlap_k, column="normalised")
        result["overlap"] = ov
    # the page sits beside the folder (reports/<model>/circuits.html), sharing the census page's plotly.min.js
    result["html"] = str(d.parent / f"{d.name}.html")
    write_html(figs, d.parent / f"{d.name}.html", f"Circuits: {lm.spec.name}",
               "Path patching (Wang et al. 2022) and activation patching of head outputs z; normalised logit difference.",
               provenance=prov)
    write_json(result, d / "summary.json", prov)
    lines = []
    for name, info in result["tasks"].items():
        lines.append(f"{name}: LD clean {info['ld_clean']:.3f}, corrupted {info['ld_corrupted']:.3f}, top-1 {info['top1_clean']:.2f}")
        lines += [f"  stage {r['stage']}: L{r['layer']}H{r['head']} effect {r['effect']:+.3f}" for r in info["circuit"]]
    if "overlap" in result:
        lines.append("overlap: " + json.dumps(result["overlap"]))
    emit(result, as_json, "\n".join(lines) + f"\nwrote {d}")
