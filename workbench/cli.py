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
from typing import Optional

import typer

from .errors import WorkbenchError
from .runs import DEFAULT_ROOT, run_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Attention-head workbench: sinks, retrieval heads, vision-aware heads, interventions.")


def emit(obj: dict, as_json: bool, human: str | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or a human summary."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
    else:
        typer.echo(human if human is not None else json.dumps(obj, indent=1, default=str))


def parse_indices(spec: str | None, n: int, what: str) -> list[int] | None:
    """Parse ``"all"``, ``"3"``, ``"0,2,5-7"`` into indices below ``n`` (None for all).

    Raises:
        HeadIndexError: an index is out of range.
    """
    from .errors import HeadIndexError

    if spec is None or spec == "all":
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise HeadIndexError(f"{what} {bad[0]} is out of range: the model has {what}s 0..{n - 1}")
    return out


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List the offline presets and whether their converted weights are cached."""
    from .models import cache_dir, model_table

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
    budget_mb: float = typer.Option(2048, help="memory budget for attention maps, MiB"),
    stats: str = typer.Option("received,entropy,distance,top_key,top_prob",
                              help="statistics to record, comma-separated"),
    sample_rows: Optional[int] = typer.Option(
        None, help="estimate received attention from this many sampled query rows, with an error bound "
                   "(only when no per-query statistic is recorded: use --stats received)"),
    html: Optional[Path] = typer.Option(None, help="write an HTML attention plot of the window"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Trace a prompt: sink statistics, entropy, distance for all heads; maps for a window."""
    from .models import load_model
    from .tracer import ALL_STATS, Tracer

    if (prompt is None) == (file is None):
        raise WorkbenchError("give exactly one of --prompt TEXT or --file PATH")
    if file is not None and not file.exists():
        raise WorkbenchError(f"prompt file {file} does not exist")
    text = prompt if prompt is not None else file.read_text()
    chosen = tuple(x.strip() for x in stats.split(",") if x.strip())
    if set(chosen) - set(ALL_STATS):
        raise WorkbenchError(f"unknown statistics {sorted(set(chosen) - set(ALL_STATS))}: choose from {', '.join(ALL_STATS)}")
    if sample_rows is not None and (sample_rows < 1 or set(chosen) != {"received"}):
        raise WorkbenchError("--sample-rows needs a positive number of rows and --stats received "
                             "(per-query statistics need every row)")
    lm = load_model(model)
    out = run_dir(out, lm.spec.name, "trace")
    ids = lm.encode(text, chat=chat)
    win = None
    if window:
        a, b = window.split(":")
        win = (int(a), min(int(b), ids.shape[1]))
    tr = Tracer(lm, layers=parse_indices(layers, lm.spec.n_layers, "layer"),
                heads=parse_indices(heads, lm.spec.n_heads, "head"), stats=chosen, pattern_window=win, z=z,
                resid_pre=resid, memory_budget_bytes=int(budget_mb * 2**20), received_sample_rows=sample_rows)
    t = tr.run(ids)
    from .provenance import collect

    prov = collect(lm, {"command": "trace", "model": model, "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "chat": chat, "layers": layers, "heads": heads, "window": window, "z": z, "resid": resid,
                        "stats": list(chosen), "sample_rows": sample_rows})
    t.save(out, provenance=prov)
    result = {"trace": str(out), "n_tokens": int(ids.shape[1]), "arrays": {k: list(v.shape) for k, v in t.arrays.items()}}
    if html is not None and win is not None:
        from .viz import attention_map, write_html

        figs = [(f"layer {layer} head {h}", attention_map(t["pattern"][li, 0, hi], t.meta["token_strings"][0], win[0],
                                                          title=f"layer {layer} head {h}"))
                for li, layer in enumerate(t.layers[:2]) for hi, h in enumerate(t.heads[:3])]
        write_html(figs, html, f"Attention: {lm.spec.name}", prov=prov)
        result["html"] = str(html)
    emit(result, as_json, f"wrote {out} ({ids.shape[1]} tokens)")


@app.command()
def census(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    samples: int = typer.Option(8, help="number of text windows"),
    seq_len: int = typer.Option(512, help="tokens per window"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root (the census is written in ROOT/<model>/)"),
    sections: Optional[str] = typer.Option(None, help="comma-separated sections (default all)"),
    retrieval_from: Optional[Path] = typer.Option(
        None, help="take retrieval scores from this saved sweep (`workbench retrieval`, same weights) instead of "
                   "the census's own quick needle sweep"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The head census: per-head statistics over real text, written to ROOT/<model>/ (default runs/)."""
    from .census import run_census
    from .models import load_model

    lm = load_model(model)
    res = run_census(lm, n_samples=samples, seq_len=seq_len, out_dir=out,
                     sections=sections.split(",") if sections else None, progress=True,
                     options={"retrieval_from": str(retrieval_from)} if retrieval_from else None)
    top = res.heads.sort_values("first_token_mass", ascending=False).head(5)
    from .provenance import describe

    shown = {k: v for k, v in res.summary.items() if k != "provenance"}
    human = (f"census of {res.model}: {len(res.heads)} heads; files: {res.files.get('html')}\n"
             + json.dumps(shown, indent=1) + "\nheads with most first-token mass:\n" + top.to_string(index=False)
             + "\nprovenance: " + describe(res.summary.get("provenance")))
    emit(res.to_json(), as_json, human)


# Modules that add commands to ``app`` when imported (each analyzer appends its own).
COMMAND_MODULES: list[str] = [
    "workbench.commands.sinks",
    "workbench.commands.retrieval",
    "workbench.commands.circuits",
    "workbench.commands.study",
    "workbench.commands.probes",
    "workbench.commands.dashboard",
    "workbench.commands.vision",
    "workbench.commands.reproduce",
]


def _load_commands() -> None:
    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app, turning WorkbenchError into a one-line message and exit 2."""
    _load_commands()
    # command modules register on workbench.cli.app; under `python -m workbench.cli` this module is __main__
    from workbench.cli import app as registered_app

    try:
        registered_app(args=argv, standalone_mode=False)
    except WorkbenchError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    except (typer.Exit,) as e:
        return e.exit_code
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            return 2
        if isinstance(err, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    # `python -m workbench.cli`: run the importable module's app, on which command modules register
    from workbench.cli import main as _main

    sys.exit(_main())
