"""Check the row-sampled received attention against the exact statistic on SmolLM2 and real prose.

    python benchmarks/sampled_bound_check.py --tokens 8192 --rows 1024

Prints both run times, the share of (layer, head, key) entries whose error is within the stated
Hoeffding-Serfling bound (:func:`workbench.core.stats.hoeffding_serfling_bound`, 95% per entry), the
largest error overall and on keys seen by at least N/4 queries, and how many heads each version
calls a first-token sink (s_0 > 0.3, Gu et al. 2024).
"""
from __future__ import annotations

import argparse
import time

import torch

from workbench import Tracer, load_model
from workbench.analyzers.sinks import SINK_EPS
from workbench.tasks.text import token_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    ids = token_windows(lm.tokenizer, a.tokens, 1)
    t = time.perf_counter()
    exact = Tracer(lm, stats=("received",)).run(ids, allow_longer=True)["received"]
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    tr = Tracer(lm, stats=("received",), received_sample_rows=a.rows).run(ids, allow_longer=True)
    t_sampled = time.perf_counter() - t
    est, bound = tr["received"], tr["received_bound"][:, :, None, :].expand_as(exact)
    err = (est - exact).abs()
    seen = err[..., : a.tokens - a.tokens // 4 + 1]  # keys k seen by N - k >= N/4 queries
    print(f"{a.tokens} tokens, {a.rows} sampled rows: exact {t_exact:.1f} s, sampled {t_sampled:.1f} s")
    print(f"entries within the bound: {(err <= bound).float().mean().item():.5f} of {err.numel()}")
    print(f"max error {err.max().item():.4f}; on keys seen by >= N/4 queries {seen.max().item():.4f}; "
          f"first-token bound {tr['received_bound'][0, 0, 0].item():.4f}")
    print(f"first-token sink heads (s_0 > {SINK_EPS}): exact {int((exact[..., 0] > SINK_EPS).sum())}, "
          f"sampled {int((est[..., 0] > SINK_EPS).sum())}")


if __name__ == "__main__":
    main()
