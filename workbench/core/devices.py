"""Device and dtype of a model: ``"auto"`` and the names the CLI and ``load_model`` accept."""
from __future__ import annotations

from typing import Any

import torch


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise the named device (``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        WorkbenchError: an unknown device, or CUDA asked for on a machine without it.
    """
    from .errors import WorkbenchError

    if isinstance(device, torch.device):
        dev = device
    elif device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device))
        except RuntimeError:
            raise WorkbenchError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {device!r} asked for, but this torch has no CUDA device: use --device cpu (or auto)")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None,
                  checkpoint_dtype: torch.dtype | None = None) -> torch.dtype:
    """``"auto"``: float32 on the CPU, the checkpoint's dtype (float32 if it names none) on a GPU; otherwise
    ``float32``, ``bfloat16`` or ``float16`` (or a ``torch.dtype``).

    Raises:
        WorkbenchError: an unknown dtype.
    """
    from .errors import WorkbenchError

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device is None or device.type == "cpu":
            return torch.float32
        return checkpoint_dtype if checkpoint_dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    if str(dtype) not in DTYPES:
        raise WorkbenchError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return DTYPES[str(dtype)]


def _checkpoint_dtype(config: Any) -> torch.dtype | None:
    text = getattr(config, "text_config", None) or config
    for c in (config, text):
        dt = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        if isinstance(dt, str):
            dt = DTYPES.get(dt)
        if isinstance(dt, torch.dtype):
            return dt
    return None
