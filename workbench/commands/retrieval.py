"""CLI: ``workbench retrieval`` (the retrieval-head sweep), ``workbench ablate`` (needle accuracy with
masked heads) and ``workbench masking-test`` (top-K vs random-K table)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app, emit
from ..errors import WorkbenchError


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
    from ..retrieval.needle import load_needles

    needles = load_needles(file)
    if n is not None:
        if not 1 <= n <= len(needles):
            raise WorkbenchError(f"--needles {n}: choose 1..{len(needles)}")
        needles = needles[:n]
    return needles


def _haystack(file: Optional[Path]) -> Optional[str]:
    from ..files import read_text_file

    if file is None:
        return None
    text = read_text_file(file, "haystack file")
    if not text.strip():
        raise WorkbenchError(f"haystack file {file} is empty: give a text file of prose")
    return text


@app.command()
def retrieval(
    model: str = typer.Option("smollm2-135m", help="preset, Hugging Face id or local path"),
    lengths: str = typer.Option("256,512,1024,2048", help="context lengths in tokens, comma-separated"),
    depths: str = typer.Option("0,20,40,60,80,100", help="needle depths in percent, comma-separated"),
    needles: Optional[int] = typer.Option(None, min=1, help="use the first N needles (default all)"),
    needle_file: Optional[Path] = typer.Option(None, help="JSON Lines needles: name, sentence, question, answer"),
    haystack: Optional[Path] = typer.Option(None, help="haystack text file (default: pydoc_data.topics prose)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default reports/<model>/retrieval)"),
    resume: bool = typer.Option(False, "--resume", help="continue a sweep in --out, skipping finished tests"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Retrieval-head detection (Wu et al. 2024): needle sweep, per-head retrieval scores, figures."""
    from ..models import load_model
    from ..retrieval.sweep import default_out, run_sweep, save

    lens, deps, ndl, hay = _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(needle_file, needles), \
        _haystack(haystack)
    lm = load_model(model)
    out = out or default_out(lm.spec.name)
    res = run_sweep(lm, _check_lengths(lm, lens), deps, ndl, out, resume=resume, haystack=hay)
    save(res, out, lm.spec.name)
    s = res.summary
    top = res.heads.sort_values("score", ascending=False).head(10)
    human = (f"{s['n_correct']}/{s['n_tests']} tests correct; {s['n_retrieval_heads']} retrieval heads "
             f"({100 * s['fraction_retrieval_heads']:.1f}% of {s['n_heads']}); files in {out}\n"
             + top[["layer", "head", "score"]].to_string(index=False))
    emit(res.to_json(), as_json, human)


def _scores(path: Optional[Path], model: str, required: bool):
    from ..retrieval.sweep import default_out, load_scores

    p = path or default_out(model)
    if not required and not Path(p).exists():
        return None
    return load_scores(p)


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
    scores: Optional[Path] = typer.Option(None, help="saved retrieval scores (default reports/<model>/retrieval)"),
    baseline: bool = typer.Option(True, help="also run without ablation"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Needle accuracy with chosen heads ablated (and the unablated baseline)."""
    from ..interventions import HeadAblation
    from ..interventions.base import PHASES
    from ..models import load_model
    from ..retrieval.masking import Condition, accuracy_grids, check_kinds, fit_all_means, run_niah, select_heads

    if task != "niah":
        raise WorkbenchError(f"unknown task {task!r}: only niah is available")
    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")
    check_kinds([kind])
    lens, deps, ndl = _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(None, needles)
    lm = load_model(model)
    _check_lengths(lm, lens)
    import re

    needs_scores = re.fullmatch(r"\s*(retrieval:top-?\d+|random:\d+)\s*", heads) is not None
    sc = _scores(scores, lm.spec.name, True) if needs_scores else None
    sel = select_heads(heads, lm.spec.n_layers, lm.spec.n_heads, sc, seed)
    means = fit_all_means(lm) if kind == "mean" else None
    if means is not None:
        means = {h: means[h] for h in sel}
    abl = HeadAblation(sel, kind, phase, means).validate(lm.spec)
    conds = ([Condition("baseline", "none", 0, None, None, None)] if baseline else []) + \
        [Condition(f"{kind}/{heads}", "ablated", len(sel), seed, kind, abl)]
    df = run_niah(lm, conds, lens, deps, ndl)
    ab = df[df.selection == "ablated"]
    grid = accuracy_grids(ab)
    g = next(iter(grid.values()))
    result = {"model": lm.spec.name, "heads": [list(h) for h in sel], "kind": kind, "phase": phase, "task": task,
              "accuracy": float(ab.correct.mean()), "n_tests": int(len(ab)),
              "grid": {"depths": [float(d) for d in g.index], "lengths": [int(c) for c in g.columns],
                       "accuracy": g.values.tolist()}}
    if baseline:
        result["baseline_accuracy"] = float(df[df.selection == "none"].correct.mean())
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
    scores: Optional[Path] = typer.Option(None, help="saved retrieval scores (default reports/<model>/retrieval)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default: the scores directory)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Causal test: needle accuracy with the top-K retrieval heads vs K random non-retrieval heads masked."""
    import json

    from ..interventions.base import PHASES
    from ..models import load_model
    from ..retrieval.masking import build_conditions, check_kinds, fit_all_means, masking_figures, masking_table, run_niah
    from ..retrieval.sweep import default_out
    from ..viz import write_html

    if phase not in PHASES:
        raise WorkbenchError(f"unknown phase {phase!r}: use decode, all or prefill")
    kind_list = check_kinds([k.strip() for k in kinds.split(",") if k.strip()])
    k_list, lens, deps, ndl = _ints(ks, "ks"), _ints(lengths, "lengths"), _floats(depths, "depths"), _needles(None, needles)
    lm = load_model(model)
    _check_lengths(lm, lens)
    sc = _scores(scores, lm.spec.name, True)
    means = fit_all_means(lm) if "mean" in kind_list else None
    conds = build_conditions(lm, sc, k_list, list(range(seeds)), kind_list, phase, means)
    df = run_niah(lm, conds, lens, deps, ndl)
    table = masking_table(df)
    d = Path(out or (scores if scores and Path(scores).is_dir() else default_out(lm.spec.name)))
    d.mkdir(parents=True, exist_ok=True)
    tag = f"masking_{phase}"
    df.to_csv(d / f"{tag}_tests.csv", index=False)
    table.to_csv(d / f"{tag}.csv", index=False)
    (d / f"{tag}.json").write_text(json.dumps({"phase": phase, "table": table.to_dict(orient="records")}, indent=1))
    write_html(masking_figures(df), d / f"{tag}.html", f"Retrieval-head masking test ({phase}): {lm.spec.name}",
               "Needle accuracy (ROUGE-1 recall > 0.5) with the top-K retrieval heads or K random non-retrieval "
               "heads ablated; random-K grids average over seeds.")
    result = {"model": lm.spec.name, "phase": phase, "table": table.to_dict(orient="records"),
              "accuracy": {c: float(g.correct.mean()) for c, g in df.groupby("condition")},
              "files": {"table": str(d / f"{tag}.csv"), "tests": str(d / f"{tag}_tests.csv"),
                        "html": str(d / f"{tag}.html")}}
    emit(result, as_json, table.to_string(index=False))
