"""Collecting provenance: the code (commit, source hashes), the model and its weights hash, the configuration
and its hash, the seed, the versions and the machine of a result (:func:`collect`)."""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
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
    """SHA-256 (hex) of the source files of ``modules`` (dotted names, e.g. ``"workbench.studies.retrieval_sweep"``)
    and of the modules of their own package that they import at module level (``from .part import ...``,
    followed on; :func:`split_parts`): a module that re-exports the parts it was split into hashes them too.

    Resume checkpoints and caches put it in their configuration, so a code change that could move a
    result makes earlier records a mismatch (resume) or a miss (cache).

    Raises:
        ModuleNotFoundError: a module does not exist.
    """
    import importlib.util

    names, todo = set(), sorted(set(modules))
    while todo:
        name = todo.pop()
        if name in names:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        names.add(name)
        todo += split_parts(name, Path(spec.origin))
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b"\0" + Path(importlib.util.find_spec(name).origin).read_bytes() + b"\0")
    return h.hexdigest()


def split_parts(name: str, origin: Path) -> list[str]:
    """Modules of ``name``'s own package that its source (file ``origin``) imports at module level with a
    relative import (``from .part import x`` or ``from . import part``), those that exist as files."""
    package = name if origin.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.parse(origin.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            subs = [node.module] if node.module else [a.name for a in node.names]
            out += [f"{package}.{m}" for m in subs if (origin.parent / f"{m.replace('.', '/')}.py").exists()]
    return out


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
