"""Per length band: retrieval heads (score > 0.1) and top-10 overlap with the longest answered band, from sweep folders.

    PYTHONPATH=. python scripts/retrieval_bands.py DIR [DIR ...] [--model smollm2-135m] [--json]

Each DIR is a sweep folder (its results.jsonl); records of several folders are pooled (a test key seen twice
is counted once). Also prints the union of the two shortest bands (the census's quick-sweep band) against
the longest answered band.
"""
from __future__ import annotations

import argparse
import json

from workbench.studies.retrieval_bands import band_table, top_heads
from workbench.studies.retrieval_sweep import read_results, summarize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    recs = {}
    for d in args.dirs:
        for r in read_results(d):
            recs.setdefault(r["key"], r)
    recs = list(recs.values())
    t = band_table(recs, args.layers, args.heads)
    lengths = sorted(t.length)
    short = [r for r in recs if int(r["length"]) in lengths[:2]]
    longest = [r for r in recs if int(r["length"]) == t.attrs["reference_length"]]
    top_s = set(top_heads(summarize(short, args.layers, args.heads).heads))
    top_l = set(top_heads(summarize(longest, args.layers, args.heads).heads))
    s = summarize(short, args.layers, args.heads).summary
    extra = {"short_band": lengths[:2], "short_n_retrieval": s["n_retrieval_heads"],
             "short_fraction": s["fraction_retrieval_heads"], "reference_length": int(t.attrs["reference_length"]),
             "short_top10_overlap_reference": len(top_s & top_l)}
    if args.json:
        print(json.dumps({"bands": t.to_dict(orient="records"), **extra}))
    else:
        print(t.to_string(index=False))
        print(json.dumps(extra))


if __name__ == "__main__":
    main()
