"""Append-only JSON-lines files: the checkpoint format of every resumable sweep.

A sweep appends one record per finished unit of work (flushed and fsynced), so a kill loses at
most the unit in progress. A line cut off by a kill is skipped when reading and terminated before
the next append, so the records after it stay whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file, in order; a missing file gives [], cut or blank lines are skipped."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that unit of work runs again
    return rows


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append ``record`` as one line (creating parent folders), flushed and fsynced to disk."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sep = ""
    if p.exists() and p.stat().st_size:
        with open(p, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            sep = "" if fh.read(1) == b"\n" else "\n"  # end a line cut by a kill, so this record stays whole
    with open(p, "a") as fh:
        fh.write(sep + json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
