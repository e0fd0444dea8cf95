"""CLI: ``workbench study run SPEC`` (scripted head-ablation studies)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..cli import DEVICE_OPTION, DTYPE_OPTION, app, emit

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Head-ablation studies from a TOML spec (see studies/*.toml).")
app.add_typer(study_app, name="study")


@study_app.command("run")
def run(
    spec: Path = typer.Argument(..., help="study spec (TOML)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its rows.jsonl"),
    overwrite: bool = typer.Option(False, "--overwrite", help="discard earlier results of this study"),
    out: Path = typer.Option(Path("reports/studies"), help="studies folder (a <name>/ folder is written in it)"),
    reports: Path = typer.Option(Path("reports"), help="folder of analyzer tables (census, retrieval, head types)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Run a study: every head set x ablation kind x task, with bootstrap confidence intervals."""
    from ..models import load_model
    from ..studies import load_spec, run_study

    s = load_spec(spec)
    lm = load_model(s.model, device=device, dtype=dtype)
    res = run_study(s, out_root=out, resume=resume, overwrite=overwrite, reports=reports, progress=True, lm=lm)
    cols = ["task", "head_set", "seed", "ablation", "value", "ci_low", "ci_high", "delta"]
    human = (f"study {res.name}: ran {res.n_run} conditions, {res.n_resumed} from an earlier run\n"
             + res.table[[c for c in cols if c in res.table.columns]].to_string(index=False, float_format=lambda x: f"{x:.3f}")
             + f"\nreport: {res.files['report']}")
    emit(res.to_json(), as_json, human)
