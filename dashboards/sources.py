"""What the dashboard shows, independent of Streamlit: traces, census directories and uploads.

Files are read as safetensors, JSON, Parquet or CSV only; nothing is unpickled. Uploads are
size-limited (:data:`MAX_UPLOAD_MB`) and written to a fresh temporary directory before a trace
is opened with :meth:`workbench.core.trace.Trace.load` (which validates it).
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.core.errors import TraceFileError, WorkbenchError
from workbench.core.headsets import parse_head_set
from workbench.core.trace import Trace

MAX_UPLOAD_MB = 256  # per file; also passed to Streamlit as server.maxUploadSize
MAX_IMAGE_MB = 16  # an uploaded image for the Vision tab (PNG / JPEG)
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height, checked from the header before the pixels are decoded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".parquet", ".csv", ".json")
MAX_TABLE_ROWS = 1 << 20  # a per-head table of any real model is far smaller
MAX_INDEX = 1 << 16  # layer and head numbers
MASSIVE_COLUMNS = {"layer", "pos", "dim", "token", "value", "ratio_to_median"}
NEEDLE_COLUMNS = {"length", "depth", "accuracy"}


class UploadError(WorkbenchError):
    """An uploaded file is too large, of a type the dashboard does not read, or unreadable."""


class CensusDirError(WorkbenchError):
    """A census directory lacks heads.parquet / heads.json / heads.csv or holds unreadable tables."""


# --- traces ------------------------------------------------------------------------------------


def trace_summary(trace: Trace) -> dict:
    """Facts shown above a trace: model, tokens, recorded layers/heads, the pattern window, arrays."""
    n = int(trace["tokens"].shape[1]) if "tokens" in trace else None
    out = {"model": trace.meta.get("model"), "tokens": n, "layers": trace.layers, "heads": trace.heads,
           "arrays": {k: list(v.shape) for k, v in trace.arrays.items()}}
    if "pattern" in trace:
        q0 = trace.meta.get("query_start", 0)
        out["pattern_window"] = [q0, q0 + int(trace["pattern"].shape[3])]
    return out


def trace_head_table(trace: Trace, batch: int = 0) -> pd.DataFrame:
    """Per-head scores of one traced sequence: columns ``layer``, ``head`` and, where recorded,

    ``first_token_mass`` (s_0, mean received attention of the first token), ``max_received``
    (max_k s_k over keys k >= 1 seen by at least max(8, T/4) queries, the sinks analyzer's rule: a
    non-first sink; NaN when no key qualifies) and ``max_received_key`` (that k, -1 if none), ``entropy`` (mean over queries, nats),
    ``mean_distance`` (tokens) and ``top_prob`` (mean max attention probability).
    """
    cols: dict[str, object] = {}
    layers, heads = trace.layers, trace.heads
    if "received" in trace:
        r = trace["received"][:, batch].float()  # (layer, head, key)
        cols["first_token_mass"] = r[..., 0]
        if r.shape[-1] > 1:
            from workbench.report.viz import received_maxima

            # the sinks analyzer's rule: only keys seen by at least max(8, T/4) queries (a late key's
            # mean over a handful of queries is noise); T = queries averaged over (rows_from .. T-1)
            n0 = int(trace.meta.get("rows_from", 0))
            t = r.shape[-1]
            counts = np.minimum(np.arange(t, 0, -1), t - n0)
            vals, keys = received_maxima(r.numpy(), counts=counts, n_queries=t - n0)
            cols["max_received"] = torch.as_tensor(vals)
            cols["max_received_key"] = torch.as_tensor(keys)
    for name, col in (("entropy", "entropy"), ("distance", "mean_distance"), ("top_prob", "top_prob")):
        if name in trace:
            cols[col] = trace[name][:, batch].float().mean(-1)
    rows = {"layer": [l for l in layers for _ in heads], "head": [h for _ in layers for h in heads]}
    for k, v in cols.items():
        rows[k] = v.reshape(-1).numpy()
    return pd.DataFrame(rows)


def check_head_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate a per-head table before it is drawn: ``layer`` and ``head`` integer columns in 0..65535,
    at most one row per (layer, head), at most :data:`MAX_TABLE_ROWS` rows (so every figure's cost is bounded).

    Raises:
        CensusDirError: the first problem, named.
    """
    if not {"layer", "head"} <= set(df.columns):
        raise CensusDirError(f"{where} has columns {list(df.columns)[:8]}; a per-head table needs layer and head")
    if len(df) > MAX_TABLE_ROWS:
        raise CensusDirError(f"{where} has {len(df)} rows, over {MAX_TABLE_ROWS}: not a per-head table")
    for col in ("layer", "head"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise CensusDirError(f"{where}: column {col!r} must hold integers, not {df[col].dtype}")
        if len(df) and not (0 <= int(df[col].min()) and int(df[col].max()) < MAX_INDEX):
            raise CensusDirError(f"{where}: column {col!r} must lie in 0..{MAX_INDEX - 1}")
    if df.duplicated(["layer", "head"]).any():
        raise CensusDirError(f"{where} lists a (layer, head) twice: one row per head")
    return df


def open_trace_dir(path: str | Path) -> Trace:
    """:meth:`Trace.load` with a friendly error for an empty or missing path.

    Raises:
        TraceFileError: not a trace directory, or corrupt files.
    """
    if not str(path).strip():
        raise TraceFileError("enter the path of a trace directory (written by `workbench trace --out DIR`)")
    return Trace.load(Path(path).expanduser())


# --- census directories ------------------------------------------------------------------------


@dataclass
class Census:
    """A census directory: ``heads`` (layer, head, scores...), ``summary`` and further tables by file name."""

    path: Path
    heads: pd.DataFrame
    summary: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    provenance: dict | None = None  # of the heads table (workbench.io.provenance), None when it carries none

    def score_columns(self) -> list[str]:
        """Numeric per-head columns (everything except layer and head)."""
        return [c for c in self.heads.columns if c not in ("layer", "head") and pd.api.types.is_numeric_dtype(self.heads[c])]


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet, CSV or JSON (records) table; never pickle.

    Raises:
        CensusDirError: unknown suffix or unreadable file.
    """
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            # a result file: {"heads": [...records], "provenance": {...}}; or a bare list of records
            return pd.DataFrame(obj["heads"] if isinstance(obj, dict) and "heads" in obj else obj)
    except Exception as err:  # pyarrow, parser and JSON errors all mean "unreadable"
        raise CensusDirError(f"cannot read table {path}: {err}") from None
    raise CensusDirError(f"{path} is not a .parquet, .csv or .json table")


def open_census_dir(path: str | Path) -> Census:
    """Open ``reports/<model>/``: ``heads.parquet`` (or .json/.csv), ``summary.json`` and other tables.

    Other ``*.parquet`` / ``*.csv`` files in the directory (e.g. a needle-in-a-haystack table with
    ``length, depth, accuracy`` or a massive-activation table) are read into ``tables``.

    Raises:
        CensusDirError: no heads table, or an unreadable file.
    """
    d = Path(str(path).strip()).expanduser()
    if not d.is_dir():
        raise CensusDirError(f"{d} is not a directory: enter a census directory such as reports/smollm2-135m")
    heads_path = next((d / f"heads{s}" for s in TABLE_SUFFIXES if (d / f"heads{s}").exists()), None)
    if heads_path is None:
        raise CensusDirError(f"{d} has no heads.parquet: write one with `workbench census`")
    heads = check_head_table(read_table(heads_path), str(heads_path))
    summary = {}
    if (d / "summary.json").exists():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CensusDirError(f"{d / 'summary.json'} is not valid JSON: {err}") from None
    tables = {}
    for p in sorted(d.iterdir()):
        if p.suffix in (".parquet", ".csv") and p.stem != "heads" and p.is_file():
            tables[p.name] = read_table(p)
    from workbench.io.provenance import read_provenance

    prov = summary.get("provenance") if isinstance(summary.get("provenance"), dict) else read_provenance(heads_path)
    return Census(d, heads, summary, tables, prov)


def table_kind(df: pd.DataFrame) -> str:
    """``"needle"``, ``"massive"``, ``"per-head"`` or ``"table"`` from a table's columns."""
    cols = set(df.columns)
    if NEEDLE_COLUMNS <= cols:
        return "needle"
    if MASSIVE_COLUMNS <= cols:
        return "massive"
    if {"layer", "head"} <= cols:
        return "per-head"
    return "table"


# --- uploads -----------------------------------------------------------------------------------


def check_upload(name: str, size: int, max_mb: float = MAX_UPLOAD_MB) -> None:
    """Raise :class:`UploadError` if a file is over the size limit or of a type we never read."""
    if size > max_mb * 2**20:
        raise UploadError(f"{name} is {size / 2**20:.1f} MiB, over the {max_mb} MiB upload limit: open it "
                          "from a local directory path instead")
    if not name.endswith((".safetensors", ".json", ".parquet", ".csv")):
        raise UploadError(f"{name}: only .safetensors, .json, .parquet and .csv files are read (never pickle)")


def parse_uploads(files: dict[str, bytes], max_mb: float = MAX_UPLOAD_MB) -> tuple[Trace | None, pd.DataFrame | None, dict]:
    """Interpret uploaded files by name: a trace (``trace.json`` + ``*.safetensors``), a per-head table, a summary.

    Args:
        files: file name -> bytes.

    Returns:
        (trace or None, per-head table or None, summary dict).

    Raises:
        UploadError: a file is too large, of the wrong type, unreadable, or a trace is incomplete.
        TraceFileError: the trace files are corrupt.
    """
    for name, data in files.items():
        check_upload(name, len(data), max_mb)
    trace = table = None
    summary: dict = {}
    tensors = [n for n in files if n.endswith(".safetensors")]
    if "trace.json" in files or tensors:
        if "trace.json" not in files or len(tensors) != 1:
            raise UploadError("a trace upload needs trace.json and one arrays.safetensors file together")
        with tempfile.TemporaryDirectory(prefix="wb-upload-") as tmp:
            (Path(tmp) / "trace.json").write_bytes(files["trace.json"])
            (Path(tmp) / "arrays.safetensors").write_bytes(files[tensors[0]])
            trace = Trace.load(tmp)  # validates metadata against the arrays (axis lengths, dtypes, sizes)
            # safetensors memory-maps; copy the arrays before the directory goes away
            trace.arrays = {k: v.clone() for k, v in trace.arrays.items()}
        trace_summary(trace)  # what the page draws first, here inside the caller's error handler
        trace_head_table(trace)
    for name, data in files.items():
        try:
            if name.endswith(".parquet"):
                table = pd.read_parquet(io.BytesIO(data))
            elif name.endswith(".csv"):
                table = pd.read_csv(io.BytesIO(data))
            elif name.endswith(".json") and name != "trace.json":
                doc = json.loads(data.decode("utf-8"))
                if isinstance(doc, list):
                    table = pd.DataFrame(doc)
                elif isinstance(doc, dict):
                    summary = doc
                else:
                    raise ValueError("expected a JSON list of records or an object")
        except Exception as err:
            raise UploadError(f"cannot read {name}: {err}") from None
    if table is not None:
        try:
            check_head_table(table, "the uploaded table")
        except CensusDirError as err:
            raise UploadError(str(err)) from None
    return trace, table, summary


def read_image_upload(name: str, data: bytes, max_mb: float = MAX_IMAGE_MB) -> np.ndarray:
    """Decode an uploaded PNG or JPEG image into uint8 RGB (H, W, 3) with PIL (nothing else is read).

    The size (``max_mb`` MiB) and the suffix are checked first, then PIL reads only the header with
    the formats restricted to PNG and JPEG and the pixel count is checked against
    :data:`MAX_IMAGE_PIXELS` before the pixels are decoded. Transparent pixels are laid on white
    (the background of the easy-VQA images).

    Raises:
        UploadError: too large, not .png/.jpg/.jpeg, not a PNG/JPEG file, too many pixels, or undecodable.
    """
    if len(data) > max_mb * 2**20:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MiB, over the {max_mb} MiB image upload limit: "
                          "upload a smaller PNG or JPEG")
    if not name.lower().endswith(IMAGE_SUFFIXES):
        raise UploadError(f"{name}: only .png, .jpg and .jpeg images are read")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise UploadError(f"{name} is {w} x {h} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit: "
                                  "upload a smaller image")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                out.alpha_composite(rgba)
                im2 = out.convert("RGB")
            else:
                im2 = im.convert("RGB")
            return np.asarray(im2, dtype=np.uint8).copy()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not a PNG or JPEG image") from None
    except Exception as err:  # truncated or corrupt files: PIL raises OSError, ValueError, SyntaxError...
        raise UploadError(f"cannot decode {name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """Parse ``"3.1, 7.4"`` (or ``3:1``; the head-set grammar of :mod:`workbench.core.headsets`) into
    [(3, 1), (7, 4)]; the model range-checks them when building.

    Raises:
        WorkbenchError: malformed entry.
    """
    return parse_head_set(spec, hint="layer.head or layer.head-layer.head, e.g. 3.1, 7.4")
