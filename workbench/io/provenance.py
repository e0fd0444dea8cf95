"""Provenance of every result: which code, weights, configuration, seed and machine made it.

:func:`collect` returns one JSON-ready dict::

    {"workbench_version": "0.1.0", "git_commit": "8c07c2c...", "git_dirty": False,
     "model": {"id": "smollm2-135m", "preset": "smollm2-135m", "path": None, "architecture": "llama"},
     "weights_sha256": "3f1a...", "config": {...}, "config_hash": "9b2e...", "seed": 0,
     "torch": "2.13.0", "transformers": "5.0.0", "date": "2026-12-01T09:00:00+00:00",
     "device": "cpu", "dtype": "torch.float32"}

Where it is stored:

* JSON results: the top-level key ``"provenance"``;
* Parquet tables: the schema metadata key ``"workbench.provenance"`` (a JSON string),
  :func:`write_parquet` / :func:`read_provenance`;
* HTML pages: a footer from :func:`footer_html` (readable text, the configuration in a
  ``<details>``, and the same dict as an embedded ``application/json`` script so
  :func:`read_provenance` can read a page back);
* CSV tables (kept beside Parquet for spreadsheets): a sidecar ``<name>.csv.provenance.json``,
  :func:`write_csv`;
* Markdown reports: a last line ``<!-- workbench-provenance: {...} -->``, :func:`markdown_footer`;
* JSON-lines checkpoints and caches: the header line's ``"provenance"`` (:func:`workbench.io.jsonl.open_checkpoint`);
* safetensors files: the metadata key ``workbench.provenance`` (a JSON string).

:func:`missing_provenance` lists the files of a results tree that carry none (the check ``workbench
reproduce`` and its test apply to every file it writes).

``weights_sha256`` is the SHA-256 of the model's state dict: every tensor's name, dtype, shape and
raw bytes, in sorted name order. It is computed once per loaded model (kept in ``lm.extras``),
about a second for SmolLM2-135M's 540 MB. :func:`check_same_weights` refuses to merge results of
different weights.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import html as _html
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import WorkbenchError

PARQUET_KEY = b"workbench.provenance"
JSON_KEY = "provenance"
HTML_SCRIPT_ID = "workbench-provenance"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ProvenanceError(WorkbenchError):
    """Results made by other weights would be merged, or a saved result carries no provenance."""


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, non-JSON values as ``str``): the text that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict | None) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of ``config``."""
    return hashlib.sha256(canonical_json(config or {}).encode()).hexdigest()


