"""The tracer: record attention statistics, maps, head outputs and residuals during a forward pass.

Usage::

    lm = load_model("smollm2-135m")
    tracer = Tracer(lm, stats=("received", "entropy", "distance"), pattern_window=(0, 64), z=True)
    trace = tracer.run(ids)          # or: with tracer: lm.model.generate(ids, ...); trace = tracer.trace()

The tracer is an :class:`~workbench.core.attention.AttentionHook`: for each attention call of a
recorded layer it computes what was asked from the call's q, k and log-sum-exp
(:mod:`workbench.core.stats`), never from an N x N map, except the explicit ``pattern_window``,
which is bounded by ``memory_budget_bytes``. Calls during ``generate()`` append query rows
(row statistics, ``z``, pattern rows) and accumulate received attention over all queries
(:mod:`.tracer_received`); :mod:`.tracer_result` assembles the :class:`Trace`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Iterable, Sequence

import torch

from . import stats as S
from .attention import AttentionCall, attention_hooks
from .errors import MemoryBudgetError, WorkbenchError
from .hooks import residual_pre_hooks
from .models import LoadedModel
from .trace import Trace
from .tracer_received import accumulate_received, received_bound
from .tracer_result import assemble_trace, check_recorded

ROW_STATS = S.ROW_STATS
ALL_STATS = ("received",) + ROW_STATS
DEFAULT_BUDGET = 2 << 30  # 2 GiB of attention maps


class Tracer:
    """Record attention statistics of chosen layers and heads.

    Args:
        lm: a :class:`~workbench.core.models.LoadedModel`.
        layers: decoder layers to record (default all).
        heads: query heads to record (default all); applies to every array.
        stats: subset of ``("received", "entropy", "distance", "top_key", "top_prob")``.
        key_sets: name -> 1-D tensor of key positions; records ``mass.<name>`` (layer, batch, head, query),
            the attention mass each query puts on those keys.
        pattern_window: (q_start, q_stop) absolute query positions whose full attention rows
            (over keys 0..q_stop-1) are stored as ``pattern``.
        z: record head outputs ``z`` (layer, batch, query, head, d_head) (TransformerLens ``hook_z``).
        resid_pre: record the residual stream entering each layer (layer, batch, pos, d_model).
        memory_budget_bytes: bound on the bytes of ``pattern``; exceeding it raises MemoryBudgetError.
        chunk_elements: score-block size for the chunked statistics.
        received_sample_rows: estimate ``received`` from this many uniformly sampled query rows per
            attention call instead of all of them (O(m N) instead of O(N^2) per head), when no row
            statistic is recorded. The trace then also holds ``received_bound`` (layer, batch, key), the
            Hoeffding-Serfling half-width (:func:`workbench.core.stats.hoeffding_serfling_bound`) that each
            entry of ``received`` is within with probability ``1 - bound_delta``. Over several calls
            (``generate()``: a sampled prefill, then exact decode steps) each call is weighted by the
            queries it stands for and the bounds are combined (:meth:`_received_bound`). None = exact.
        bound_delta: failure probability of that bound, per entry.
        seed: seed of the row sample (the same rows in every layer).
        rows_from: record nothing for queries before this absolute position (statistics, key-set mass,
            ``z``); e.g. the prompt length, to record only the tokens ``generate()`` decodes, as retrieval
            scoring needs, without computing statistics for every prompt row. Row arrays then start at
            query ``rows_from`` (``meta["rows_from"]``) and ``received`` averages over those queries only.

    Every key index in a trace is an absolute position in the input: ``top_key``, the keys of ``received``,
    ``key_sets`` and the pattern's key axis, also while ``generate()`` decodes on a sliding-window cache
    (whose calls see only the last W keys; :attr:`~workbench.core.attention.AttentionCall.key_positions`).

    Raises:
        HeadIndexError: a layer or head is out of range.
        WorkbenchError: an empty list of layers or heads (it would record nothing).
        ValueError: an unknown statistic name.
    """

    def __init__(self, lm: LoadedModel, layers: Iterable[int] | None = None, heads: Iterable[int] | None = None,
                 stats: Sequence[str] = (), key_sets: dict[str, torch.Tensor] | None = None,
                 pattern_window: tuple[int, int] | None = None, z: bool = False, resid_pre: bool = False,
                 memory_budget_bytes: int = DEFAULT_BUDGET, chunk_elements: int = S.DEFAULT_CHUNK_ELEMENTS,
                 received_sample_rows: int | None = None, bound_delta: float = S.DEFAULT_BOUND_DELTA, seed: int = 0,
                 rows_from: int = 0):
        spec = lm.spec
        self.lm = lm
        self.layers = list(range(spec.n_layers)) if layers is None else sorted(set(int(x) for x in layers))
        self.heads = list(range(spec.n_heads)) if heads is None else sorted(set(int(x) for x in heads))
        if not self.layers or not self.heads:
            raise WorkbenchError(f"choose at least one {'layer' if not self.layers else 'head'} to trace: an empty "
                                 "list records nothing (leave it out for all)")
        for layer in self.layers:
            spec.check_head(layer)
        for h in self.heads:
            spec.check_head(self.layers[0] if self.layers else 0, h)
        unknown = set(stats) - set(ALL_STATS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; choose from {ALL_STATS}")
        self.stats = tuple(stats)
        self.key_sets = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1) for k, v in (key_sets or {}).items()}
        self.pattern_window = pattern_window
        if pattern_window is not None and not 0 <= pattern_window[0] < pattern_window[1]:
            raise ValueError(f"pattern_window {pattern_window} must be (q_start, q_stop) with 0 <= q_start < q_stop")
        self.z = z
        self.resid_pre = resid_pre
        self.budget = memory_budget_bytes
        self.chunk_elements = chunk_elements
        if received_sample_rows is not None and received_sample_rows < 1:
            raise ValueError(f"received_sample_rows must be a positive number of query rows, got {received_sample_rows}")
        if not 0 < bound_delta < 1:
            raise ValueError(f"bound_delta must be in (0, 1), got {bound_delta}")
        self.sample_rows, self.bound_delta, self.seed = received_sample_rows, bound_delta, seed
        if rows_from < 0:
            raise ValueError(f"rows_from must be >= 0, got {rows_from}")
        self.rows_from = int(rows_from)
        self._head_arg = None if self.heads == list(range(spec.n_heads)) else self.heads
        self._layer_set = set(self.layers)
        self.reset()

    # --- lifecycle --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._rows: dict[str, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self._recv_sum: dict[int, torch.Tensor] = {}
        self._recv_count: dict[int, torch.Tensor] = {}  # queries that see each key (all, also when sampling)
        self._strata: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)  # sampled calls' (n, N)
        self._pattern: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._resid: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._handles: list = []
        self._seen_layers: set[int] = set()  # layers whose attention reached this hook
        self._last_query = -1  # largest absolute query position seen

    def check_budget(self, batch: int, n_tokens: int) -> int:
        """Bytes the pattern window will take for ``batch`` sequences of ``n_tokens``; raise past the budget.

        Raises:
            MemoryBudgetError: the window's maps would exceed ``memory_budget_bytes``.
        """
        if self.pattern_window is None:
            return 0
        q0, q1 = self.pattern_window
        q1 = min(q1, n_tokens)
        need = len(self.layers) * batch * len(self.heads) * max(0, q1 - q0) * q1 * 4
        if need > self.budget:
            raise MemoryBudgetError(
                f"attention maps for queries {q0}..{q1} x {len(self.layers)} layers x {len(self.heads)} heads need "
                f"{need / 2**20:.0f} MiB, over the {self.budget / 2**20:.0f} MiB budget: narrow the query window, "
                "choose fewer layers/heads, or raise the budget (memory_budget_bytes / --budget-mb)"
            )
        return need

    def __enter__(self) -> "Tracer":
        self._ctx = attention_hooks(self)
        self._ctx.__enter__()
        if self.resid_pre:
            self._handles += residual_pre_hooks(self.lm.model, self._record_resid, self.layers)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._ctx.__exit__(*exc)

    def _record_resid(self, layer: int, x: torch.Tensor) -> None:
        self._resid[layer].append(x.detach().float().clone())

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            allow_longer: bool = False, **forward_kwargs) -> Trace:
        """One forward pass over ``input_ids`` (B, N) with recording; returns the :class:`Trace`.

        Raises:
            ContextTooLongError: N exceeds the context window (unless ``allow_longer``).
            MemoryBudgetError: the pattern window exceeds the budget.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        self.lm.spec.check_length(input_ids.shape[1], allow_longer)
        self.check_budget(input_ids.shape[0], input_ids.shape[1])
        self.reset()
        dev = getattr(self.lm, "device", input_ids.device)
        with self:
            self.lm.model(input_ids=input_ids.to(dev), use_cache=False, **forward_kwargs,
                          attention_mask=None if attention_mask is None else attention_mask.to(dev))
        return self.trace(input_ids)

    # --- the hook ---------------------------------------------------------------------------

    def on_attention(self, call: AttentionCall) -> None:
        layer = call.layer
        self._seen_layers.add(layer)
        self._last_query = max(self._last_query, int(call.key_start) + call.key.shape[2] - 1)
        if layer not in self._layer_set:
            return None
        heads = self._head_arg
        pattern_call = call
        key_start = int(call.key_start)  # > 0 on sliding-window caches: key j is at position key_start + j
        first_query = key_start + call.q_offset
        if self.rows_from > first_query:
            call = _later_queries(call, self.rows_from - first_query)
            if call is None:
                return self._pattern_rows(pattern_call, heads)
        want_rows = tuple(s for s in ROW_STATS if s in self.stats)
        if "received" in self.stats or want_rows:
            st = S.head_statistics(call, heads, received="received" in self.stats, rows=want_rows,
                                   chunk_elements=self.chunk_elements, sample_rows=self.sample_rows, seed=self.seed)
            if "top_key" in st and key_start:
                st["top_key"] = st["top_key"] + key_start  # absolute input positions
            for name in ROW_STATS:
                if name in self.stats:
                    self._rows[name][layer].append(st[name])
            if "received" in self.stats:
                self._accumulate_received(layer, st["received_sum"], st["received_count"],
                                          st.get("received_population"), key_start)
        for name, keys in self.key_sets.items():  # key sets name absolute positions
            self._rows["mass." + name][layer].append(S.key_mass(call, keys - key_start, heads))
        if self.z:
            out = call.output if heads is None else call.output[:, heads]
            self._rows["z"][layer].append(out.transpose(1, 2).detach().float().clone())
        return self._pattern_rows(pattern_call, heads)

    def _pattern_rows(self, call: AttentionCall, heads: list[int] | None) -> None:
        """Store the rows of the pattern window that this call computes (if any), over absolute key positions
        0..q_stop-1 (a sliding-window cache's keys are placed at their positions; evicted ones read 0)."""
        if self.pattern_window is not None:
            q0, q1 = self.pattern_window
            key_start = int(call.key_start)
            first = key_start + call.q_offset  # absolute position of the call's first query
            a, b = max(q0, first), min(q1, first + call.query.shape[2])
            if a < b:
                self.check_budget(call.query.shape[0], key_start + call.key.shape[2])
                rows = S.pattern_rows(call, a - first, b - first, max(0, q1 - key_start), heads)
                left = min(key_start, q1)
                rows = torch.nn.functional.pad(rows, (left, q1 - left - rows.shape[-1]))
                self._pattern[call.layer].append(rows)
        return None

    def _accumulate_received(self, layer: int, rsum: torch.Tensor, rcount: torch.Tensor,
                             pop: torch.Tensor | None = None, key_start: int = 0) -> None:
        """Add one call's received-attention sums and counts to the layer's
        (:func:`~workbench.core.tracer_received.accumulate_received`)."""
        accumulate_received(self._recv_sum, self._recv_count, self._strata, layer, rsum, rcount, pop, key_start)

    def _received_bound(self, layer: int) -> torch.Tensor:
        """Half-width (B or 1, 1, Nk) of the combined estimate of ``received`` for ``layer``
        (:func:`~workbench.core.tracer_received.received_bound`)."""
        return received_bound(self._recv_count[layer], self._strata.get(layer, []), self.bound_delta)

    # --- result -----------------------------------------------------------------------------

    def _check_recorded(self) -> None:
        """Raise a one-line error when the tracer was asked for attention data and recorded none (or missed
        layers) (:func:`~workbench.core.tracer_result.check_recorded`)."""
        check_recorded(self)

    def trace(self, input_ids: torch.Tensor | None = None) -> Trace:
        """Assemble what was recorded into a :class:`Trace` (axes documented in :mod:`workbench.core.trace`).

        Raises:
            UnsupportedArchitectureError: no attention call reached the tracer (the model does not use the
                workbench attention).
            WorkbenchError: some recorded layers never ran, the tracer records nothing, or ``rows_from`` /
                the pattern window lie past the sequence, so nothing was recorded.
        """
        return assemble_trace(self, input_ids)


def _later_queries(call: AttentionCall, start: int) -> AttentionCall | None:
    """The same call restricted to its queries ``start:`` (None if there are none). Without a mask the
    causal alignment stays bottom-right, so the sliced call's ``q_offset`` is the right one."""
    if start >= call.query.shape[2]:
        return None
    return replace(call, query=call.query[:, :, start:], output=call.output[:, :, start:], lse=call.lse[:, :, start:],
                   mask=None if call.mask is None else call.mask[:, :, start:])
