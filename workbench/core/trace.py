"""The trace: named-axis arrays plus metadata, saved as safetensors + JSON.

A :class:`Trace` holds tensors keyed by name, each with a tuple of axis names, e.g.

=================  ==========================================  ==========================
name               axes                                        meaning
=================  ==========================================  ==========================
``pattern``        (layer, batch, head, query, key)             A[i,j] for a query window
``received``       (layer, batch, head, key)                   mean received attention s_k
``received_bound`` (layer, batch, key)                         its error bound, when row-sampled
``entropy``        (layer, batch, head, query)                 attention entropy (nats)
``distance``       (layer, batch, head, query)                 mean attention distance (tokens)
``top_key``        (layer, batch, head, query)                 argmax_j A[i,j]
``mass.<set>``     (layer, batch, head, query)                 sum_{k in set} A[i,k]
``z``              (layer, batch, query, head, d_head)         head output before W_O
``resid_pre``      (layer, batch, pos, d_model)                residual stream entering a layer
``tokens``         (batch, pos)                                input ids
=================  ==========================================  ==========================

``meta`` is JSON: the model name, the recorded ``layers`` and ``heads`` (the values along
those axes), the query window of ``pattern`` and the token strings. TransformerLens hook
names resolve through :meth:`Trace.hook` (``blocks.{l}.attn.hook_pattern``, ``hook_z``,
``blocks.{l}.hook_resid_pre``). Files never use pickle.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import HeadIndexError, TraceFileError

FORMAT = "workbench-trace/1"
# the axes of each known array (``mass.<set>`` shares ``entropy``'s); loading checks a file against them
KNOWN_DIMS = {
    "pattern": ("layer", "batch", "head", "query", "key"), "received": ("layer", "batch", "head", "key"),
    "received_bound": ("layer", "batch", "key"), "entropy": ("layer", "batch", "head", "query"),
    "distance": ("layer", "batch", "head", "query"), "top_key": ("layer", "batch", "head", "query"),
    "top_prob": ("layer", "batch", "head", "query"), "z": ("layer", "batch", "query", "head", "d_head"),
    "resid_pre": ("layer", "batch", "pos", "d_model"), "tokens": ("batch", "pos"),
}
INTEGER_ARRAYS = ("top_key", "tokens")
MAX_META_BYTES = 64 << 20  # trace.json (token strings included)
MAX_INDEX = 1 << 16  # no model has more layers or heads than this
_HOOK = re.compile(r"^blocks\.(\d+)\.(attn\.hook_pattern|attn\.hook_z|hook_resid_pre)$")
_HOOK_ARRAY = {"attn.hook_pattern": "pattern", "attn.hook_z": "z", "hook_resid_pre": "resid_pre"}


@dataclass
class Trace:
    """Named-axis arrays (see module docstring) and JSON metadata."""

    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def add(self, name: str, tensor: torch.Tensor, dims: tuple[str, ...]) -> None:
        """Store ``tensor`` under ``name`` with axis names ``dims`` (one per tensor dimension)."""
        if tensor.dim() != len(dims):
            raise ValueError(f"array {name!r} has {tensor.dim()} dimensions but {len(dims)} axis names {dims}")
        self.arrays[name] = tensor
        self.dims[name] = tuple(dims)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.arrays:
            raise KeyError(f"trace has no array {name!r}; it has {sorted(self.arrays)}")
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    @property
    def layers(self) -> list[int]:
        return list(self.meta.get("layers", []))

    @property
    def heads(self) -> list[int]:
        return list(self.meta.get("heads", []))

    def layer_index(self, layer: int) -> int:
        """Position of model layer ``layer`` along the ``layer`` axis; HeadIndexError if not recorded."""
        if layer not in self.layers:
            raise HeadIndexError(f"layer {layer} was not recorded in this trace (recorded: {self.layers})")
        return self.layers.index(layer)

    def head_index(self, head: int) -> int:
        """Position of model head ``head`` along the ``head`` axis; HeadIndexError if not recorded."""
        if head not in self.heads:
            raise HeadIndexError(f"head {head} was not recorded in this trace (recorded: {self.heads})")
        return self.heads.index(head)

    def hook(self, name: str) -> torch.Tensor:
        """Array for a TransformerLens hook name, e.g. ``blocks.3.attn.hook_pattern`` -> (batch, head, query, key)."""
        m = _HOOK.match(name)
        if not m:
            raise KeyError(f"{name!r} is not a supported hook name (blocks.L.attn.hook_pattern, blocks.L.attn.hook_z, blocks.L.hook_resid_pre)")
        arr = self[_HOOK_ARRAY[m.group(2)]]
        return arr[self.layer_index(int(m.group(1)))]

    def to_frame(self, name: str) -> pd.DataFrame:
        """Long-form DataFrame of one array: a column per axis (model layer/head numbers) plus ``value``."""
        arr = self[name]
        dims = self.dims[name]
        index = pd.MultiIndex.from_product([self._coords(d, n, name) for d, n in zip(dims, arr.shape)],
                                           names=list(dims))
        return pd.DataFrame({"value": arr.detach().float().reshape(-1).numpy()}, index=index).reset_index()

    def _coords(self, dim: str, n: int, name: str = "") -> list[int]:
        """Model numbers along an axis: recorded layers/heads, absolute query positions."""
        if dim == "layer" and len(self.layers) == n:
            return self.layers
        if dim == "head" and len(self.heads) == n:
            return self.heads
        if dim == "query":
            # the pattern window starts at ``query_start``; row statistics at ``rows_from``
            start = self.meta.get("query_start", 0) if name == "pattern" else self.meta.get("rows_from", 0)
            return list(range(start, start + n))
        return list(range(n))

    # --- files -----------------------------------------------------------------------------

    def save(self, directory: str | Path, provenance: dict | None = None) -> Path:
        """Write ``arrays.safetensors`` and ``trace.json`` into ``directory`` (created if needed).

        ``provenance`` (:func:`workbench.io.provenance.collect`) goes under the top-level key ``"provenance"`` of
        ``trace.json`` and into the safetensors metadata (key ``workbench.provenance``, a JSON string).
        """
        from ..io.provenance import PARQUET_KEY, canonical_json

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = None if provenance is None else {PARQUET_KEY.decode(): canonical_json(provenance)}
        save_file({k: v.detach().contiguous() for k, v in self.arrays.items()}, str(d / "arrays.safetensors"), metadata=meta)
        doc = {"format": FORMAT, "dims": {k: list(v) for k, v in self.dims.items()}, "meta": self.meta}
        if provenance is not None:
            doc["provenance"] = provenance
        (d / "trace.json").write_text(json.dumps(doc, indent=1, default=_json_default))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Trace":
        """Read a trace written by :meth:`save`.

        Raises:
            TraceFileError: files missing, not JSON / safetensors, or the arrays disagree with their axis names
                or the metadata (axis lengths vs ``layers`` / ``heads``, dtypes, batch sizes, token strings).
        """
        d = Path(directory)
        meta_path, arr_path = d / "trace.json", d / "arrays.safetensors"
        if not meta_path.exists() or not arr_path.exists():
            raise TraceFileError(f"{d} is not a trace directory: it needs trace.json and arrays.safetensors (write one with `workbench trace`)")
        if meta_path.stat().st_size > MAX_META_BYTES:
            raise TraceFileError(f"{meta_path} is over {MAX_META_BYTES >> 20} MiB: not a workbench trace's metadata")
        try:
            doc = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TraceFileError(f"corrupt trace file {meta_path}: not valid JSON ({err.msg if hasattr(err, 'msg') else err}); re-create the trace") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TraceFileError(f"{meta_path} is not a {FORMAT} file; re-create the trace with this version of the workbench")
        try:
            arrays = load_file(str(arr_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise TraceFileError(f"corrupt trace file {arr_path}: {err}; re-create the trace") from None
        raw_dims = doc.get("dims", {})
        if not isinstance(raw_dims, dict) or not all(isinstance(v, list) and all(isinstance(a, str) for a in v)
                                                     for v in raw_dims.values()):
            raise TraceFileError(f"corrupt trace in {d}: `dims` must map array names to lists of axis names; re-create the trace")
        dims = {k: tuple(v) for k, v in raw_dims.items()}
        if set(dims) != set(arrays):
            raise TraceFileError(f"corrupt trace in {d}: arrays {sorted(arrays)} do not match axis names {sorted(dims)}")
        meta = doc.get("meta", {})
        _validate(d, arrays, dims, meta)
        return cls(arrays=arrays, dims=dims, meta=meta)


def _validate(d: Path, arrays: dict[str, torch.Tensor], dims: dict[str, tuple[str, ...]], meta) -> None:
    """Check a loaded trace before anything uses it: every array's axes, dtype and lengths agree with the
    metadata (layers, heads, batch, token strings), so no later step sizes its work by an unchecked number.

    Raises:
        TraceFileError: the first disagreement, named.
    """
    def bad(msg: str) -> TraceFileError:
        return TraceFileError(f"corrupt trace in {d}: {msg}; re-create the trace with `workbench trace`")

    if not isinstance(meta, dict):
        raise bad("`meta` is not a JSON object")
    for key in ("layers", "heads"):
        v = meta.get(key, [])
        if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_INDEX
                                              for i in v):
            raise bad(f"meta.{key} must be a list of indices 0..{MAX_INDEX - 1}")
        if len(set(v)) != len(v):
            raise bad(f"meta.{key} lists an index twice")
    for key in ("n_layers", "n_heads", "query_start", "rows_from"):
        v = meta.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INDEX * 16:
            raise bad(f"meta.{key} = {v!r} is not a small non-negative integer")
    for key, n_key in (("layers", "n_layers"), ("heads", "n_heads")):
        if meta.get(n_key) and any(i >= meta[n_key] for i in meta.get(key, [])):
            raise bad(f"meta.{key} lists an index >= meta.{n_key} = {meta[n_key]}")
    axis_len = {"layer": len(meta.get("layers", [])), "head": len(meta.get("heads", []))}
    for name, t in arrays.items():
        want = KNOWN_DIMS.get("entropy" if name.startswith("mass.") else name)
        if want is not None and dims[name] != want:
            raise bad(f"array {name!r} has axes {list(dims[name])}, expected {list(want)}")
        if t.dim() != len(dims[name]):
            raise bad(f"array {name!r} has {t.dim()} dimensions, axis names say {len(dims[name])}")
        integer = name in INTEGER_ARRAYS
        if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise bad(f"array {name!r} must hold integers, not {t.dtype}")
        if not integer and not t.is_floating_point():
            raise bad(f"array {name!r} must hold floats, not {t.dtype}")
        for axis, n in zip(dims[name], t.shape):
            if axis in ("layer", "head") and n != axis_len[axis]:
                raise bad(f"array {name!r} has {n} entries along {axis!r} but meta lists {axis_len[axis]} {axis}s")
    # (received_bound may have batch 1 for an unpadded batch: it broadcasts)
    batches = {int(t.shape[dims[k].index("batch")]) for k, t in arrays.items() if "batch" in dims[k] and k != "received_bound"}
    if len(batches) > 1:
        raise bad(f"arrays disagree on the batch size ({sorted(batches)})")
    strings = meta.get("token_strings")
    if strings is not None:
        if not isinstance(strings, list) or not all(isinstance(r, list) and all(isinstance(x, str) for x in r)
                                                    for r in strings):
            raise bad("meta.token_strings must be a list of lists of strings")
        if "tokens" in arrays and [len(r) for r in strings] != [arrays["tokens"].shape[1]] * arrays["tokens"].shape[0]:
            raise bad("meta.token_strings does not match the tokens array's shape")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
