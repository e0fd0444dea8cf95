"""One pass per input: run each text window once and hand its trace to every analyzer that reads it.

An analyzer that works on windows of text is written as a *window consumer* (:class:`WindowConsumer`):
it declares the tracer statistics it reads (``needs``), may attach hooks of its own for the forward
pass (a residual-stream recorder, an attention hook), and takes each batch's
:class:`~workbench.core.trace.Trace` in ``consume``. :func:`run_windows` builds one
:class:`~workbench.core.tracer.Tracer` for the union of the consumers' needs and runs every batch of
windows exactly once, with every consumer's hooks active in that same forward pass. The census
(:mod:`workbench.report.census`) and the sinks report (:mod:`workbench.report.sinks_report`) are built
on it; :class:`ForwardLog` counts the forward passes that reach the model, which is how the tests check
that no window is run twice.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from .models import LoadedModel
from .trace import Trace
from .tracer import Tracer


class WindowConsumer(Protocol):
    """An analyzer fed by :func:`run_windows`.

    Attributes:
        needs: tracer statistics the consumer reads from each batch's trace (names of
            :data:`workbench.core.tracer.ALL_STATS`); ``()`` when it reads only its own hooks.
    """

    needs: Sequence[str]

    def hooks(self, ids: torch.Tensor, rows: range) -> contextlib.AbstractContextManager | None:
        """Hooks to have active during the forward pass of batch ``ids`` (B, N), windows ``rows``; None for none."""

    def consume(self, trace: Trace | None, ids: torch.Tensor, rows: range) -> None:
        """Take the batch's trace (None when no consumer needs a statistic)."""


@torch.no_grad()
def run_windows(lm: LoadedModel, windows: torch.Tensor, consumers: Iterable[WindowConsumer], batch_size: int = 1,
                progress: bool = True, desc: str = "windows", tracer_options: dict | None = None) -> int:
    """Run every window once, with one tracer for the union of the consumers' needs.

    Args:
        lm: the model.
        windows: (n, N) int64 token ids of equal length (no padding).
        consumers: the analyzers fed by this pass (:class:`WindowConsumer`).
        batch_size: windows per forward pass.
        progress: show a tqdm bar (stderr).
        desc: the bar's label.
        tracer_options: further :class:`~workbench.core.tracer.Tracer` arguments (e.g. ``received_sample_rows``).
    Returns:
        the number of forward passes run: ceil(n / batch_size).
    Raises:
        ContextTooLongError: N exceeds the context window.
    """
    consumers = list(consumers)
    stats = tuple(dict.fromkeys(s for c in consumers for s in c.needs))
    tracer = Tracer(lm, stats=stats, **(tracer_options or {})) if stats else None
    dev = getattr(lm, "device", windows.device)
    passes = 0
    if windows.dim() == 1:
        windows = windows[None]
    lm.spec.check_length(windows.shape[1])
    for a in tqdm(range(0, windows.shape[0], batch_size), desc=desc, disable=not progress):
        ids = windows[a:a + batch_size]
        rows = range(a, a + ids.shape[0])
        with contextlib.ExitStack() as stack:
            for c in consumers:
                cm = c.hooks(ids, rows)
                if cm is not None:
                    stack.enter_context(cm)
            if tracer is not None:
                trace = tracer.run(ids)
            else:
                trace = None
                lm.model(input_ids=ids.to(dev), use_cache=False)
        passes += 1
        for c in consumers:
            c.consume(trace, ids, rows)
    return passes


class ForwardLog:
    """Record the token ids of every forward pass of ``lm.model`` inside the ``with`` block.

    ``rows`` holds one tuple of token ids per batch row and pass (forward passes fed ``inputs_embeds``
    record nothing). :meth:`runs` counts how often a window was run.
    """

    def __init__(self, lm: LoadedModel):
        self.model = lm.model
        self.rows: list[tuple[int, ...]] = []
        self.passes = 0
        self._handle = None

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.passes += 1
        if ids is not None:
            self.rows += [tuple(r) for r in torch.as_tensor(ids).reshape(-1, ids.shape[-1]).tolist()]

    def __enter__(self) -> "ForwardLog":
        self._handle = self.model.register_forward_pre_hook(self._pre, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def runs(self, window: Sequence[int] | torch.Tensor, prefixes: bool = True) -> int:
        """Forward rows that ran ``window`` (N,): the window itself or, with ``prefixes``, a prefix of it (the
        same tokens at the same positions, whose causal attention is that of the window's first queries)."""
        w = tuple(torch.as_tensor(window).reshape(-1).tolist())
        return sum(1 for r in self.rows if r == w or (prefixes and len(r) < len(w) and w[:len(r)] == r))
