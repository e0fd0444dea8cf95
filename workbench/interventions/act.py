"""ACT: attention calibration of sink tokens at inference (Yu et al. 2024, "Unveiling and harnessing
hidden attention sinks", GATECH-EIC/ACT).

For a calibrated head and each query row i, with S the head's sink set and A_S = sum_{k in S} A[i,k]:

    A'[i,k] = beta * A[i,k]                     for k in S
    A'[i,j] = r * A[i,j],  r = (1 - beta*A_S) / (1 - A_S)   for j not in S

i.e. the attention on the sinks is scaled by beta (default 0.4) and the freed mass (1-beta)*A_S is
given to the other visible keys in proportion to their attention (the start token is not in S, so it
gets a share too). The **sink set** is ACT's: S = {k : s_k > 0.1} minus the first detected sink,
where s_k = (1/(T-k)) sum_{i>=k} A[i,k] is the key's mean received attention in the current input.

Implementation (deviation from ACT's code, which edits the eager N x N map): closed form on the fused
kernel's output and log-sum-exp,

    out'_i = r * (out_i - sum_{k in S} A[i,k] v_k) + beta * sum_{k in S} A[i,k] v_k,

where A[i,k] = exp(scale * q_i . k_k - lse_i) is computed only for the |S| sink columns, so a
calibrated head costs O(N * |S| * D) on top of the kernel (plus one O(N^2 D) pass to find S when the
sink set is detected from the input). Where the sinks hold most of a row (A_S > 0.5) the subtraction
``out - sum_S`` cancels and r = 1/(1-A_S) amplifies rounding, so for such heads the non-sink part
``sum_{j not in S} A[i,j] v_j / (1 - A_S)`` comes from a second fused-kernel call over the non-sink keys
(equal in exact arithmetic). :func:`act_reference` is the eager oracle; tests show the two
agree to 1e-5. Rows with no non-sink mass left (1 - A_S < 1e-6) are left unchanged in both.

During ``generate()`` the sink set found in the prefill is kept for the decode steps (keys include
the cache; newly generated keys are never sinks), since ACT defines S on the prompt. The sinks are
detected at every prefill call (a call whose queries start at key 0) of a calibrated layer, whatever
the ``phase``: with ``phase="decode"`` the prompt is left unchanged but its statistics still define S
for the decode steps. A new prompt replaces the old sinks; a decode step whose cache does not start
with the prompt the sinks were detected on raises :class:`~workbench.core.errors.WorkbenchError` rather
than calibrating with another input's sinks.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from ..core.attention import AttentionCall
from ..core.errors import WorkbenchError
from ..core.stats import head_statistics
from .base import HeadIntervention
from .registry import InterventionSpec, Param

DEFAULT_BETA = 0.4
DEFAULT_THRESHOLD = 0.1
_MIN_REST = 1e-6


def act_sink_mask(received: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, counts: torch.Tensor | None = None,
                  min_queries: int = 1) -> torch.Tensor:
    """ACT's sink set as a boolean mask: {k : s_k > threshold} minus the first (lowest-index) such key.

    Args:
        received: (..., Nk) mean received attention s_k.
        threshold: ACT's threshold (0.1).
        counts: (..., Nk) number of queries that see each key (needed with ``min_queries``).
        min_queries: keys seen by fewer queries are never sinks. ACT uses 1 (every key); a larger value
            keeps the last keys, whose mean runs over a handful of queries, out of analyses.
    Returns:
        (..., Nk) bool.
    """
    hit = received > threshold
    if counts is not None and min_queries > 1:
        hit = hit & (counts.expand_as(hit) >= min_queries)
    first = torch.where(hit.any(-1), hit.float().argmax(-1), torch.full(hit.shape[:-1], -1, dtype=torch.long, device=hit.device))
    pos = torch.arange(hit.shape[-1], device=hit.device)
    return hit & (pos != first[..., None])


def act_reference(probs: torch.Tensor, sink_mask: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Eager ACT (the test oracle): recalibrate full attention rows.

    Args:
        probs: (B, H, Nq, Nk) softmax attention.
        sink_mask: (B, H or 1, Nk) bool sink set per head.
        beta: scale of the attention on sinks.
    Returns:
        (B, H, Nq, Nk) calibrated attention (rows still sum to 1).
    """
    s = sink_mask[:, :, None, :].to(probs.dtype)
    a_s = (probs * s).sum(-1, keepdim=True)
    rest = probs * (1 - s)
    r_mass = rest.sum(-1, keepdim=True)
    new = beta * probs * s + rest / r_mass.clamp_min(_MIN_REST) * (r_mass + (1 - beta) * a_s)
    return torch.where(r_mass > _MIN_REST, new, probs)


