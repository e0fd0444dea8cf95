"""CLI: ``workbench reproduce [--quick]`` (regenerate the committed reference results, see :mod:`workbench.cli.reproduce`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import app, emit


@app.command()
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="small settings for every step (CI smoke run); writes "
                                                      "runs/reproduce-quick/ unless --out is given"),
    out: Optional[Path] = typer.Option(None, "--out", help="output root (default reports/, or runs/reproduce-quick/ "
                                                           "with --quick)"),
    only: Optional[str] = typer.Option(None, help="comma-separated step-name prefixes to run (e.g. census,sinks)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Regenerate the reference results: every analysis end to end on the embedded models, into reports/."""
    import sys

    from ..reproduce import reproduce as run

    res = run(quick, out, [o.strip() for o in only.split(",") if o.strip()] if only else None,
              log=lambda s: print(s, file=sys.stderr, flush=True))
    human = "\n".join(f"{s['name']:<28} exit {s['rc']}  {s['wall_s']:>8.1f} s" for s in res["steps"])
    emit(res, as_json, human + f"\ntotal {res['wall_s']:.1f} s; wrote {res['root']}")
