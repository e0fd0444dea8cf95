"""Append-only JSON-lines files: the checkpoint format of every resumable sweep.

A sweep appends one record per finished unit of work (flushed and fsynced), so a kill loses at
most the unit in progress. A line cut off by a kill is skipped when reading and terminated before
the next append, so the records after it stay whole.

:func:`open_checkpoint` puts the run's full configuration in a header line and refuses to resume
a file made with another one, naming the fields that differ.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import WorkbenchError
from .provenance import canonical_json, config_hash


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file, in order; a missing file gives [], cut or blank lines and the
    configuration header (:func:`open_checkpoint`) are skipped."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that unit of work runs again
        if isinstance(rec, dict) and HEADER_KEY in rec:
            continue  # the configuration header (open_checkpoint)
        rows.append(rec)
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


# --- configuration header: resume only what the same configuration made ------------------------------

HEADER_KEY = "workbench_checkpoint"


class CheckpointMismatchError(WorkbenchError):
    """A checkpoint was written by another configuration (model weights, grid, settings or code)."""


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): obj}


def config_diff(old: dict, new: dict) -> list[str]:
    """Dotted names of the fields whose values differ between two (nested) configurations, sorted."""
    a, b = _flatten(json.loads(canonical_json(old))), _flatten(json.loads(canonical_json(new)))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def read_header(path: str | Path) -> dict | None:
    """The configuration header of a checkpoint (its first line), or None when it has none."""
    p = Path(path)
    if not p.exists():
        return None
    with open(p) as fh:
        first = fh.readline()
    try:
        rec = json.loads(first)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and HEADER_KEY in rec else None


def open_checkpoint(path: str | Path, config: dict, provenance: dict | None = None) -> list[dict]:
    """Open ``path`` as the checkpoint of ``config`` and return its finished records (header excluded).

    A missing or empty file gets a header line ``{"workbench_checkpoint": 1, "config": ..., "config_hash":
    ..., "provenance": ...}``. An existing file resumes only when its header's ``config_hash`` equals that of
    ``config`` (which should hold everything that changes a record: model weights hash, grid, settings and a
    hash of the code, :func:`workbench.io.provenance.code_sha256`).

    Raises:
        CheckpointMismatchError: the file was written with another configuration (the message names the
            differing fields), or holds records but no header (written by an older version).
    """
    p = Path(path)
    cfg = json.loads(canonical_json(config))
    h = config_hash(cfg)
    header = read_header(p)
    records = read_jsonl(p)
    if header is None:
        if records:
            raise CheckpointMismatchError(f"{p} holds {len(records)} records but no configuration header (an older "
                                          "version wrote it): start again in another output folder or delete it")
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w") as fh:
            fh.write(json.dumps({HEADER_KEY: 1, "config": cfg, "config_hash": h, "provenance": provenance},
                                default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return []
    if header.get("config_hash") != h:
        old = header.get("config") or {}
        diff = config_diff(old, cfg)
        fa, fb = _flatten(json.loads(canonical_json(old))), _flatten(cfg)
        groups: dict[str, list[str]] = {}
        for k in diff:
            groups.setdefault(k.split(".")[0], []).append(k)
        parts = []
        for g, ks in sorted(groups.items(), key=lambda kv: (len(kv[1]), kv[0])):  # the few settings first
            if len(ks) > 2:
                parts.append(f"{g} ({len(ks)} fields)")
            else:
                parts += [f"{k}: {_short(fa.get(k, '<missing>'))} != {_short(fb.get(k, '<missing>'))}" for k in ks]
        shown = "; ".join(parts[:6])
        more = f" and {len(parts) - 6} more" if len(parts) > 6 else ""
        raise CheckpointMismatchError(f"{p} was made with another configuration ({shown}{more}): rerun with the "
                                      "original settings, or start afresh in another --out root")
    return records


def _short(v, n: int = 24) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."
