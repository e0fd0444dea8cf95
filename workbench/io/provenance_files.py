"""Result files with their provenance: writing JSON, Parquet and CSV (with a sidecar) and Markdown footers,
reading the provenance back from any result file, and listing the files of a tree that carry none."""
from __future__ import annotations

import json
from pathlib import Path

from .provenance_collect import JSON_KEY, PARQUET_KEY, HTML_SCRIPT_ID, ProvenanceError, canonical_json
from .provenance_show import describe


def with_provenance(obj: dict, prov: dict) -> dict:
    """``obj`` with ``prov`` under the top-level key ``"provenance"`` (a new dict)."""
    return {**obj, JSON_KEY: prov}


def write_json(obj: dict, path: str | Path, prov: dict) -> Path:
    """Write ``obj`` plus ``"provenance": prov`` as indented JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(with_provenance(obj, prov), indent=1, default=str))
    return p


def write_parquet(df, path: str | Path, prov: dict) -> Path:
    """Write DataFrame ``df`` (no index) to Parquet with ``prov`` as schema metadata ``workbench.provenance``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PARQUET_KEY] = canonical_json(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), p)
    return p


def write_csv(df, path: str | Path, prov: dict) -> Path:
    """Write DataFrame ``df`` (no index) as CSV and ``prov`` into the sidecar ``<name>.csv.provenance.json``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(p, index=False)
    write_json({"file": p.name}, sidecar(p), prov)
    return p


def sidecar(path: str | Path) -> Path:
    """The provenance sidecar of a CSV file: ``<name>.csv.provenance.json`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".provenance.json")


MD_MARK = "<!-- workbench-provenance: "


def markdown_footer(prov: dict) -> str:
    """The last lines of a Markdown report: :func:`describe` for readers and ``prov`` in an HTML comment."""
    data = canonical_json(prov).replace("-->", "--\\u003e")  # '-->' occurs only inside JSON strings
    return f"\n---\nProvenance: {describe(prov)}\n{MD_MARK}{data} -->\n"


def read_provenance(path: str | Path) -> dict | None:
    """The provenance saved in a result file (.parquet, .json, .html, .csv via its sidecar, .md, .jsonl header,
    .safetensors metadata), or None when it carries none.

    A directory is read through its first file that has provenance among ``summary.json``, ``*.json``,
    ``*.parquet`` (sorted).

    Raises:
        ProvenanceError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise ProvenanceError(f"{p} does not exist: give a saved result file or folder")
    if p.is_dir():
        for f in [p / "summary.json", *sorted(p.glob("*.json")), *sorted(p.glob("*.parquet"))]:
            if f.is_file():
                prov = read_provenance(f)
                if prov is not None:
                    return prov
        return None
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_schema(p).metadata or {}
            return json.loads(meta[PARQUET_KEY]) if PARQUET_KEY in meta else None
        if suffix == ".json":
            obj = json.loads(p.read_text())
            return obj.get(JSON_KEY) if isinstance(obj, dict) else None
        if suffix == ".csv":
            sc = sidecar(p)
            return read_provenance(sc) if sc.exists() else None
        if suffix == ".md":
            text = p.read_text()
            i = text.rfind(MD_MARK)
            return json.loads(text[i + len(MD_MARK):text.index(" -->", i)]) if i >= 0 else None
        if suffix == ".jsonl":
            with open(p) as fh:
                head = json.loads(fh.readline() or "null")
            return head.get(JSON_KEY) if isinstance(head, dict) else None
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), "pt") as fh:
                meta = fh.metadata() or {}
            return json.loads(meta[PARQUET_KEY.decode()]) if PARQUET_KEY.decode() in meta else None
        if suffix in (".html", ".htm"):
            import re

            m = re.search(rf'<script type="application/json" id="{HTML_SCRIPT_ID}">(.*?)</script>', p.read_text(), re.S)
            return json.loads(m.group(1).replace("<\\/", "</")) if m else None
    except (ValueError, OSError):
        return None
    return None


#: files a results tree may hold that are not results: the shared offline plotly bundle of the report pages
NOT_RESULTS = ("plotly.min.js",)


def missing_provenance(root: str | Path) -> list[Path]:
    """Files under ``root`` that carry no provenance (:func:`read_provenance` is None), sorted.

    CSV sidecars count as part of their CSV; :data:`NOT_RESULTS` are skipped.
    """
    out = []
    for f in sorted(Path(root).rglob("*")):
        if not f.is_file() or f.name in NOT_RESULTS or f.name.endswith(".csv.provenance.json"):
            continue
        if read_provenance(f) is None:
            out.append(f)
    return out
