"""Refusing to merge results of different weights: compare the weights hashes of two provenances, of a run
and a saved file, or of a loaded model and a saved file."""
from __future__ import annotations

from pathlib import Path

from .provenance_collect import ProvenanceError, model_info, weights_sha256
from .provenance_files import read_provenance


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
