"""CLI: ``workbench retrieval`` (the retrieval-head sweep), ``workbench ablate`` (needle accuracy with
masked heads) and ``workbench masking-test`` (top-K vs random-K table)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from ...core.errors import WorkbenchError
from ...io.runs import DEFAULT_ROOT
from ...tasks.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS

LENGTHS = ",".join(map(str, DEFAULT_LENGTHS))  # one needle grid for retrieval, ablate and masking-test
DEPTHS = ",".join(map(str, DEFAULT_DEPTHS))


def _ints(s: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError(f"cannot read --{what} {s!r}: give comma-separated positive integers, e.g. 256,512,1024") from None
    if not vals or min(vals) < 1:
        raise WorkbenchError(f"--{what} {s!r}: give comma-separated positive integers, e.g. 256,512,1024")
    return vals


def _floats(s: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError(f"cannot read --{what} {s!r}: give comma-separated numbers, e.g. 0,25,50,75,100") from None
    if not vals or not all(0.0 <= v <= 100.0 for v in vals):
        raise WorkbenchError(f"--{what} {s!r}: each depth is a percentage in 0..100, e.g. 0,25,50,75,100")
    return vals


def _check_lengths(lm, lengths: list[int]) -> list[int]:
    """Raise ContextTooLongError if a context length exceeds the model's window."""
    for n in lengths:
        lm.spec.check_length(n)
    return lengths


def _needles(file: Optional[Path], n: Optional[int]):
    from ...tasks.needle import load_needles

    needles = load_needles(file)
    if n is not None:
        if not 1 <= n <= len(needles):
            raise WorkbenchError(f"--needles {n}: choose 1..{len(needles)}")
        needles = needles[:n]
    return needles


EXECUTOR_HELP = "where cells run: local (this process, serial) or ray (Ray actors, each loading the model once)"


def executor_option():
    return typer.Option("local", "--executor", help=EXECUTOR_HELP)


def address_option():
    return typer.Option(None, "--address", help="Ray cluster HOST:PORT or auto (default: start a local cluster)")


def workers_option():
    return typer.Option(2, "--workers", help="Ray workers (actors), each with its own copy of the model")


def gpus_option():
    return typer.Option(0.0, "--gpus-per-worker", help="GPUs per Ray worker (0: CPU)")


def threads_option():
    return typer.Option(None, "--threads", help="torch threads per worker (default: 1 per Ray worker; "
                                                 "the process setting locally)")


def _haystack(file: Optional[Path]) -> Optional[str]:
    from ...io.files import read_text_file

    if file is None:
        return None
    text = read_text_file(file, "haystack file")
    if not text.strip():
        raise WorkbenchError(f"haystack file {file} is empty: give a text file of prose")
    return text


