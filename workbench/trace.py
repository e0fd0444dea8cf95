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

        ``provenance`` (:func:`workbench.provenance.collect`) goes under the top-level key ``"provenance"``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.arrays.items()}, str(d / "arrays.safetensors"))
        doc = {"format": FORMAT, "dims": {k: list(v) for k, v in self.dims.items()}, "meta": self.meta}
        if provenance is not None:
            doc["provenance"] = provenance
        (d / "trace.json").write_text(json.dumps(doc, indent=1, default=_json_default))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Trace":
        """Read a trace written by :meth:`save`.

        Raises:
            TraceFileError: files missing, not JSON / safetensors, or arrays and axis names disagree.
        """
        d = Path(directory)
        meta_path, arr_path = d / "trace.json", d / "arrays.safetensors"
        if not meta_path.exists() or not arr_path.exists():
            raise TraceFileError(f"{d} is not a trace directory: it needs trace.json and arrays.safetensors (write one with `workbench trace`)")
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
        dims = {k: tuple(v) for k, v in doc.get("dims", {}).items()}
        if set(dims) != set(arrays):
            raise TraceFileError(f"corrupt trace in {d}: arrays {sorted(arrays)} do not match axis names {sorted(dims)}")
        for k, v in arrays.items():
            if v.dim() != len(dims[k]):
                raise TraceFileError(f"corrupt trace in {d}: array {k!r} has {v.dim()} dimensions, axis names say {len(dims[k])}")
        return cls(arrays=arrays, dims=dims, meta=doc.get("meta", {}))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
