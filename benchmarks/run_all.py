"""The benchmark suite: our tracer and interventions against the tools researchers use today.

One command, same model, same real-text inputs, same machine, one run::

    python benchmarks/run_all.py                       # writes reports/benchmarks.md and reports/benchmarks.json

For each context length (default 512, 2048, 4096, 8192, plus 16384 for our own methods only,
past SmolLM2's 8192-token trained window, which is fine for cost; there only ``plain``,
``ours_sinks`` and ``ours_sinks_sampled``) it measures median wall time and
peak extra resident memory of:

=====================  ==========================================================================
``plain``              stock transformers SDPA forward: the floor every ratio is taken against
``ours_sinks``         workbench Tracer: mean received attention (sink statistic), all layers/heads, exact
``ours_sinks_sampled`` the same estimated from 1024 sampled query rows per layer, with its stated
                       Hoeffding-Serfling bound (``Tracer(received_sample_rows=1024)``; the max error
                       against ``ours_sinks`` and the bound on the first token are in the row)
``ours_sinks_needle``  the same plus attention mass on a 16-token needle span for every query
``ours_uniform_mask``  uniform-attention masking (Wu et al. 2024) of 20 heads, closed form
``ours_zero_ablation`` zero ablation of the same 20 heads' outputs
``ours_mean_ablation`` mean ablation of the same 20 heads (means fitted beforehand on 4 x 256 tokens, not timed)
``ours_act``           ACT calibration (Yu et al. 2024) of 20 heads, closed form, sink sets detected per input
``hf_eager``           transformers eager attention with ``output_attentions=True``
``tl_bridge``          TransformerLens ``TransformerBridge.run_with_cache`` keeping every ``hook_pattern``
``nnsight``            nnsight trace saving every layer's attention probabilities (eager)
``gen_plain``          stock SDPA greedy ``generate()`` after a prompt of min(N, 2048) tokens
``gen_traced``         the same with the Tracer recording each decoded token's top key
                       (``rows_from`` = prompt length: the statistic retrieval scoring uses)
``gen_retrieval``      the retrieval scorer itself (``greedy_decode`` with its top-key recorder)
=====================  ==========================================================================

Generation rows report seconds per decoded token, measured as the difference between a run of
1 + ``--gen-tokens`` new tokens and a run of 1, so the prefill is not counted; their ratios are
against ``gen_plain``'s per-token time. A second table gives ours against each other tool.

A configuration whose estimated memory exceeds 60% of the memory available at that moment is
skipped and reported as such instead of crashing the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure as _measure, plain_forward  # noqa: E402

from workbench import Tracer, load_model  # noqa: E402
from workbench.interventions import HeadAblation  # noqa: E402
from workbench.core.models import cache_dir  # noqa: E402
from workbench.tasks.text import token_windows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIN_BASE_MIB = 16
HEADS20 = [(layer, h) for layer in range(10, 30, 2) for h in (0, 4)]  # 20 heads spread over the depth


def _maps_bytes(spec, n: int) -> int:
    return spec.n_layers * spec.n_heads * n * n * 4


def _act_intervention():
    try:
        from workbench.interventions.act import ACTCalibration  # added by the sinks work
    except ImportError:
        return None
    return ACTCalibration(HEADS20, beta=0.4)  # sink sets detected from each input, as in use


def run(lengths: list[int], long_lengths: list[int], repeats: int, threads: int, gen_tokens: int) -> dict:
    torch.set_num_threads(threads)
    lm = load_model("smollm2-135m")
    spec = lm.spec
    model, tok = lm.model, lm.tokenizer
    path = str(cache_dir() / "smollm2-135m")
    from transformers import AutoModelForCausalLM

    def eager_copy():  # the bridge wraps its model's modules in place, so every tool gets its own copy
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()

    eager_model = eager_copy()
    bridge = nnmodel = None
    rows: list[dict] = []
    act = _act_intervention()
    # mean ablation's reference means, fitted once on other text (not timed)
    means = HeadAblation.fit_means(lm, HEADS20, token_windows(tok, 256, 4, split="train"))

    def record(n, method, result):
        row = {"tokens": n, "method": method, **result}
        rows.append(row)
        print(_fmt(row), flush=True)

    for n in lengths + long_lengths:
        ours_only = n in long_lengths
        ids = token_windows(tok, n, 1) if n <= 60000 else None
        reps = repeats if n <= 4096 else (2 if n <= 8192 else 1)
        warm = 1 if n <= 4096 else 0  # long runs are tens of seconds each: no warm-up needed

        def measure(fn, r, _warm=warm):
            return _measure(fn, r, warmup=_warm)

        def plain():
            plain_forward(model, ids)

        record(n, "plain", measure(plain, reps))
        sinks = Tracer(lm, stats=("received",))
        kept = {}  # the last trace of each measured run, to compare the estimate with the exact statistic
        record(n, "ours_sinks", measure(lambda: kept.__setitem__("exact", sinks.run(ids, allow_longer=True)), reps))
        sampled = Tracer(lm, stats=("received",), received_sample_rows=1024)
        row = measure(lambda: kept.__setitem__("est", sampled.run(ids, allow_longer=True)), reps)
        exact, est = kept.pop("exact"), kept.pop("est")
        row["max_abs_error"] = float((exact["received"] - est["received"]).abs().max())
        row["max_abs_error_first_token"] = float((exact["received"][..., 0] - est["received"][..., 0]).abs().max())
        row["bound_first_token"] = float(est["received_bound"][0, 0, 0])
        del exact, est
        record(n, "ours_sinks_sampled", row)
        if ours_only:  # past the comparison lengths: the tracer alone, to show it still fits
            continue
        needle = Tracer(lm, stats=("received",), key_sets={"needle": torch.arange(n // 2, n // 2 + 16)})
        record(n, "ours_sinks_needle", measure(lambda: needle.run(ids, allow_longer=True), reps))

        def with_hook(hook):
            def f():
                with torch.no_grad(), hook.applied():
                    model(ids, use_cache=False)
            return f

        record(n, "ours_uniform_mask", measure(with_hook(HeadAblation(HEADS20, kind="uniform")), reps))
        record(n, "ours_zero_ablation", measure(with_hook(HeadAblation(HEADS20, kind="zero")), reps))
        record(n, "ours_mean_ablation", measure(with_hook(HeadAblation(HEADS20, kind="mean", means=means)), reps))
        if act is not None:
            record(n, "ours_act", measure(with_hook(act), reps))
        avail = psutil.virtual_memory().available
        need = 2 * _maps_bytes(spec, n)
        if need > 0.6 * avail:
            for m in ("hf_eager", "tl_bridge", "nnsight"):
                record(n, m, {"skipped": f"needs about {need / 2**30:.1f} GiB of attention maps, "
                                         f"{avail / 2**30:.1f} GiB available"})
        else:
            def eager():
                with torch.no_grad():
                    eager_model(ids, use_cache=False, output_attentions=True)

            record(n, "hf_eager", measure(eager, max(1, reps - 1)))
            if bridge is None:
                from transformer_lens.model_bridge import TransformerBridge

                bridge = TransformerBridge.boot_transformers(path, hf_model=eager_copy(), tokenizer=tok)

            def tl():
                with torch.no_grad():
                    bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))

            record(n, "tl_bridge", measure(tl, max(1, reps - 1)))
            if nnmodel is None:
                from nnsight.modeling.transformers import TransformersModel

                nnmodel = TransformersModel(eager_copy(), tokenizer=tok)
            from nnsight_probs import save_attention_probs

            record(n, "nnsight", measure(lambda: save_attention_probs(nnmodel, ids, spec.n_layers), max(1, reps - 1)))
        if n == lengths[0] or n == 2048:
            for method, fn in generation_methods(lm, ids[:, : min(n, 2048)], gen_tokens).items():
                record(min(n, 2048), method, per_token(fn, gen_tokens))
    # ratios against plain at the same length
    base = {r["tokens"]: r for r in rows if r["method"] == "plain"}
    gbase = {r["tokens"]: r for r in rows if r["method"] == "gen_plain"}
    for r in rows:
        gen = r["method"].startswith("gen_")
        ref = gbase.get(r["tokens"]) if gen else base.get(r["tokens"])
        if ref and "seconds" in r:
            key = "seconds_per_token" if gen else "seconds"
            r["time_ratio"] = r[key] / ref[key]
            if ref["peak_mib"] >= MIN_BASE_MIB:  # a smaller baseline is allocator reuse, not a measurement
                r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"]
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
               "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    return {"model": spec.name, "machine": machine, "rows": rows, "versus": versus_others(rows)}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def generation_methods(lm, prompt: torch.Tensor, gen_tokens: int) -> dict:
    """name -> fn(new_tokens) for the generation rows (each returns the number of tokens it emitted)."""
    from workbench.analyzers.retrieval import greedy_decode

    model, tok = lm.model, lm.tokenizer

    def hf(traced: bool):
        def f(k: int) -> int:
            kw = {"max_new_tokens": k, "min_new_tokens": k, "do_sample": False, "pad_token_id": tok.eos_token_id}
            with torch.no_grad():
                if traced:
                    with Tracer(lm, stats=("top_key",), rows_from=prompt.shape[1]):
                        out = model.generate(prompt, **kw)
                else:
                    model.set_attn_implementation("sdpa")
                    try:
                        out = model.generate(prompt, **kw)
                    finally:
                        model.set_attn_implementation("workbench")
            return out.shape[1] - prompt.shape[1]
        return f

    def retrieval(k: int) -> int:
        return len(greedy_decode(lm, prompt, max_new_tokens=k, stop_at_newline=False).tokens)

    return {"gen_plain": hf(False), "gen_traced": hf(True), "gen_retrieval": retrieval}


def per_token(fn, gen_tokens: int, repeats: int = 3) -> dict:
    """Seconds per decoded token, (t(1 + k tokens) - t(1 token)) / k, the median over ``repeats`` pairs of runs:
    the prefill cancels out."""
    fn(2)  # warm-up
    pairs = []
    for _ in range(repeats):
        short = _measure(lambda: fn(1), 1, warmup=0)
        emitted = []
        long = _measure(lambda: emitted.append(fn(1 + gen_tokens)), 1, warmup=0)
        k = max(1, emitted[-1] - 1)
        pairs.append({"seconds": long["seconds"], "peak_mib": long["peak_mib"], "prefill_seconds": short["seconds"],
                      "decoded_tokens": k, "seconds_per_token": (long["seconds"] - short["seconds"]) / k})
    pairs.sort(key=lambda r: r["seconds_per_token"])
    return pairs[len(pairs) // 2]


def versus_others(rows: list[dict]) -> list[dict]:
    """Ours (exact sink statistics, and sampled) against each other tool at each length: time and memory ratios,
    or why the other tool could not run."""
    by = {(r["tokens"], r["method"]): r for r in rows}
    out = []
    for n in sorted({r["tokens"] for r in rows if r["method"] == "plain"}):
        for ours in ("ours_sinks", "ours_sinks_sampled"):
            o = by.get((n, ours))
            if o is None or "seconds" not in o:
                continue
            for other in ("hf_eager", "tl_bridge", "nnsight"):
                t = by.get((n, other))
                if t is None:
                    cell = {"note": "not run at this length (ours only)"}
                elif "skipped" in t:
                    cell = {"note": "could not run: " + t["skipped"]}
                else:
                    cell = {"time_ratio": o["seconds"] / t["seconds"], "memory_ratio": o["peak_mib"] / max(t["peak_mib"], 1.0)}
                out.append({"tokens": n, "ours": ours, "other": other, **cell})
    return out


def _fmt(r: dict) -> str:
    if "skipped" in r:
        return f"{r['tokens']:>6} {r['method']:<18} skipped: {r['skipped']}"
    return f"{r['tokens']:>6} {r['method']:<18} {r['seconds']:9.3f} s {r['peak_mib']:9.1f} MiB"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    out = [f"# Benchmarks: {doc['model']}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads), {m['memory_gib']} GiB, "
           f"torch {m['torch']}, {m['date']}. Ratios are against `plain` (stock SDPA forward) at the same "
           "length, measured in the same run; generation rows against `gen_plain`.", "",
           "| tokens | method | seconds | peak extra MiB | time ratio | memory ratio |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "skipped" in r:
            out.append(f"| {r['tokens']} | {r['method']} | skipped: {r['skipped']} | | | |")
        else:
            sec = f"{r['seconds']:.3f}"
            if "seconds_per_token" in r:
                sec += (f" ({r['seconds_per_token'] * 1000:.1f} ms/token over {r['decoded_tokens']} tokens; "
                        f"prefill + 1 token {r['prefill_seconds']:.2f} s)")
            if "max_abs_error" in r:
                sec += (f" (max error vs exact {r['max_abs_error']:.3f}; first token {r['max_abs_error_first_token']:.4f}, "
                        f"bound {r['bound_first_token']:.3f})")
            mem = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else "n/a"
            out.append(f"| {r['tokens']} | {r['method']} | {sec} | {r['peak_mib']:.0f} | "
                       f"{r.get('time_ratio', float('nan')):.2f} | {mem} |")
    out += ["", f"Memory ratio n/a: the baseline's extra resident memory was under {MIN_BASE_MIB} MiB (the "
            "allocator reused memory freed earlier), too small to divide by.", "",
            "## Ours against each other tool", "",
            "Ratio = ours / theirs at the same length in the same run (below 1: ours is cheaper).", "",
            "| tokens | ours | other tool | time ratio | memory ratio |", "|---|---|---|---|---|"]
    for v in doc.get("versus", []):
        if "note" in v:
            out.append(f"| {v['tokens']} | {v['ours']} | {v['other']} | {v['note']} | |")
        else:
            out.append(f"| {v['tokens']} | {v['ours']} | {v['other']} | {v['time_ratio']:.2f} | {v['memory_ratio']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Benchmark suite (see module docstring)")
    ap.add_argument("--lengths", default="512,2048,4096,8192")
    ap.add_argument("--long-lengths", default="16384", help="lengths for our methods only ('' for none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")  # reports/ holds the reference run
    a = ap.parse_args()
    doc = run([int(x) for x in a.lengths.split(",") if x], [int(x) for x in a.long_lengths.split(",") if x],
              a.repeats, a.threads, a.gen_tokens)
    from workbench.io.provenance import collect, markdown_footer, write_json

    prov = collect(None, {"command": "benchmarks/run_all.py", **{k: v for k, v in vars(a).items() if k != "out"}})
    write_json(doc, a.out / "benchmarks.json", prov)
    (a.out / "benchmarks.md").write_text(markdown(doc) + markdown_footer(prov))
    print(markdown(doc))


if __name__ == "__main__":
    main()
