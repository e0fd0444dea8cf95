"""CLI: ``workbench probe`` (linear probes with control tasks on SmolLM2 activations)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit


@app.command()
def probe(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    task: str = typer.Option("needle", help="needle (is this token inside the needle) or sink (is this key a sink)"),
    layer: int = typer.Option(10, help="layer whose residual stream / head output is probed"),
    site: str = typer.Option("resid_pre", help="resid_pre or z"),
    head: Optional[int] = typer.Option(None, help="head, for --site z"),
    n: int = typer.Option(24, min=1, help="sequences"),
    seq_len: int = typer.Option(128, min=1, help="tokens per sequence"),
    threshold: float = typer.Option(0.1, help="sink: head-mean received attention above which a key is a sink"),
    seed: int = typer.Option(0, help="split / control-task seed"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root (writes ROOT/<model>/probes/<task>_L<layer>_<site>.json)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Train a linear probe and its Hewitt-Liang control probe; report accuracy and selectivity."""
    # one Python call does the work: probes.run.run_probe
    from ...core.models import load_model
    from probes.run import check_probe, run_probe

    check_probe(task, site, head)
    lm = load_model(model, device=device, dtype=dtype)
    res = run_probe(lm, task, layer, site, head, n=n, seq_len=seq_len, threshold=threshold, seed=seed, out=out,
                    config={"command": "probe", "model": model, "task": task, "layer": layer, "site": site,
                            "head": head, "n": n, "seq_len": seq_len, "threshold": threshold})
    human = (f"{res['description']}\n  task accuracy {res['task_accuracy']:.3f} (balanced {res['task_balanced_accuracy']:.3f}), "
             f"control {res['control_accuracy']:.3f} (balanced {res['control_balanced_accuracy']:.3f}), "
             f"selectivity {res['selectivity']:+.3f} (balanced {res['balanced_selectivity']:+.3f}); majority {res['majority_accuracy']:.3f}"
             f"\nwrote {res['file']}")
    emit(res, as_json, human)
