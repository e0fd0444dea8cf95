"""Shared helpers for benchmark scripts: wall time and peak extra resident memory of a callable."""
from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time

import psutil
import torch


def _release_freed_memory() -> None:
    """Hand memory freed by earlier runs back to the OS (glibc ``malloc_trim``), so that a run's extra resident
    memory is measured from what is live, not hidden by re-use of pages an earlier run left mapped."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass


class PeakRSS:
    """Context manager sampling this process's resident memory every ``interval`` s; ``.peak`` is the
    highest RSS seen minus the RSS at entry (bytes), i.e. the extra memory the block needed."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0

    def __enter__(self):
        gc.collect()
        _release_freed_memory()
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._max = max(self._max, self._proc.memory_info().rss)
        self._stop.set()
        self._thread.join()
        self.peak = self._max - self._base


def measure(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Median wall seconds over ``repeats`` runs and the largest extra RSS (MiB) of any run."""
    for _ in range(warmup):
        fn()
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRSS() as m:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        peaks.append(m.peak)
        gc.collect()
    return {"seconds": statistics.median(times), "peak_mib": max(peaks) / 2**20}


def plain_forward(model, ids, **kwargs) -> None:
    """One forward pass of ``model`` over ``ids`` with transformers' stock SDPA attention instead of the workbench's
    (the baseline of every ratio), no cache; the workbench attention is set back afterwards."""
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            model(ids, use_cache=False, **kwargs)
    finally:
        model.set_attn_implementation("workbench")
