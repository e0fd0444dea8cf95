"""The ``workbench`` command line (typer).

Every analysis command accepts ``--json`` and then prints exactly one JSON object on stdout
(progress bars and logs go to stderr). Bad input exits with status 2 and a one-line
``error: ...`` on stderr.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

from ..core.errors import WorkbenchError
from ..core.headsets import parse_indices  # noqa: F401  (the trace command's --layers/--heads; re-exported)
from ..core.registry import Registry
from ..io.runs import DEFAULT_ROOT, run_dir
from ..io.files import read_text_file  # noqa: F401  (re-exported for command modules)
from ..report.trace_page import HTML_MAX_MAPS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Attention-head workbench: sinks, retrieval heads, vision-aware heads, interventions.")

# every command that loads a model takes these two (see workbench.core.models.load_model)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
DTYPE_OPTION = typer.Option("auto", "--dtype",
                            help="auto (float32 on CPU, the checkpoint's dtype on GPU), float32, bfloat16 or float16")


def emit(obj: dict, as_json: bool, human: str | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or a human summary."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        typer.echo(human if human is not None else json.dumps(obj, indent=1, default=str))


def check_prompt(text: str, what: str = "prompt") -> str:
    """Raise WorkbenchError if ``text`` is empty or only whitespace; returns it."""
    if not text.strip():
        raise WorkbenchError(f"the {what} is empty: give some text (--prompt TEXT or --file PATH)")
    return text


def parse_window(spec: str, n_tokens: int) -> tuple[int, int]:
    """Parse ``START:STOP`` into a query window inside a prompt of ``n_tokens`` (STOP capped at it).

    Raises:
        WorkbenchError: malformed, empty, or starting past the prompt.
    """
    import re

    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise WorkbenchError(f"cannot read --window {spec!r}: give START:STOP query positions with START < STOP, e.g. 0:64")
    a, b = int(m.group(1)), int(m.group(2))
    if a >= n_tokens:
        raise WorkbenchError(f"--window {spec} starts past the prompt's {n_tokens} tokens: choose START < {n_tokens}")
    return a, min(b, n_tokens)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List the offline presets and whether their converted weights are cached."""
    from ..core.models import cache_dir
    from ..core.presets import model_table

    rows = model_table()
    human = "\n".join(f"{r['name']:<16} {'cached' if r['cached'] else 'not cached':<11} {r['description']}" for r in rows)
    emit({"presets": rows, "cache_dir": str(cache_dir())}, as_json, human + f"\ncache: {cache_dir()}")


