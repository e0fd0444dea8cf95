"""CLI: ``workbench sinks`` (sink and massive-activation report) and ``workbench calibrate`` (ACT)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from ...core.errors import WorkbenchError
from ...io.runs import DEFAULT_ROOT
from .retrieval import address_option, executor_option, gpus_option, threads_option, workers_option


def parse_heads(spec: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Parse ``--heads 3.1,7.4`` (the head-set grammar of :mod:`workbench.core.headsets`) into [(3, 1), (7, 4)].

    Raises:
        WorkbenchError: malformed or empty. HeadIndexError: out of range.
    """
    from ...core.headsets import parse_head_set

    out = parse_head_set(spec, n_layers, n_heads, hint="L.H, L.H-L.H or L.*, e.g. --heads 3.1,7.4")
    if not out:
        raise WorkbenchError("--heads is empty: give heads as LAYER.HEAD,... or use --search")
    return out


def _check_checkpoint(path: Path) -> None:
    """A resume file must be UTF-8 JSON Lines of objects (checked before any work starts).

    Raises:
        WorkbenchError: naming the first bad line.
    """
    from ...io.files import read_text_file

    for i, line in enumerate(read_text_file(path, "checkpoint file").splitlines()):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise WorkbenchError(f"checkpoint file {path} line {i + 1} is not a JSON object: give the file an earlier "
                                 "`--search --checkpoint` run wrote, or a new path")


@app.command()
def sinks(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    samples: int = typer.Option(32, min=1, help="64-token windows for Sink_1^0.3"),
    long_samples: int = typer.Option(8, min=1, help="longer windows"),
    long_len: int = typer.Option(512, min=1, help="tokens per longer window"),
    ppl_samples: int = typer.Option(8, min=1, help="held-out windows for the perplexity test"),
    ppl_len: int = typer.Option(256, min=1, help="tokens per perplexity window"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root (writes ROOT/<model>/sinks.json, sinks.html)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Attention sinks (Sink_1^0.3, per-layer profile, ACT hidden sinks, sink tokens) and massive activations
    (dims, layers, tokens; zero-vs-mean perplexity test) on real text."""
    from ...core.models import load_model
    from ...report.sinks_report import sinks_report

    lm = load_model(model, device=device, dtype=dtype)
    lm.spec.check_length(max(64, long_len, ppl_len))
    res = sinks_report(lm, samples, 64, long_samples, long_len, ppl_samples, ppl_len, out_dir=out, progress=True)
    rates = ", ".join(f"{v:.1f}% at {k} tokens" for k, v in res["sink_rate_first_token_by_length"].items())
    ppl = "; ".join(f"{r['intervention']} {r['perplexity']:.2f}" for r in res["perplexity"])
    human = (f"{res['model']}: Sink_1^0.3 {rates} ({res['window_start']})\nmassive dims {res['massive_dims']} from layer "
             f"{res['massive_onset_layer']}; outlier feature dims {res['outlier_feature_dims']}; first-token sinks in most heads from layer {res['sink_onset_layer']}; perplexity {ppl}\nfiles: {res.get('files', {})}")
    emit(res, as_json, human)


@app.command()
def calibrate(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    task: str = typer.Option("pydoc-cloze", help="offline task (pydoc-cloze)"),
    beta: float = typer.Option(0.4, help="ACT scale of the attention on sink tokens"),
    heads: Optional[str] = typer.Option(None, help="heads to calibrate, LAYER.HEAD,..."),
    search: bool = typer.Option(False, "--search", help="select heads automatically on a calibration split"),
    n_cal: int = typer.Option(64, min=1, help="calibration questions (train split)"),
    n_eval: int = typer.Option(200, min=1, help="evaluation questions (heldout split)"),
    max_heads: int = typer.Option(30, min=1, help="cap on screened candidate heads for --search"),
    context_tokens: int = typer.Option(32, min=1, help="tokens of context per question"),
    checkpoint: Optional[Path] = typer.Option(
        None, help="JSON-lines checkpoint of --search (default: ROOT/<model>/act/search-<config hash>.jsonl; a "
                   "named file is resumed when its configuration matches and refused when it does not)"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root (writes ROOT/<model>/act/calibrate.json or search.json)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """ACT attention calibration (Yu et al. 2024) on chosen heads or an automated head search; accuracy with
    95% confidence intervals, baseline vs calibrated, on held-out questions."""
    from ...interventions.act_search import calibrate as run_calibration, check_calibration
    from ...core.models import load_model

    check_calibration(task, heads is not None, search, beta)
    from ...core.executor import make_executor

    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    if checkpoint is not None and checkpoint.exists():
        _check_checkpoint(checkpoint)
    lm = load_model(model, device=device, dtype=dtype)
    chosen = None if heads is None else parse_heads(heads, lm.spec.n_layers, lm.spec.n_heads)
    cfg = {"command": "calibrate", "model": model, "task": task, "beta": beta, "heads": heads, "search": search,
           "n_cal": n_cal, "n_eval": n_eval, "max_heads": max_heads, "context_tokens": context_tokens}
    import contextlib

    with ex if search else contextlib.nullcontext():  # only the search runs cells on the executor
        res = run_calibration(lm, task, beta, chosen, n_eval=n_eval, context_tokens=context_tokens, search=search,
                              n_cal=n_cal, max_heads=max_heads, checkpoint=checkpoint, executor=ex, out=out, config=cfg)
    e = res["evaluation"]
    human = (f"{task} ({e['n']} held-out questions), beta {beta}, heads {res['heads'] or 'none'}:\n"
             f"baseline   {e['baseline_accuracy']:.3f} (95% CI {e['baseline_ci95'][0]:.3f}-{e['baseline_ci95'][1]:.3f})\n"
             f"calibrated {e['calibrated_accuracy']:.3f} (95% CI {e['calibrated_ci95'][0]:.3f}-{e['calibrated_ci95'][1]:.3f})\n"
             f"difference {e['difference']:+.3f} (bootstrap 95% CI {e['difference_ci95'][0]:+.3f}..{e['difference_ci95'][1]:+.3f}), "
             f"McNemar p = {e['mcnemar_p']:.3g}")
    emit(res, as_json, human)
