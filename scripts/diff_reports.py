#!/usr/bin/env python
"""Numeric differences between two report trees (e.g. the committed reports/ before and after ``workbench reproduce``).

Every number in JSON (nested keys), JSON lines (records by their ``key`` field, else by position), Parquet and
CSV tables (rows by their identifying columns such as layer/head/condition, else by position; a CSV with a
Parquet twin of the same name is skipped) is keyed by ``file path + key``; provenance blocks, dates and wall
times are left out. Prints the largest absolute changes (with the relative change), the number of values
compared, and the files and keys found in only one tree.

    python scripts/diff_reports.py OLD NEW [--map old/prefix=new/prefix ...] [--top 25] [--json OUT]

``--map`` renames a folder of OLD before matching (a result that moved, e.g. ``studies=smollm2-135m/studies``).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

SKIP_KEYS = {"provenance", "date", "wall_s", "wall_s_steps", "elapsed_s", "seconds", "time_s", "files", "file"}
ID_COLUMNS = ("task", "metric", "intervention", "condition", "head_set", "seed", "ablation", "kind", "selection", "k", "split",
              "method", "length", "depth", "needle", "layer", "head", "dim", "position", "image_index", "token_index",
              "variant", "tokens", "key", "stage", "sample", "step", "token", "kind", "pos")


def _numbers(obj, prefix: str, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                _numbers(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list):
        names = [",".join(f"{c}={v[c]}" for c in ID_COLUMNS if c in v and not isinstance(v[c], (float, list, dict)))
                 if isinstance(v, dict) else "" for v in obj]
        if not all(names) or len(set(names)) < len(names):  # records not identified by their columns: by position
            names = [str(i) for i in range(len(obj))]
        for name, v in zip(names, obj):
            _numbers(v, f"{prefix}[{name}]", out)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, (int, float)):
        out[prefix] = float(obj)


def _table(df: pd.DataFrame, out: dict, prefix: str) -> None:
    ids = [c for c in ID_COLUMNS if c in df.columns and df[c].dtype.kind in "iuOSbU"]
    use = ids if ids and not df.duplicated(ids).any() else []
    for i, row in enumerate(df.itertuples(index=False)):
        r = row._asdict()
        name = ",".join(f"{c}={r[c]}" for c in use) if use else str(i)
        for c, v in r.items():
            if c in use or c in SKIP_KEYS or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}[{name}].{c}"] = float(v)


def numbers(root: Path, mapping: list[tuple[str, str]] = ()) -> tuple[dict, set]:
    """``{"path:key": value}`` of every number under ``root``, and the set of files read (relative paths)."""
    out: dict = {}
    files = set()
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.name.endswith(".provenance.json"):
            continue
        rel = f.relative_to(root).as_posix()
        for a, b in mapping:
            if rel.startswith(a.rstrip("/") + "/"):
                rel = b.rstrip("/") + rel[len(a.rstrip("/")):]
        try:
            if f.suffix == ".json":
                _numbers(json.loads(f.read_text()), rel + ":", out)
            elif f.suffix == ".jsonl":
                for i, line in enumerate(f.read_text().splitlines()):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and "workbench_checkpoint" not in rec:
                        _numbers(rec, f"{rel}:[{rec.get('key', i)}]", out)
            elif f.suffix == ".parquet":
                _table(pd.read_parquet(f), out, rel + ":")
            elif f.suffix == ".csv":
                if f.with_suffix(".parquet").exists():
                    continue
                _table(pd.read_csv(f), out, rel + ":")
            else:
                continue
        except (ValueError, OSError) as e:
            print(f"skipped {rel}: {e}")
            continue
        files.add(rel)
    return out, files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--map", action="append", default=[], help="OLD_PREFIX=NEW_PREFIX (a moved folder)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    a = ap.parse_args()
    mapping = [tuple(m.split("=", 1)) for m in a.map]
    old, fo = numbers(a.old, mapping)
    new, fn = numbers(a.new)
    common = sorted(set(old) & set(new))
    rows = []
    for k in common:
        x, y = old[k], new[k]
        if math.isnan(x) and math.isnan(y):
            continue
        d = abs(y - x) if not (math.isnan(x) or math.isnan(y)) else math.inf
        rows.append({"key": k, "old": x, "new": y, "abs": d, "rel": d / max(abs(x), 1e-12) if math.isfinite(d) else math.inf})
    df = pd.DataFrame(rows, columns=["key", "old", "new", "abs", "rel"])
    changed = df[df["abs"] > 0]
    print(f"files: {len(fo & fn)} in both, {len(fo - fn)} only in OLD, {len(fn - fo)} only in NEW")
    print(f"numbers: {len(common)} compared, {len(changed)} changed, {len(set(old) - set(new))} only in OLD, "
          f"{len(set(new) - set(old))} only in NEW (in files of both: "
          f"{sum(k.split(':', 1)[0] in fn for k in set(old) - set(new))} / {sum(k.split(':', 1)[0] in fo for k in set(new) - set(old))})")
    if len(changed):
        by_file = changed.assign(file=changed.key.str.split(":").str[0]).groupby("file")["abs"].agg(["count", "max"])
        print("\nchanged values per file (count, largest |change|):")
        print(by_file.sort_values("max", ascending=False).to_string())
        print(f"\nlargest {a.top} absolute changes:")
        with pd.option_context("display.max_colwidth", 110, "display.width", 220):
            print(changed.nlargest(a.top, "abs").to_string(index=False))
    print("\nonly in OLD:", *sorted(fo - fn), sep="\n  ")
    print("only in NEW:", *sorted(fn - fo), sep="\n  ")
    if a.json:
        a.json.write_text(json.dumps({"compared": len(common), "changed": len(changed),
                                      "top": changed.nlargest(a.top, "abs").to_dict(orient="records"),
                                      "only_old": sorted(fo - fn), "only_new": sorted(fn - fo)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