class ACTCalibration(HeadIntervention):
    """ACT attention calibration of chosen heads, in closed form on the kernel output (module docstring).

    Args:
        heads: (layer, head) pairs to calibrate.
        beta: scale of the attention on the sink set (ACT default 0.4); 1 leaves the head unchanged.
        sinks: fixed sink sets, (layer, head) -> key positions; heads missing from it (or all heads when
            None) use ACT's sink set detected from the current input.
        threshold: ACT's sink threshold on s_k (0.1).
        min_queries: see :func:`act_sink_mask` (1 = ACT).
        phase: ``all``, ``prefill`` or ``decode``.
        stable_above: when a head's sink mass A_S exceeds this in some row, ``out - sum_S A v`` would
            cancel (r amplifies the kernel's rounding by 1/(1-A_S)); that head's non-sink part is then
            taken from a second kernel call over its non-sink keys (exact; costs one kernel call per head).

    Raises:
        ValueError: beta outside [0, 1] or a bad phase.
    """

    def __init__(self, heads: Iterable[tuple[int, int]], beta: float = DEFAULT_BETA,
                 sinks: Mapping[tuple[int, int], Sequence[int]] | None = None, threshold: float = DEFAULT_THRESHOLD,
                 min_queries: int = 1, phase: str = "all", stable_above: float = 0.5):
        super().__init__(heads, phase)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta} must lie in [0, 1] (ACT uses 0.4)")
        self.beta = float(beta)
        self.fixed = {(int(a), int(b)): torch.as_tensor(list(v), dtype=torch.long) for (a, b), v in (sinks or {}).items()}
        self.threshold, self.min_queries = threshold, min_queries
        self.stable_above = stable_above
        self.detected: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> (B, Nk) bool from the last prefill
        # layer -> (Nk, first key, last key) of the last prefill, keys (B, Hkv, D): a decode step must extend it
        self._prompt_keys: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def sink_mask(self, call: AttentionCall, head: int) -> torch.Tensor:
        """(B, Nk) bool sink set of ``head`` for this call (fixed, or detected in prefill and kept for decoding).

        Raises:
            WorkbenchError: a decode call whose cache is not the prompt the sinks were detected on.
        """
        if (call.layer, head) in self.fixed:
            return self._fixed_mask(call, head)
        if call.q_offset == 0:
            self._detect(call, [head])
        else:
            self._check_same_input(call)
        return self._stored(call, head)

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        """Detect the sinks at every prefill call (any phase), then calibrate where the phase applies."""
        heads = self._note_call(call)
        if not heads:
            return None
        auto = [h for h in heads if (call.layer, h) not in self.fixed]
        if auto and call.q_offset == 0:
            self._detect(call, auto)
        if not self._phase_ok(call):
            return None
        if auto and call.q_offset > 0:
            self._check_same_input(call)
        out = call.output.clone()
        self.modify(call, out, heads)
        return out

    def _check_same_input(self, call: AttentionCall) -> None:
        """Raise unless this decode call's cached keys begin with the keys of the prefill the sinks came from."""
        old = self._prompt_keys.get(call.layer)
        same = False
        if old is not None:
            n, first, last = old
            ks, nk = int(call.key_start), call.key.shape[2]  # a sliding-window cache holds positions ks..ks+nk-1
            same = first.shape == call.key[:, :, 0].shape and ks + nk > n
            for pos, ref in ((0, first), (n - 1, last)):  # compare the prompt's keys that are still cached
                j = pos - ks
                if same and 0 <= j < nk:
                    same = torch.equal(call.key[:, :, j], ref)
        if not same:
            raise WorkbenchError(
                f"ACT calibration of layer {call.layer}: this decode step's cache is not the prompt whose sinks were "
                "detected (none, or another input's); run the prompt's prefill inside the ACT context too, "
                "e.g. wrap the whole generate() call")

    def _fixed_mask(self, call: AttentionCall, head: int) -> torch.Tensor:
        b, nk = call.query.shape[0], call.key.shape[2]
        idx = self.fixed[(call.layer, head)].to(call.device) - int(call.key_start)  # positions -> call keys
        m = torch.zeros(b, nk, dtype=torch.bool, device=call.device)
        m[:, idx[(idx >= 0) & (idx < nk)]] = True
        return m

    def _stored(self, call: AttentionCall, head: int) -> torch.Tensor:
        """The sink set detected in the last prefill (over positions 0..N-1), read at this call's key positions
        (a sliding-window cache holds only the last W keys) and False for keys decoded since: (B, Nk)."""
        b, nk = call.query.shape[0], call.key.shape[2]
        old = self.detected.get((call.layer, head))
        m = torch.zeros(b, nk, dtype=torch.bool, device=call.device)
        if old is not None and old.shape[0] == b:
            pos = call.key_positions
            known = pos < old.shape[1]
            m[:, known] = old[:, pos[known]].to(m.device)
        return m

    def _detect(self, call: AttentionCall, heads: list[int]) -> None:
        """Detect the sink sets of all ``heads`` of this prefill call in one chunked pass."""
        st = head_statistics(call, heads, received=True, rows=False)
        count = st["received_count"][:, 0]
        s = st["received_sum"] / count[:, None].clamp_min(1.0)  # (B, H', Nk)
        m = act_sink_mask(s, self.threshold, count[:, None], self.min_queries)
        for i, h in enumerate(heads):
            self.detected[(call.layer, h)] = m[:, i]
        self._prompt_keys[call.layer] = (call.key.shape[2], call.key[:, :, 0].clone(), call.key[:, :, -1].clone())

    def modify(self, call: AttentionCall, out: torch.Tensor, heads: list[int]) -> None:
        """Calibrate ``heads`` in ``out`` with the sink sets :meth:`on_attention` detected (or the fixed ones)."""
        for h in heads:
            mask = self._fixed_mask(call, h) if (call.layer, h) in self.fixed else self._stored(call, h)
            keys = mask.any(0).nonzero().reshape(-1)
            if keys.numel() == 0:
                continue
            p = call.probs(keys=keys, heads=[h])[:, 0] * mask[:, None, keys].float()  # (B, Nq, |U|)
            v = call.value[:, h // call.n_rep][:, keys].float()  # (B, |U|, D)
            sum_s = torch.matmul(p, v)  # (B, Nq, D)
            a_s = p.sum(-1, keepdim=True)
            rest = 1.0 - a_s
            r = (1.0 - self.beta * a_s) / rest.clamp_min(_MIN_REST)
            o = call.output[:, h].float()
            if float(a_s.max()) > self.stable_above:
                # out - sum_s cancels when the sinks hold most of the row: take the non-sink part from a
                # second kernel call over the non-sink keys instead (exact, same result in exact arithmetic)
                new = (1.0 - self.beta * a_s) * self._rest_output(call, h, mask) + self.beta * sum_s
            else:
                new = r * (o - sum_s) + self.beta * sum_s
            out[:, h] = torch.where(rest > _MIN_REST, new, o).to(out.dtype)

    @staticmethod
    def _rest_output(call: AttentionCall, h: int, mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Attention output of head ``h`` over its visible non-sink keys only, renormalised: (B, Nq, D)."""
        b, _, nq, d = call.query.shape
        res = torch.empty(b, nq, d, dtype=torch.float32, device=call.device)
        for a in range(0, nq, chunk):
            z = min(nq, a + chunk)
            # the call's own mask (finite biases kept) with the sink keys hidden; soft-capping as in the layer
            o, _ = call.restricted(a, z, hide=mask, heads=[h])
            res[:, a:z] = o[:, 0].float()
        return res


# Make ACT calibration available by name to the dashboard and notebooks.
# (listed in workbench.interventions.registry.INTERVENTIONS)
INTERVENTION = InterventionSpec(
    "act calibration",
    "ACT (Yu et al. 2024): scale attention on each head's hidden sinks by beta, give the rest to other keys",
    lambda lm, heads, beta=DEFAULT_BETA, phase="all": ACTCalibration(heads, beta=beta, phase=phase),
    (Param("beta", "float", DEFAULT_BETA, low=0.0, high=1.0, help="share of sink attention kept"),
     Param("phase", "choice", "all", ("all", "prefill", "decode"), help="where the calibration applies")),
)
