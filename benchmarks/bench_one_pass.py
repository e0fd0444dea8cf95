"""Benchmark: the census and the sinks report before and after "one pass per input", interleaved in one run.

*Old path*: each analyzer runs the windows itself, as the code did before ``workbench/core/passes.py``:
the census's attention pass (one Tracer run per window, whose received attention the sinks section reused),
then the head-type section's own pass over the first 4 windows' first 256 tokens; the sinks report's sink
pass over the short and long train windows, then ``massive_activations`` on the first half of each again.
*New path*: :func:`workbench.report.census.run_census` and :func:`workbench.report.sinks_report.sinks_report`
as they are, every window once. The parts both paths share (the head-type section's repeated random tokens,
the perplexity test's three held-out passes) run in both.

Prints, per path: wall seconds of each repeat (old and new alternate, so both see the same machine load),
the forward passes that ran each window (:class:`workbench.core.passes.ForwardLog`; for the census a prefix
of a window counts as a run of it, for the sinks report only the window itself, since its short windows are
prefixes of its long ones by design), and the ratio old / new of the median times. The forward counts are exact; the times
depend on the machine's load.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_one_pass.py --samples 2 --seq-len 128 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from workbench import load_model
from workbench.analyzers.head_types import head_type_scores, random_token_scores
from workbench.analyzers.massive import massive_activations
from workbench.analyzers.sinks import analyze_sinks, head_table, layer_profile
from workbench.core.passes import ForwardLog
from workbench.core.tracer import Tracer
from workbench.report.census import run_census
from workbench.report.sinks_report import sinks_report
from workbench.tasks.text import token_windows

SECTIONS = ["attention", "sinks", "head_types"]  # the census sections that read the census windows


def old_census(lm, n: int, seq: int) -> None:
    """The census sections attention, sinks and head_types as they ran before the one-pass census."""
    samples = token_windows(lm.tokenizer, seq, n)
    tracer = Tracer(lm, stats=("received", "entropy", "distance"))
    received = torch.stack([tracer.run(row[None])["received"][:, 0] for row in samples])  # attention section
    head_table(received), layer_profile(received)  # sinks section, from the attention pass's received
    head_type_scores(lm, samples[:4, :256], ("previous_token",))  # head-type section: its own pass
    random_token_scores(lm, 4, min(128, seq // 2))


def new_census(lm, n: int, seq: int) -> None:
    run_census(lm, n_samples=n, seq_len=seq, out_dir=None, sections=SECTIONS, progress=False)


def old_sinks(lm, kw: dict) -> None:
    """The sinks report's passes before the one-pass report (its perplexity test unchanged)."""
    from workbench.analyzers.massive import intervention_perplexity

    analyze_sinks(lm, {kw["short_len"]: kw["n_short"], kw["long_len"]: kw["n_long"]}, split="train", progress=False)
    massive_activations(lm, token_windows(lm.tokenizer, kw["short_len"], kw["n_short"] // 2, split="train"),
                        progress=False)
    mdf = massive_activations(lm, token_windows(lm.tokenizer, kw["long_len"], max(1, kw["n_long"] // 2), split="train"),
                              progress=False, batch_size=1)
    intervention_perplexity(lm, mdf, token_windows(lm.tokenizer, kw["ppl_len"], kw["n_ppl"], split="heldout"),
                            progress=False)


def new_sinks(lm, kw: dict) -> None:
    sinks_report(lm, **kw, out_dir=None, progress=False)


def counted(lm, fn, windows: list[torch.Tensor], prefixes: bool) -> tuple[float, list[int], int]:
    with ForwardLog(lm) as log:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt, [log.runs(w, prefixes) for w in windows], log.passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=2, help="census windows")
    ap.add_argument("--seq-len", type=int, default=128, help="census window length")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sinks", action="store_true", help="also time the sinks report (small settings)")
    args = ap.parse_args()
    lm = load_model(args.model)
    n, seq = args.samples, args.seq_len
    census_windows = list(token_windows(lm.tokenizer, seq, n))
    kw = dict(n_short=8, short_len=64, n_long=2, long_len=256, n_ppl=2, ppl_len=128)
    sink_windows = [*token_windows(lm.tokenizer, 64, 8, split="train"), *token_windows(lm.tokenizer, 256, 2, split="train")]
    jobs = {"census": (lambda: old_census(lm, n, seq), lambda: new_census(lm, n, seq), census_windows)}
    if args.sinks:
        jobs["sinks"] = (lambda: old_sinks(lm, kw), lambda: new_sinks(lm, kw), sink_windows)
    out = {"model": lm.spec.name, "threads": torch.get_num_threads(), "census": {"samples": n, "seq_len": seq,
                                                                               "sections": SECTIONS}}
    if args.sinks:
        out["sinks"] = {"settings": kw}
    for name, (old, new, windows) in jobs.items():
        old(), new()  # warm-up
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for label, fn in (("old", old), ("new", new)):
                # the sinks report's short window 8k is a prefix of its long window k: count exact runs there
                dt, runs, passes = counted(lm, fn, windows, prefixes=name == "census")
                times[label].append(round(dt, 2))
                print(f"{name} {label}: {dt:.2f} s, runs per window {runs}, forward passes {passes}", file=sys.stderr,
                      flush=True)
                out[name][f"{label}_runs_per_window"], out[name][f"{label}_forward_passes"] = runs, passes
        out[name].update({f"{k}_seconds": v for k, v in times.items()})
        out[name]["ratio_old_over_new"] = round(statistics.median(times["old"]) / statistics.median(times["new"]), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
