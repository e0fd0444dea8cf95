"""``workbench dashboard``: start the Streamlit dashboard (dashboards/app.py) with this Python."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import app
from ...core.errors import WorkbenchError


def dashboard_command(port: int = 8501, headless: bool = False, address: str = "127.0.0.1",
                      trace: Optional[Path] = None, census: Optional[Path] = None, model: Optional[str] = None,
                      max_upload_mb: int | None = None) -> list[str]:
    """The ``streamlit run`` command line for the dashboard (used by the CLI and the browser test).

    Raises:
        WorkbenchError: the dashboard app file is missing from this installation.
    """
    from dashboards import APP_PATH
    from dashboards.sources import MAX_UPLOAD_MB

    if not APP_PATH.exists():
        raise WorkbenchError(f"dashboard app {APP_PATH} is missing: reinstall the workbench from a full checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(port),
           "--server.address", address, "--server.headless", "true" if headless else "false",
           "--server.maxUploadSize", str(max_upload_mb or MAX_UPLOAD_MB),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    extra = []
    if trace is not None:
        extra += ["--trace", str(trace)]
    if census is not None:
        extra += ["--census", str(census)]
    if model:
        extra += ["--model", model]
    return cmd + (["--"] + extra if extra else [])


@app.command()
def dashboard(
    port: int = typer.Option(8501, min=1, max=65535, help="port to serve on"),
    headless: bool = typer.Option(False, "--headless", help="do not open a browser"),
    address: str = typer.Option("127.0.0.1", help="address to bind (default: this machine only)"),
    trace: Optional[Path] = typer.Option(None, help="open this saved trace directory"),
    census: Optional[Path] = typer.Option(None, help="open this census directory (reports/<model>)"),
    model: Optional[str] = typer.Option(None, help="preselect this preset or local checkpoint path"),
) -> None:
    """Start the Streamlit dashboard: browse heads of a trace, census tables, interventions."""
    for p, what in ((trace, "trace"), (census, "census")):
        if p is not None and not p.exists():
            raise WorkbenchError(f"--{what} {p} does not exist: give a {what} directory")
        if p is not None and not p.is_dir():
            raise WorkbenchError(f"--{what} {p} is not a directory: give the {what} directory, not a file in it")
    if model:
        from ...core.errors import UnknownModelError
        from ...core.presets import PRESETS

        if model not in PRESETS and not Path(model).expanduser().is_dir():
            raise UnknownModelError(f"unknown model {model!r}: --model preselects a preset ({', '.join(sorted(PRESETS))}) "
                                    "or a local checkpoint directory")
    cmd = dashboard_command(port, headless, address, trace, census, model)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if os.name == "posix":
        # become the Streamlit server, so that signals (Ctrl-C, terminate) reach it directly
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0)
