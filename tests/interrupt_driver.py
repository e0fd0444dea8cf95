"""Run a tiny retrieval sweep or study in its own process, so tests can kill it (SIGINT, SIGKILL) and resume.

Usage: python tests/interrupt_driver.py sweep|study OUT_ROOT [--resume] [--delay SECONDS] [--hold-at N]

The model is a random-weight Llama (tests/conftest.py ``make_tiny_lm``, seed 0) with SmolLM2's tokenizer;
``--delay`` sleeps after every forward pass; ``--hold-at N`` makes the first forward pass after the run's
records file holds N records wait (up to 10 minutes), so a kill sent then lands mid-run with exactly N
records written, however loaded the machine is.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STUDY = {
    "name": "tiny-kill", "model": "tiny-llama", "ablations": ["zero", "mean"], "n_bootstrap": 50, "seed": 0,
    "mean_samples": 1, "mean_seq_len": 24,
    "head_sets": {"manual": {"source": "explicit", "heads": [[0, 0], [1, 1]]},
                  "random": {"source": "random", "k": 2, "seeds": [0, 1], "exclude": ["manual"]}},
    "tasks": {"text": {"kind": "perplexity", "n": 2, "seq_len": 24}},
}


def tiny_lm():
    import torch
    from transformers import AutoTokenizer

    from conftest import make_tiny_lm
    from workbench.core.models import cache_dir, load_model

    torch.set_num_threads(1)
    path = cache_dir() / "smollm2-135m"
    tok = AutoTokenizer.from_pretrained(str(path)) if (path / "tokenizer.json").exists() else \
        load_model("smollm2-135m").tokenizer
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, vocab=len(tok), max_pos=512)
    lm.tokenizer = tok
    return lm


def records_file(what: str, out: Path) -> Path:
    """The JSON-lines file a run of ``what`` appends its finished records to."""
    if what == "sweep":
        from workbench.studies.retrieval_sweep import RESULTS_FILE

        return out / RESULTS_FILE
    from workbench.studies.runner import ROWS

    return out / "tiny-llama" / "studies" / STUDY["name"] / ROWS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sweep", "study"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--hold-at", type=int, default=None)
    a = ap.parse_args()
    lm = tiny_lm()
    if a.delay:
        lm.model.register_forward_hook(lambda *_: time.sleep(a.delay))
    if a.hold_at is not None:
        from workbench.io.jsonl import read_jsonl

        rows = records_file(a.what, a.out)

        def hold(*_):
            if rows.exists() and len(read_jsonl(rows)) >= a.hold_at:
                time.sleep(600)  # the test's signal arrives here

        lm.model.register_forward_hook(hold)
    if a.what == "sweep":
        from workbench.tasks.needle import load_needles
        from workbench.studies.retrieval_sweep import run_sweep, save

        res = run_sweep(lm, [160, 200], [0, 50, 100], load_needles()[:2], a.out, resume=a.resume, progress=False,
                        max_new_tokens=3)
        save(res, a.out, lm.spec.name)
    else:
        from workbench.studies import parse_spec, run_study

        run_study(parse_spec(STUDY), lm, out_root=a.out, resume=a.resume, progress=False)
    print("done")


if __name__ == "__main__":
    main()
