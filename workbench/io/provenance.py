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

Modules: :mod:`.provenance_collect` (collecting it, the hashes), :mod:`.provenance_files` (writing and
reading result files), :mod:`.provenance_show` (the line and the page footer) and :mod:`.provenance_checks`
(refusing other weights); every name stays importable from here.
"""
from __future__ import annotations

from .provenance_checks import check_file_weights, check_model_weights, check_same_weights
from .provenance_collect import (HTML_SCRIPT_ID, JSON_KEY, PARQUET_KEY, REPO_ROOT, ProvenanceError, canonical_json,
                                 code_sha256, collect, config_hash, model_info, split_parts, weights_sha256)
from .provenance_files import (MD_MARK, NOT_RESULTS, markdown_footer, missing_provenance, read_provenance, sidecar,
                               with_provenance, write_csv, write_json, write_parquet)
from .provenance_show import describe, footer_html

__all__ = [
    "HTML_SCRIPT_ID", "JSON_KEY", "MD_MARK", "NOT_RESULTS", "PARQUET_KEY", "REPO_ROOT", "ProvenanceError",
    "canonical_json", "check_file_weights", "check_model_weights", "check_same_weights", "code_sha256", "collect",
    "config_hash", "describe", "footer_html", "markdown_footer", "missing_provenance", "model_info",
    "read_provenance", "sidecar", "split_parts", "weights_sha256", "with_provenance", "write_csv", "write_json",
    "write_parquet",
]
