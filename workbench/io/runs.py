"""The run folder: where every command writes, and where later commands look for earlier results.

Every command writes under one output root (``--out ROOT``, default :data:`DEFAULT_ROOT` = ``runs/``,
git-ignored), in a folder per model and analysis::

    runs/<model-slug>/                 census: heads.parquet/.csv/.json, summary.json, census.html
    runs/<model-slug>/sinks.json|html  sinks
    runs/<model-slug>/head_types.*     heads
    runs/<model-slug>/retrieval/       retrieval sweep, ablate, masking-test
    runs/<model-slug>/circuits/        patch
    runs/<model-slug>/probes/          probe
    runs/<model-slug>/act/             calibrate
    runs/<model-slug>/trace/           trace
    runs/<model-slug>/studies/<name>/  study run
    runs/<model-slug>/hallucination/   hallucination answer cache

The committed ``reports/`` folder has the same layout (``workbench reproduce`` writes it with
``--out reports``); it never feeds a computation unless the user names it (``--scores``,
``--tables``, ``--retrieval-from``, a study head set's ``path``).
"""
from __future__ import annotations

import re
from pathlib import Path

DEFAULT_ROOT = Path("runs")


def model_slug(name: str) -> str:
    """A readable folder name for a model: a preset or hub id as is (``/`` -> ``--``); a local path by its
    last component (``/tmp/my-ckpt/`` -> ``my-ckpt``), never ``--tmp--my-ckpt``."""
    p = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or (p.exists() and p.is_dir()):
        stem = p.resolve().name or "model"
    else:
        stem = name.strip("/").replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "model"


def model_dir(root: str | Path | None, model: str) -> Path:
    """``<root>/<model-slug>`` (root None: :data:`DEFAULT_ROOT`)."""
    return Path(DEFAULT_ROOT if root is None else root) / model_slug(model)


def run_dir(root: str | Path | None, model: str, analysis: str | None = None) -> Path:
    """``<root>/<model-slug>/<analysis>`` (the model folder itself when ``analysis`` is None)."""
    d = model_dir(root, model)
    return d / analysis if analysis else d
