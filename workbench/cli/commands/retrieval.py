"""CLI: ``workbench retrieval`` (the retrieval-head sweep), ``workbench ablate`` (needle accuracy with
masked heads) and ``workbench masking-test`` (top-K vs random-K table)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DEVICE_OPTION, DTYPE_OPTION, app, emit
from ...core.errors import WorkbenchError
from ...io.runs import DEFAULT_ROOT


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
    lengths: str = typer.Option("1024,2048,4096", help="context lengths in tokens, comma-separated (the default "
                                                       "starts where the retrieval-head set is stable; README)"),
    depths: str = typer.Option("0,20,40,60,80,100", help="needle depths in percent, comma-separated"),
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
    lengths: str = typer.Option("512,1024,2048", help="context lengths in tokens"),
    depths: str = typer.Option("0,25,50,75,100", help="needle depths in percent"),
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
    from ...interventions import HeadAblation
    from ...interventions.base import PHASES
    from ...core.models import load_model
    from ...studies.retrieval_masking import Condition, accuracy_grids, check_kinds, fit_all_means, run_niah, select_heads
    from ...studies.retrieval_sweep import default_out

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
    import re

    needs_scores = re.fullmatch(r"\s*(retrieval:top-?\d+|random:\d+)\s*", heads) is not None
    sc = _scores(scores, lm, True, out) if needs_scores else None
    sel = select_heads(heads, lm.spec.n_layers, lm.spec.n_heads, sc, seed)
    means = fit_all_means(lm) if kind == "mean" else None
    if means is not None:
        means = {h: means[h] for h in sel}
    abl = HeadAblation(sel, kind, phase, means).validate(lm.spec)
    conds = ([Condition("baseline", "none", 0, None, None, None)] if baseline else []) + \
        [Condition(f"{kind}/{heads}", "ablated", len(sel), seed, kind, abl)]
    with ex:
        df = run_niah(lm, conds, lens, deps, ndl, executor=ex)
    ab = df[df.selection == "ablated"]
    grid = accuracy_grids(ab)
    g = next(iter(grid.values()))
    result = {"model": lm.spec.name, "heads": [list(h) for h in sel], "kind": kind, "phase": phase, "task": task,
              "accuracy": float(ab.correct.mean()), "n_tests": int(len(ab)),
              "grid": {"depths": [float(d) for d in g.index], "lengths": [int(c) for c in g.columns],
                       "accuracy": g.values.tolist()}}
    if baseline:
        result["baseline_accuracy"] = float(df[df.selection == "none"].correct.mean())
    from ...io.provenance import collect, write_json

    cfg = {"command": "ablate", "model": model, "heads": heads, "selected": result["heads"], "kind": kind,
           "phase": phase, "seed": seed, "lengths": lengths, "depths": depths, "needles": needles, "baseline": baseline,
           "scores_config_hash": (sc.attrs.get("provenance") or {}).get("config_hash") if sc is not None else None}
    d = default_out(lm.spec.name, out)
    name = f"ablate_{kind}_{phase}_" + "".join(c if c.isalnum() else "-" for c in heads) + ".json"
    result["file"] = str(write_json(result, d / name, collect(lm, cfg, seed)))
    human = (f"{kind} ablation of {len(sel)} heads ({phase}): accuracy {result['accuracy']:.3f}"
             + (f" (baseline {result['baseline_accuracy']:.3f})" if baseline else "") + f"\n{g.to_string()}")
    emit(result, as_json, human)


@app.command("masking-test")
def masking_test(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    ks: str = typer.Option("5,10,20", help="numbers of heads to mask"),
    seeds: int = typer.Option(3, min=1, help="random-K seeds"),
    kinds: str = typer.Option("uniform,zero,mean", help="ablation kinds"),
    phase: str = typer.Option("decode", help="decode (paper), all, or prefill"),
    lengths: str = typer.Option("512,1024,2048", help="context lengths in tokens"),
    depths: str = typer.Option("0,25,50,75,100", help="needle depths in percent"),
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
    import json

    from ...interventions.base import PHASES
    from ...core.models import load_model
    from ...studies.retrieval_masking import build_conditions, check_kinds, fit_all_means, masking_figures, masking_table, run_niah
    from ...studies.retrieval_sweep import default_out
    from ...report.viz import write_html

    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")
    kind_list = check_kinds([k.strip() for k in kinds.split(",") if k.strip()])
    k_list, lens, deps, ndl = _ints(ks, "ks"), _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(None, needles)
    from ...core.executor import make_executor

    ex = make_executor(executor, model, workers, threads, gpus_per_worker, address, device=device, dtype=dtype)
    lm = load_model(model, device=device, dtype=dtype)
    _check_lengths(lm, lens)
    sc = _scores(scores, lm, True, out)
    means = fit_all_means(lm) if "mean" in kind_list else None
    conds = build_conditions(lm, sc, k_list, list(range(seeds)), kind_list, phase, means)
    with ex:
        df = run_niah(lm, conds, lens, deps, ndl, executor=ex)
    table = masking_table(df)
    d = default_out(lm.spec.name, out)
    d.mkdir(parents=True, exist_ok=True)
    tag = f"masking_{phase}"
    from ...io.provenance import collect, write_csv, write_json, write_parquet

    prov = collect(lm, {"command": "masking-test", "model": model, "ks": ks, "seeds": seeds, "kinds": kind_list,
                        "phase": phase, "lengths": lengths, "depths": depths, "needles": needles,
                        "scores_config_hash": (sc.attrs.get("provenance") or {}).get("config_hash")})
    write_csv(df, d / f"{tag}_tests.csv", prov)
    write_csv(table, d / f"{tag}.csv", prov)
    write_parquet(table, d / f"{tag}.parquet", prov)
    write_json({"model": lm.spec.name, "phase": phase, "table": table.to_dict(orient="records")}, d / f"{tag}.json", prov)
    write_html(masking_figures(df), d / f"{tag}.html", f"Retrieval-head masking test ({phase}): {lm.spec.name}",
               "Needle accuracy (ROUGE-1 recall > 0.5) with the top-K retrieval heads or K random non-retrieval "
               "heads ablated; random-K grids average over seeds.", provenance=prov)
    result = {"model": lm.spec.name, "phase": phase, "table": table.to_dict(orient="records"),
              "accuracy": {c: float(g.correct.mean()) for c, g in df.groupby("condition")},
              "files": {"table": str(d / f"{tag}.csv"), "tests": str(d / f"{tag}_tests.csv"),
                        "html": str(d / f"{tag}.html")}}
    emit(result, as_json, table.to_string(index=False))
