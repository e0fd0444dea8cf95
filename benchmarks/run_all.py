"""The benchmark suite: our tracer and interventions against the tools researchers use today.

One command, same model, same real-text inputs, same machine, one run::

    python benchmarks/run_all.py                       # writes reports/benchmarks.md and reports/benchmarks.json

For each context length (default 512, 2048, 4096, 8192, plus 16384 for our own methods only,
past SmolLM2's 8192-token trained window, which is fine for cost; there only ``plain`` and
``ours_sinks``) it measures median wall time and
peak extra resident memory of:

=====================  ==========================================================================
``plain``              stock transformers SDPA forward: the floor every ratio is taken against
``ours_sinks``         workbench Tracer: mean received attention (sink statistic), all layers/heads
``ours_sinks_needle``  the same plus attention mass on a 16-token needle span for every query
``ours_uniform_mask``  uniform-attention masking (Wu et al. 2024) of 20 heads, closed form
``ours_act``           ACT calibration (Yu et al. 2024) of 20 heads, closed form, sink sets detected per input
``hf_eager``           transformers eager attention with ``output_attentions=True``
``tl_bridge``          TransformerLens ``TransformerBridge.run_with_cache`` keeping every ``hook_pattern``
``nnsight``            nnsight trace saving every layer's attention probabilities (eager)
``gen_plain``          greedy generation of 32 tokens after the context (per-token seconds)
``gen_traced``         the same with the tracer recording each step's top key (retrieval scoring)
=====================  ==========================================================================

A configuration whose estimated memory exceeds 60% of the memory available at that moment is
skipped and reported as such instead of crashing the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure as _measure  # noqa: E402

from workbench import Tracer, load_model  # noqa: E402
from workbench.interventions import HeadAblation  # noqa: E402
from workbench.models import cache_dir  # noqa: E402
from workbench.text import token_windows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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

    def record(n, method, result):
        row = {"tokens": n, "method": method, **result}
        rows.append(row)
        print(_fmt(row), flush=True)

    for n in lengths + long_lengths:
        ours_only = n in long_lengths
        ids = token_windows(tok, n, 1) if n <= 60000 else None
        reps = repeats if n <= 4096 else 1
        warm = 1 if n <= 4096 else 0  # long runs are seconds each: no warm-up needed

        def measure(fn, r, _warm=warm):
            return _measure(fn, r, warmup=_warm)

        def plain():
            model.set_attn_implementation("sdpa")
            try:
                with torch.no_grad():
                    model(ids, use_cache=False)
            finally:
                model.set_attn_implementation("workbench")

        record(n, "plain", measure(plain, reps))
        sinks = Tracer(lm, stats=("received",))
        record(n, "ours_sinks", measure(lambda: sinks.run(ids, allow_longer=True), reps))
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
        # generation: per-token cost with and without retrieval-score tracing
        prompt = ids[:, : min(n, 2048)]

        def gen(traced: bool):
            def f():
                kw = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                          pad_token_id=tok.eos_token_id)
                with torch.no_grad():
                    if traced:
                        with Tracer(lm, stats=("top_key",)):
                            model.generate(prompt, **kw)
                    else:
                        model.generate(prompt, **kw)
            return f

        if n == lengths[0] or n == 2048:
            g0 = measure(gen(False), 1)
            g1 = measure(gen(True), 1)
            g0["seconds_per_token"] = g0["seconds"] / gen_tokens
            g1["seconds_per_token"] = g1["seconds"] / gen_tokens
            record(prompt.shape[1], "gen_plain", g0)
            record(prompt.shape[1], "gen_traced", g1)
    # ratios against plain at the same length
    base = {r["tokens"]: r for r in rows if r["method"] == "plain"}
    gbase = {r["tokens"]: r for r in rows if r["method"] == "gen_plain"}
    for r in rows:
        ref = gbase.get(r["tokens"]) if r["method"].startswith("gen_") else base.get(r["tokens"])
        if ref and "seconds" in r:
            r["time_ratio"] = r["seconds"] / ref["seconds"]
            r["memory_ratio"] = r["peak_mib"] / max(ref["peak_mib"], 1.0)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
               "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    return {"model": spec.name, "machine": machine, "rows": rows}


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
            sec = f"{r['seconds']:.3f}" + (f" ({r['seconds_per_token'] * 1000:.1f} ms/token)" if "seconds_per_token" in r else "")
            out.append(f"| {r['tokens']} | {r['method']} | {sec} | {r['peak_mib']:.0f} | "
                       f"{r.get('time_ratio', float('nan')):.2f} | {r.get('memory_ratio', float('nan')):.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Benchmark suite (see module docstring)")
    ap.add_argument("--lengths", default="512,2048,4096,8192")
    ap.add_argument("--long-lengths", default="16384", help="lengths for our methods only ('' for none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "reports")
    a = ap.parse_args()
    doc = run([int(x) for x in a.lengths.split(",") if x], [int(x) for x in a.long_lengths.split(",") if x],
              a.repeats, a.threads, a.gen_tokens)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "benchmarks.json").write_text(json.dumps(doc, indent=1))
    (a.out / "benchmarks.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
