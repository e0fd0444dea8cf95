"""CLI: ``workbench study run SPEC`` (scripted head-ablation studies)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from .retrieval import address_option, executor_option, gpus_option, threads_option, workers_option

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Head-ablation studies from a TOML spec (see studies/*.toml).")
app.add_typer(study_app, name="study")


@study_app.command("run")
def run(
    spec: Path = typer.Argument(..., help="study spec (TOML)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its rows.jsonl"),
    overwrite: bool = typer.Option(False, "--overwrite", help="discard earlier results of this study"),
    out: Path = typer.Option(Path("runs"), "--out", help="output root: the study is written in ROOT/<model>/studies/<name>/"),
    tables: Optional[Path] = typer.Option(None, help="root of the analyzer tables the head sets read (census, "
                                                     "retrieval, head types; default: the output root)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Run a study: every head set x ablation kind x task, with bootstrap confidence intervals."""
    from ...core.executor import make_executor
    from ...core.models import load_model
    from ...studies import load_spec, run_study

    s = load_spec(spec)
    ex = make_executor(executor, s.model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    with ex:
        res = run_study(s, load_model(s.model, device=device, dtype=dtype), out_root=out, resume=resume, overwrite=overwrite, reports=tables,
                        progress=True, executor=ex)
    cols = ["task", "head_set", "seed", "ablation", "value", "ci_low", "ci_high", "delta"]
    human = (f"study {res.name}: ran {res.n_run} conditions, {res.n_resumed} from an earlier run\n"
             + res.table[[c for c in cols if c in res.table.columns]].to_string(index=False, float_format=lambda x: f"{x:.3f}")
             + f"\nreport: {res.files['report']}")
    emit(res.to_json(), as_json, human)