@app.command()
def retrieval(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    lengths: str = typer.Option(LENGTHS, help="context lengths in tokens, comma-separated (the default "
                                               "starts where the retrieval-head set is stable; README)"),
    depths: str = typer.Option(DEPTHS, help="needle depths in percent, comma-separated"),
    needles: Optional[int] = typer.Option(None, min=1, help="use the first N needles (default all)"),
    needle_file: Optional[Path] = typer.Option(None, help="JSON Lines needles: name, sentence, question, answer"),
    haystack: Optional[Path] = typer.Option(None, help="haystack text file (default: pydoc_data.topics prose)"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root: the sweep is written in ROOT/<model>/retrieval/"),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep in the run folder, skipping finished tests "
                                                        "(refused, naming the fields, if its configuration differs)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Retrieval-head detection (Wu et al. 2024): needle sweep, per-head retrieval scores, figures."""
    from ...core.executor import make_executor
    from ...core.models import load_model
    from ...studies.retrieval_sweep import default_out, run_sweep, save

    lens, deps, ndl, hay = _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(needle_file, needles), \
        _haystack(haystack)
    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    out = default_out(lm.spec.name, out)
    with ex:
        res = run_sweep(lm, _check_lengths(lm, lens), deps, ndl, out, resume=resume, haystack=hay, executor=ex)
    save(res, out, lm.spec.name)
    s = res.summary
    top = res.heads.sort_values("score", ascending=False).head(10)
    human = (f"{s['n_correct']}/{s['n_tests']} tests correct; {s['n_retrieval_heads']} retrieval heads "
             f"({100 * s['fraction_retrieval_heads']:.1f}% of {s['n_heads']}); files in {out}\n"
             + top[["layer", "head", "score"]].to_string(index=False))
    emit(res.to_json(), as_json, human)


def _scores(path: Optional[Path], lm, required: bool, root: Path = DEFAULT_ROOT):
    """Saved retrieval scores: ``path`` if given, else the run folder's; checked to be of ``lm``'s weights."""
    from ...studies.retrieval_sweep import default_out, load_scores

    p = path or default_out(lm.spec.name, root)
    if not required and not Path(p).exists():
        return None
    return load_scores(p, lm)


@app.command()
def ablate(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    heads: str = typer.Option(..., help="retrieval:top-K, random:K or LAYER.HEAD,LAYER.HEAD,..."),
    kind: str = typer.Option("uniform", help="ablation kind: uniform (Wu et al.), zero or mean"),
    task: str = typer.Option("niah", help="evaluation task (niah: needle-in-a-haystack accuracy)"),
    phase: str = typer.Option("decode", help="decode (paper), all, or prefill"),
    seed: int = typer.Option(0, help="seed for random:K"),
    lengths: str = typer.Option(LENGTHS, help="context lengths in tokens (default: the retrieval sweep's)"),
    depths: str = typer.Option(DEPTHS, help="needle depths in percent (default: the retrieval sweep's)"),
    needles: Optional[int] = typer.Option(None, min=1, help="use the first N needles"),
    scores: Optional[Path] = typer.Option(None, help="saved retrieval scores (default ROOT/<model>/retrieval)"),
    baseline: bool = typer.Option(True, help="also run without ablation"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root (scores are read from, and the result "
                                                         "written to, ROOT/<model>/retrieval/)"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Needle accuracy with chosen heads ablated (and the unablated baseline)."""
    # one Python call does the work: workbench.studies.retrieval_runs.ablate_needles
    import pandas as pd

    from ...core.models import load_model
    from ...interventions.base import PHASES
    from ...studies.retrieval_masking import check_kinds
    from ...studies.retrieval_runs import SCORED_SELECTION, ablate_needles

    if task != "niah":
        raise WorkbenchError(f"unknown task {task!r}: only niah is available")
    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")
    check_kinds([kind])
    lens, deps, ndl = _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(None, needles)
    from ...core.executor import make_executor

    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    _check_lengths(lm, lens)
    sc = _scores(scores, lm, True, out) if SCORED_SELECTION.fullmatch(heads) else None
    cfg = {"command": "ablate", "model": model, "heads": heads, "kind": kind, "phase": phase, "seed": seed,
           "lengths": lengths, "depths": depths, "needles": needles, "baseline": baseline}
    with ex:
        result = ablate_needles(lm, heads, ndl, lens, deps, kind, phase, seed, sc, baseline, executor=ex, out=out,
                                config=cfg)
    g = result["grid"]
    grid = pd.DataFrame(g["accuracy"], index=pd.Index(g["depths"], name="depth"), columns=pd.Index(g["lengths"], name="length"))
    human = (f"{kind} ablation of {len(result['heads'])} heads ({phase}): accuracy {result['accuracy']:.3f}"
             + (f" (baseline {result['baseline_accuracy']:.3f})" if baseline else "") + f"\n{grid.to_string()}")
    emit(result, as_json, human)


@app.command("masking-test")
def masking_test(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    ks: str = typer.Option("5,10,20", help="numbers of heads to mask"),
    seeds: int = typer.Option(3, min=1, help="random-K seeds"),
    kinds: str = typer.Option("uniform,zero,mean", help="ablation kinds"),
    phase: str = typer.Option("decode", help="decode (paper), all, or prefill"),
    lengths: str = typer.Option(LENGTHS, help="context lengths in tokens (default: the retrieval sweep's)"),
    depths: str = typer.Option(DEPTHS, help="needle depths in percent (default: the retrieval sweep's)"),
    needles: Optional[int] = typer.Option(None, min=1, help="use the first N needles"),
    scores: Optional[Path] = typer.Option(None, help="saved retrieval scores (default ROOT/<model>/retrieval)"),
    out: Path = typer.Option(DEFAULT_ROOT, "--out", help="output root: the table is written in ROOT/<model>/retrieval/"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    executor: str = executor_option(),
    address: Optional[str] = address_option(),
    workers: int = workers_option(),
    gpus_per_worker: float = gpus_option(),
    threads: Optional[int] = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Causal test: needle accuracy with the top-K retrieval heads vs K random non-retrieval heads masked."""
    # one Python call does the work: workbench.studies.retrieval_runs.masking_test
    import pandas as pd

    from ...core.models import load_model
    from ...interventions.base import PHASES
    from ...studies.retrieval_masking import check_kinds
    from ...studies.retrieval_runs import masking_test as run_masking_test

    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")
    kind_list = check_kinds([k.strip() for k in kinds.split(",") if k.strip()])
    k_list, lens, deps, ndl = _ints(ks, "ks"), _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(None, needles)
    from ...core.executor import make_executor

    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    _check_lengths(lm, lens)
    sc = _scores(scores, lm, True, out)
    cfg = {"command": "masking-test", "model": model, "ks": ks, "seeds": seeds, "kinds": kind_list, "phase": phase,
           "lengths": lengths, "depths": depths, "needles": needles}
    with ex:
        result = run_masking_test(lm, sc, ndl, lens, deps, k_list, seeds, kind_list, phase, executor=ex, out=out,
                                  config=cfg)
    result.pop("tests")
    emit(result, as_json, pd.DataFrame(result["table"]).to_string(index=False))