def code_sha256(modules: Iterable[str]) -> str:
    """SHA-256 (hex) of the source files of ``modules`` (dotted names, e.g. ``"workbench.studies.retrieval_sweep"``).

    Resume checkpoints and caches put it in their configuration, so a code change that could move a
    result makes earlier records a mismatch (resume) or a miss (cache).

    Raises:
        ModuleNotFoundError: a module does not exist.
    """
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def _git() -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout this package runs from; (None, False) outside a git checkout."""
    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None, False
    # the code's state: results folders (the committed reference reports, git-ignored runs/) are outputs, not code,
    # so a run that rewrites reports/ does not mark its own provenance dirty
    status = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports", ":(exclude)runs")
    return commit.strip(), bool(status and status.strip())


@lru_cache(maxsize=1)
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        wb = version("attention-workbench")
    except PackageNotFoundError:
        wb = "unknown"
    return {"workbench_version": wb, "torch": torch.__version__, "transformers": transformers.__version__}


def weights_sha256(lm) -> str:
    """SHA-256 (hex) of ``lm``'s weights: name, dtype, shape and bytes of every state-dict tensor, sorted by name.

    Cached in ``lm.extras["weights_sha256"]``; changing weights in place after the first call is not seen
    (load the model again).
    """
    cached = lm.extras.get("weights_sha256")
    if cached:
        return cached
    import torch

    h = hashlib.sha256()
    state = lm.model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    lm.extras["weights_sha256"] = h.hexdigest()
    return lm.extras["weights_sha256"]


def model_info(lm) -> dict:
    """``{"id", "preset", "path", "architecture"}`` of a loaded model."""
    from ..core.presets import PRESETS

    name = lm.spec.name
    p = Path(name).expanduser()
    return {"id": name, "preset": name if name in PRESETS else None,
            "path": str(p.resolve()) if name not in PRESETS and p.exists() else None,
            "architecture": lm.spec.architecture}


def collect(lm=None, config: dict | None = None, seed: int | None = None) -> dict:
    """Provenance of a result (module docstring): code, model and weights hash, configuration, seed, versions.

    Args:
        lm: the LoadedModel the result was computed with (None: no model fields).
        config: the full configuration of the computation (JSON-ready; other values are hashed as ``str``).
        seed: the random seed used, if any.
    Returns:
        a JSON-ready dict with keys workbench_version, git_commit, git_dirty, model, weights_sha256, config,
        config_hash, seed, torch, transformers, date (ISO 8601, UTC), device, dtype.
    """
    commit, dirty = _git()
    device = dtype = None
    if lm is not None:
        par = next(iter(lm.model.parameters()), None)
        if par is not None:
            device, dtype = str(par.device), str(par.dtype)
    cfg = json.loads(canonical_json(config or {}))
    return {"workbench_version": _versions()["workbench_version"], "git_commit": commit, "git_dirty": dirty,
            "model": model_info(lm) if lm is not None else None,
            "weights_sha256": weights_sha256(lm) if lm is not None else None,
            "config": cfg, "config_hash": config_hash(cfg), "seed": seed,
            "torch": _versions()["torch"], "transformers": _versions()["transformers"],
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "dtype": dtype}


# --- files -------------------------------------------------------------------------------------------


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


def _short(h: str | None, n: int = 12) -> str:
    return h[:n] if h else "unknown"


def describe(prov: dict | None) -> str:
    """One line: code version and commit, model and weights hash prefix, date, device, seed."""
    if not prov:
        return "no provenance recorded"
    m = prov.get("model") or {}
    dirty = " (uncommitted changes)" if prov.get("git_dirty") else ""
    return (f"workbench {prov.get('workbench_version')} at {_short(prov.get('git_commit'))}{dirty}; "
            f"model {m.get('id', 'none')} (weights {_short(prov.get('weights_sha256'))}); "
            f"{prov.get('date')} on {prov.get('device')} {prov.get('dtype') or ''}; seed {prov.get('seed')}; "
            f"config {_short(prov.get('config_hash'))}").replace("  ", " ")


def footer_html(prov: dict | None) -> str:
    """An HTML footer: code version + commit + dirty flag, model + weights hash prefix, date, device, seed,
    torch/transformers versions, and the configuration in a ``<details>``; embeds ``prov`` as JSON."""
    if not prov:
        return "<footer class='workbench-provenance'><hr><p>provenance not recorded for this page (written before runs recorded their provenance).</p></footer>"
    e = _html.escape
    m = prov.get("model") or {}
    if not isinstance(m, dict):  # a bare model name
        m = {"id": str(m)}
    where = m.get("preset") and f"preset {m['preset']}" or m.get("path") or m.get("id", "none")
    dirty = " <b>with uncommitted changes</b>" if prov.get("git_dirty") else ""
    cfg = json.dumps(prov.get("config") or {}, indent=1, sort_keys=True, default=str)
    data = canonical_json(prov).replace("</", "<\\/")
    return ("<footer class='workbench-provenance' style='font-size:0.85em;color:#444'><hr>"
            f"<p>Made by workbench {e(str(prov.get('workbench_version')))}, commit "
            f"<code>{e(_short(prov.get('git_commit')))}</code>{dirty}; "
            f"model <code>{e(str(m.get('id', 'none')))}</code> ({e(str(where))}), weights sha256 "
            f"<code>{e(_short(prov.get('weights_sha256')))}</code>; "
            f"{e(str(prov.get('date')))} on {e(str(prov.get('device')))} ({e(str(prov.get('dtype')))}); "
            f"seed {e(str(prov.get('seed')))}; torch {e(str(prov.get('torch')))}, transformers "
            f"{e(str(prov.get('transformers')))}.</p>"
            f"<details><summary>configuration (sha256 <code>{e(_short(prov.get('config_hash')))}</code>)</summary>"
            f"<pre>{e(cfg)}</pre></details>"
            f'<script type="application/json" id="{HTML_SCRIPT_ID}">{data}</script></footer>')


def check_same_weights(prov_a: dict | None, prov_b: dict | None, what_a: str = "this run",
                       what_b: str = "the saved result") -> None:
    """Refuse to merge two results unless they were computed on the same weights.

    Raises:
        ProvenanceError: either carries no weights hash, or the hashes differ (one line, naming both).
    """
    a = (prov_a or {}).get("weights_sha256")
    b = (prov_b or {}).get("weights_sha256")
    if not a or not b:
        missing = what_a if not a else what_b
        raise ProvenanceError(f"{missing} carries no weights hash (no provenance): recompute it with this "
                              "version of the workbench")
    if a != b:
        ma = ((prov_a or {}).get("model") or {}).get("id")
        mb = ((prov_b or {}).get("model") or {}).get("id")
        raise ProvenanceError(f"{what_b} was computed on other weights ({mb}, sha256 {b[:12]}) than {what_a} "
                              f"({ma}, sha256 {a[:12]}): recompute it with this model or name a result of the same weights")


def check_file_weights(path: str | Path, prov: dict, what: str | None = None) -> dict:
    """:func:`check_same_weights` between ``prov`` (this run) and the provenance saved at ``path``; returns it.

    Raises:
        ProvenanceError: ``path`` carries no provenance or was computed on other weights.
    """
    saved = read_provenance(path)
    check_same_weights(prov, saved, "this model", what or str(path))
    return saved


def check_model_weights(path: str | Path, lm, what: str | None = None) -> dict:
    """Check that the result saved at ``path`` was computed on ``lm``'s weights; returns its provenance.

    Raises:
        ProvenanceError: ``path`` carries no provenance or was computed on other weights (one line).
    """
    here = {"weights_sha256": weights_sha256(lm), "model": model_info(lm)}
    return check_file_weights(path, here, what)