@app.command()
def trace(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    prompt: Optional[str] = typer.Option(None, help="prompt text"),
    file: Optional[Path] = typer.Option(None, help="read the prompt from this text file"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root: the trace is saved in ROOT/<model>/trace/"),
    layers: Optional[str] = typer.Option(None, help="layers, e.g. 0,3,5-7 (default all)"),
    heads: Optional[str] = typer.Option(None, help="heads, e.g. 0,4 (default all)"),
    window: Optional[str] = typer.Option(None, help="query window for full attention maps, START:STOP"),
    z: bool = typer.Option(False, "--z", help="record head outputs z"),
    resid: bool = typer.Option(False, "--resid", help="record the residual stream entering each layer"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the chat template"),
    budget_mb: float = typer.Option(2048, min=1, help="memory budget for attention maps, MiB"),
    stats: str = typer.Option("received,entropy,distance,top_key,top_prob",
                              help="statistics to record, comma-separated"),
    sample_rows: Optional[int] = typer.Option(
        None, help="estimate received attention from this many sampled query rows, with an error bound "
                   "(only when no per-query statistic is recorded: use --stats received)"),
    html: Optional[Path] = typer.Option(None, help="write an HTML attention plot of the window"),
    max_maps: int = typer.Option(HTML_MAX_MAPS, "--max-maps", min=1,
                                 help="at most this many attention maps on the --html page (traced layers x heads)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Trace a prompt: sink statistics, entropy, distance for all heads; maps for a window."""
    from ..core.models import load_model
    from ..core.tracer import ALL_STATS, Tracer
    from ..report.trace_page import ranges, write_trace_html

    if (prompt is None) == (file is None):
        raise WorkbenchError("give exactly one of --prompt TEXT or --file PATH")
    text = check_prompt(prompt if prompt is not None else read_text_file(file, "prompt file"))
    chosen = tuple(x.strip() for x in stats.split(",") if x.strip())
    if set(chosen) - set(ALL_STATS):
        raise WorkbenchError(f"unknown statistics {sorted(set(chosen) - set(ALL_STATS))}: choose from {', '.join(ALL_STATS)}")
    if sample_rows is not None and (sample_rows < 1 or set(chosen) != {"received"}):
        raise WorkbenchError("--sample-rows needs a positive number of rows and --stats received "
                             "(per-query statistics need every row)")
    lm = load_model(model, device=device, dtype=dtype)
    out = run_dir(out, lm.spec.name, "trace")
    ids = lm.encode(text, chat=chat)
    n_tok = int(ids.shape[1])
    notes: list[str] = []
    win = None
    if window is not None:
        win = parse_window(window, n_tok)  # malformed or past the prompt: a one-line error
        if win[1] < int(window.split(":")[1]):
            notes.append(f"--window {window} clipped to {win[0]}:{win[1]} (the prompt has {n_tok} tokens)")
    elif html is not None:
        win = (max(0, n_tok - HTML_DEFAULT_QUERIES), n_tok)
        notes.append(f"--html without --window: maps of the last {win[1] - win[0]} queries ({win[0]}:{win[1]})")
    tr = Tracer(lm, layers=parse_indices(layers, lm.spec.n_layers, "layer"),
                heads=parse_indices(heads, lm.spec.n_heads, "head"), stats=chosen, pattern_window=win, z=z,
                resid_pre=resid, memory_budget_bytes=int(budget_mb * 2**20), received_sample_rows=sample_rows)
    t = tr.run(ids)
    from ..io.provenance import collect

    prov = collect(lm, {"command": "trace", "model": model, "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "chat": chat, "layers": layers, "heads": heads, "window": window, "z": z, "resid": resid,
                        "stats": list(chosen), "sample_rows": sample_rows})
    t.save(out, provenance=prov)
    result = {"trace": str(out), "n_tokens": n_tok, "arrays": {k: list(v.shape) for k, v in t.arrays.items()}}
    if html is not None:
        result["html"] = str(html)
        result["html_maps"] = write_trace_html(t, lm.spec.name, html, notes, prov, max_maps=max_maps)
    if notes:
        result["notes"] = notes
        if as_json:
            for note in notes:
                typer.echo(f"note: {note}", err=True)
    human = "\n".join([f"wrote {out}: {n_tok} tokens, layers {ranges(t.layers)}, heads {ranges(t.heads)}; arrays "
                        + ", ".join(f"{k} {tuple(v.shape)}" for k, v in t.arrays.items() if k != "tokens")]
                       + ([f"wrote {html}: {result['html_maps']}"] if html is not None else [])
                       + [f"note: {n}" for n in notes])
    emit(result, as_json, human)


HTML_DEFAULT_QUERIES = 64  # `trace --html` without --window maps the last this many queries
@app.command()
def census(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    samples: int = typer.Option(8, min=1, help="number of text windows"),
    seq_len: int = typer.Option(512, min=1, help="tokens per window"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root (the census is written in ROOT/<model>/)"),
    sections: Optional[str] = typer.Option(None, help="comma-separated sections (default all)"),
    retrieval_from: Optional[Path] = typer.Option(
        None, help="take retrieval scores from this saved sweep (`workbench retrieval`, same weights) instead of "
                   "the census's own quick needle sweep"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The head census: per-head statistics over real text, written to ROOT/<model>/ (default runs/)."""
    from ..report.census import run_census
    from ..core.models import load_model

    lm = load_model(model, device=device, dtype=dtype)
    res = run_census(lm, n_samples=samples, seq_len=seq_len, out_dir=out,
                     sections=sections.split(",") if sections else None, progress=True,
                     options={"retrieval_from": str(retrieval_from)} if retrieval_from else None)
    emit(res.to_json(), as_json, census_summary(res))


def census_summary(res) -> str:
    """A short human summary of a census: where the files are, each section's scalar results, top sink heads,
    and the run's provenance."""
    from ..io.provenance import describe
    from ..report.viz import format_head, format_number

    s = res.summary
    lines = [f"census of {res.model}: {len(res.heads)} heads over {s.get('n_samples')} windows x {s.get('seq_len')} "
             f"tokens of {s.get('text', 'text')}",
             f"files: {res.files.get('html', '(none written)')} (+ heads.parquet/.csv/.json, summary.json)"]
    for name, sec in s.items():
        if not isinstance(sec, dict):
            continue
        if "skipped" in sec:
            lines.append(f"  {name}: skipped ({sec['skipped']})")
            continue
        vals = [f"{k} {format_number(v)}" for k, v in sec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if vals:
            lines.append(f"  {name}: " + "; ".join(vals))
    if "first_token_mass" in res.heads:
        top = res.heads.sort_values("first_token_mass", ascending=False).head(5)
        lines.append("heads with most first-token mass (layer.head s_0): "
                     + ", ".join(f"{format_head(a, b)} {v:.3f}" for a, b, v in zip(top.layer, top["head"], top.first_token_mass)))
    lines.append("provenance: " + describe(s.get("provenance")))
    lines.append("full result: --json")
    return "\n".join(lines)


# The command modules beside the commands above, in help order; each declares its commands on ``app``
# (typer's decorators), so :func:`_load_commands` imports them all before the app runs.
COMMANDS: Registry[ModuleType] = Registry("command module")
for _name in ("sinks", "retrieval", "circuits", "study", "probes", "dashboard", "vision", "reproduce"):
    COMMANDS.register(_name, lazy=f"workbench.cli.commands.{_name}")


def _load_commands() -> None:
    """Import every module in :data:`COMMANDS`, so that all commands are on ``app``."""
    for name in COMMANDS.names():
        COMMANDS.get(name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _usage_line(err: Exception) -> str:
    """A click/typer usage error as one line: the problem, then where to look for the fix."""
    ctx = getattr(err, "ctx", None)
    path = "workbench"
    if ctx is not None and getattr(ctx, "command_path", None):
        path = "workbench" + ctx.command_path.split("cli", 1)[-1] if "python" in ctx.command_path else ctx.command_path
    msg = _one_line(err.format_message()).rstrip(".")
    return f"error: {msg}: see `{path} --help`"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app; bad input (a :class:`WorkbenchError` or a usage error) prints one
    ``error: ...`` line on stderr and returns 2, never a traceback. Unexpected exceptions print one line
    too and return 1 (set ``WORKBENCH_TRACEBACK=1`` to see the traceback)."""
    import os

    _load_commands()
    # command modules register on workbench.cli.app; under `python -m workbench.cli` this module is __main__
    from workbench.cli import app as registered_app

    try:
        registered_app(args=argv, standalone_mode=False, prog_name="workbench")
    except WorkbenchError as err:
        typer.echo(f"error: {_one_line(err)}", err=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        return 130
    except Exception as err:
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):  # click / typer usage errors
            typer.echo(_usage_line(err), err=True)
            return 2
        if os.environ.get("WORKBENCH_TRACEBACK"):
            raise
        typer.echo(f"error: internal error {type(err).__name__}: {_one_line(err)[:300]} (a bug: please report it; "
                   "WORKBENCH_TRACEBACK=1 shows the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    # `python -m workbench.cli`: run the importable module's app, on which command modules register
    from workbench.cli import main as _main

    sys.exit(_main())
