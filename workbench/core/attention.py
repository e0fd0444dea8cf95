"""Kernel-backed attention with its log-sum-exp, and the hook point for tracing and interventions.

We register an attention function named ``"workbench"`` with transformers'
``AttentionInterface`` (and a mask function with ``AttentionMaskInterface``: transformers' SDPA boolean
mask, so padded batches and sliding windows keep their mask). Every attention layer of a model loaded by
:func:`workbench.load_model` then calls :func:`workbench_attention`, which

1. runs a fused kernel chosen per call (:mod:`workbench.core.kernels`) and gets the output
   ``out[b,h,i] = sum_j A[b,h,i,j] v_j`` and the per-query log-sum-exp
   ``lse[b,h,i] = log sum_j exp(s_ij)`` of the scores ``s_ij = softcap(scale * q_i . k_j) + mask_ij``
   from the same pass (no second QK^T product, on any device);
2. folds in learned attention-sink logits (gpt-oss's ``s_aux``) in closed form:
   ``lse' = logaddexp(lse, sink)``, ``out' = out * exp(lse - lse')``;
3. hands an :class:`AttentionCall` to every active hook (tracer recorders and
   interventions), each of which may read it and may return a replacement output;
4. returns the output in the layout transformers expects.

Any attention probability can be recovered exactly from the call as
``A[i,j] = exp(s_ij - lse'_i)`` (:meth:`AttentionCall.probs`), in float32 whatever the model dtype,
so statistics never need the kernel to materialise the N x N map (see :mod:`workbench.core.stats`).

Supported layer features (keyword arguments of the attention interface): sliding windows (the model's
mask carries the window), logit soft-capping (``softcap``), learned sink logits (``s_aux``), finite
additive masks. Any other keyword argument with a value raises :class:`UnsupportedArchitectureError`
(:data:`SUPPORTED_ATTENTION_KWARGS`, :data:`IGNORED_ATTENTION_KWARGS`).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from .kernels import attention_with_lse  # noqa: F401  (re-exported: interventions and tests use it)

LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * LOG2E); exp2 is the faster kernel on CPU
_REGISTERED = False

# Keyword arguments of transformers' attention interface that the workbench attention implements exactly.
SUPPORTED_ATTENTION_KWARGS = frozenset({"scaling", "dropout", "sliding_window", "softcap", "s_aux", "is_causal"})
# Keyword arguments that do not change attention (bookkeeping passed along by the decoder layers).
IGNORED_ATTENTION_KWARGS = frozenset({
    "position_ids", "use_cache", "output_attentions", "output_hidden_states", "output_router_logits",
    "num_items_in_batch", "return_dict", "cache_position", "position_embeddings", "layer_idx",
})
_HOOKS: contextvars.ContextVar[tuple["AttentionHook", ...]] = contextvars.ContextVar("workbench_hooks", default=())
# (q_length, kv_length) -> (q_offset, kv_offset), recorded by the mask function at the start of each forward
_OFFSETS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("workbench_offsets", default=None)


@dataclass
class AttentionCall:
    """One attention layer's inputs and kernel results, as seen by hooks.

    Shapes (B batch, Hq query heads, Hkv key/value heads, Nq queries, Nk keys, D head dim):
        query: (B, Hq, Nq, D) after rotary embedding, in the model dtype.
        key, value: (B, Hkv, Nk, D), including any KV cache; grouped-query heads are *not* repeated
            (query head h uses key/value head ``h // n_rep``).
        mask: additive mask (B or 1, 1, Nq, Nk) as the kernel added it: 0 for visible keys, -inf for hidden
            ones, finite values for biases; or None, meaning causal with the last query aligned to the last key
            (bottom-right).
        output: (B, Hq, Nq, D) attention output, the head output ``z`` before ``o_proj``.
        lse: (B, Hq, Nq) float32 natural-log log-sum-exp of the scores, including the learned sink logit when
            the layer has one (``lse'``); 0 on rows that see no key.
        scale: softmax scale (1/sqrt(D) unless the model says otherwise).
        layer: index of the decoder layer.
        softcap: logit soft-cap c (scores ``c * tanh(scale q.k / c)``, Gemma-2), or None.
        sinks: (Hq,) float32 learned sink logits (gpt-oss), or None. Probabilities over the keys then sum to
            ``1 - exp(sink - lse')`` per row.
        sliding_window: the layer's window W (keys ``q - W < k <= q``), informative: the mask carries it.
        key_start: absolute position in the input sequence of key 0 (nonzero on sliding-window caches, which
            keep only the last W - 1 keys); see :attr:`key_positions`.

    All scores, probabilities and statistics derived from a call are float32 and live on ``query.device``.
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    output: torch.Tensor
    lse: torch.Tensor
    scale: float
    module: torch.nn.Module | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    sliding_window: int | None = None
    key_start: int | torch.Tensor = 0
    _key_f32: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        """The device of this call's tensors; every buffer derived from the call is created here."""
        return self.query.device

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_offset(self) -> int:
        """Index of the first query among this call's keys (Nk - Nq): nonzero while decoding with a cache."""
        return self.key.shape[2] - self.query.shape[2]

    @property
    def key_positions(self) -> torch.Tensor:
        """(Nk,) int64 absolute positions of this call's keys in the input sequence (``arange(Nk)`` without a
        cache; shifted on sliding-window caches). A key index j reported by a statistic is at
        ``key_positions[j]``."""
        return torch.arange(self.key.shape[2], device=self.device) + int(self.key_start)

    @property
    def query_positions(self) -> torch.Tensor:
        """(Nq,) int64 absolute positions of this call's queries in the input sequence."""
        return torch.arange(self.query.shape[2], device=self.device) + (int(self.key_start) + self.q_offset)

    def _keys_float(self) -> torch.Tensor:
        if self._key_f32 is None:
            self._key_f32 = self.key.float()
        return self._key_f32

    def visible(self, q_start: int = 0, q_stop: int | None = None, k_stop: int | None = None,
                keys: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Boolean visibility of keys for queries ``q_start:q_stop``: shape (B or 1, 1, nq, nk').

        The keys are ``0:k_stop``, or ``keys`` (a slice or index tensor) when given; only those columns
        are built, so a few keys cost O(nq) rather than O(nq * Nk)."""
        nq, nk = self.query.shape[2], self.key.shape[2]
        q_stop = nq if q_stop is None else q_stop
        if keys is None:
            keys = slice(0, nk if k_stop is None else k_stop)
        if self.mask is not None:
            return torch.isfinite(self.mask[:, :, q_start:q_stop][..., keys])
        qpos = torch.arange(q_start, q_stop, device=self.device) + self.q_offset
        kpos = torch.arange(nk, device=self.device)[keys]
        return (kpos[None, :] <= qpos[:, None])[None, None]

    def additive_mask(self, q_start: int = 0, q_stop: int | None = None,
                      keys: slice | torch.Tensor | None = None) -> torch.Tensor:
        """float32 additive mask (B or 1, 1, nq, nk') of a block: the call's mask values where it has one
        (finite biases included), else 0 / -inf from causality."""
        q_stop = self.query.shape[2] if q_stop is None else q_stop
        if self.mask is not None:
            k = slice(None) if keys is None else keys
            return self.mask[:, :, q_start:q_stop][..., k].float()
        vis = self.visible(q_start, q_stop, keys=keys)
        return torch.zeros(vis.shape, device=self.device).masked_fill_(~vis, float("-inf"))

    def scores(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
               heads: list[int] | None = None) -> torch.Tensor:
        """Scores ``softcap(scale * q_i . k_j) + mask_ij`` (-inf where hidden) for a block of queries, exactly
        as the kernel forms them, in float32 (the product is taken in float32 whatever the model dtype).

        Args:
            q_start, q_stop: query rows (indices into this call's queries).
            keys: a slice or index tensor of key positions (default: all keys).
            heads: query heads to compute (default all).
        Returns:
            (B, H', nq, nk') float32 scores on the call's device.
        """
        q = self.query[:, :, q_start:q_stop].float()
        kf = self._keys_float()
        k = kf if keys is None else kf[:, :, keys]
        b, hq, nq, d = q.shape
        hkv = k.shape[1]
        rep = hq // hkv
        if heads is not None and len(heads) < hq:
            # only the chosen heads' scores: each query head against its own key/value head
            hidx = torch.as_tensor(list(heads), dtype=torch.long, device=q.device)
            s = torch.matmul(q[:, hidx], k[:, hidx // rep].transpose(-1, -2))
        else:
            # all heads: group queries by key/value head so that GQA keys are never repeated in memory
            s = torch.matmul(q.reshape(b, hkv, rep * nq, d), k.transpose(-1, -2)).view(b, hq, nq, k.shape[2])
            if heads is not None:
                s = s[:, heads]
        s = s.mul_(self.scale)
        if self.softcap is not None:
            s = s.div_(self.softcap).tanh_().mul_(self.softcap)
        q_stop = self.query.shape[2] if q_stop is None else q_stop
        if self.mask is not None:
            return s.add_(self.additive_mask(q_start, q_stop, keys))
        return s.masked_fill_(~self.visible(q_start, q_stop, keys=keys), float("-inf"))

    def probs(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
              heads: list[int] | None = None) -> torch.Tensor:
        """Exact attention probabilities ``A[i,j] = exp(s_ij - lse'_i)`` for a block, (B, H', nq, nk') float32."""
        lse = self.lse[:, :, q_start:q_stop]
        if heads is not None:
            lse = lse[:, heads]
        # exp2 of base-2 units: several times faster than exp, and far faster where exp underflows
        return torch.exp2((self.scores(q_start, q_stop, keys, heads) - lse[..., None]).mul_(LOG2E))


    def restricted(self, q_start: int = 0, q_stop: int | None = None, keys: torch.Tensor | None = None,
                   hide: torch.Tensor | None = None, heads: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of a block of queries over a subset of the keys, renormalised over that subset, from a second
        fused-kernel call with the call's own mask (finite biases kept) and soft-capping.

        Args:
            q_start, q_stop: query rows (indices into this call's queries).
            keys: (K,) int64 indices of the keys kept (default all).
            hide: (B, Nk) bool keys to hide as well (indexed over all Nk keys).
            heads: query heads (default all; grouped-query heads then share their key/value head).
        Returns:
            (output (B, H', nq, D) in the model dtype, lse (B, H', nq) float32), ``lse`` the log-sum-exp over the
            kept keys, so the subset holds ``exp(lse - self.lse)`` of each full row (VAR, ACT).
        """
        q, k, v = self.query[:, :, q_start:q_stop], self.key, self.value
        if heads is not None:
            kv = [h // self.n_rep for h in heads]
            q, k, v = q[:, list(heads)], k[:, kv], v[:, kv]
        mask = self.additive_mask(q_start, q_stop, keys)
        if hide is not None:
            mask = mask.masked_fill((hide if keys is None else hide[:, keys])[:, None, None, :], float("-inf"))
        if keys is not None:
            k, v = k[:, :, keys], v[:, :, keys]
        return attention_with_lse(q, k, v, mask.to(q.dtype), self.scale, softcap=self.softcap)


class AttentionHook(Protocol):
    """Anything with ``on_attention(call) -> Tensor | None``; a returned tensor replaces ``call.output``."""

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None: ...


@contextlib.contextmanager
def attention_hooks(*hooks: AttentionHook) -> Iterator[None]:
    """Activate hooks for every workbench attention call inside the ``with`` block (in order).

    Hooks belong to the running context (:mod:`contextvars`): another thread, or another asyncio task or
    dashboard session, never sees them."""
    token = _HOOKS.set(_HOOKS.get() + tuple(hooks))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def active_hooks() -> tuple[AttentionHook, ...]:
    """The hooks active in the current context, in order."""
    return _HOOKS.get()


def _check_kwargs(kwargs: dict) -> None:
    from .errors import UnsupportedArchitectureError

    for name, value in kwargs.items():
        if name in SUPPORTED_ATTENTION_KWARGS or name in IGNORED_ATTENTION_KWARGS or value is None:
            continue
        if value is False:
            continue
        raise UnsupportedArchitectureError(
            f"attention argument {name!r} is not supported by the workbench attention (it would change the "
            f"attention the statistics assume): load the model with attn_implementation='eager' for this architecture")


def _sliding_mask(nq: int, nk: int, window: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive bottom-right causal sliding-window mask (1, 1, nq, nk): key k visible to query q iff q - W < k <= q."""
    qpos = torch.arange(nq, device=device)[:, None] + (nk - nq)
    kpos = torch.arange(nk, device=device)[None, :]
    hidden = (kpos > qpos) | (kpos <= qpos - window)
    return torch.zeros(nq, nk, dtype=dtype, device=device).masked_fill(hidden, float("-inf"))[None, None]


def _key_start(nq: int, nk: int) -> int | torch.Tensor:
    """Absolute position of key 0, from the offsets the mask function recorded for this forward (else 0)."""
    rec = _OFFSETS.get()
    if rec:
        got = rec.get((nq, nk))
        if got is not None:
            q_off, kv_off = got
            try:
                if int(kv_off) + nk == int(q_off) + nq:  # keys end at the last query: the record fits this call
                    return kv_off
            except (TypeError, RuntimeError):
                pass
    return 0


def workbench_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: fused kernel + LSE, learned sinks, then the active hooks.

    Args follow transformers' ``AttentionInterface``: query (B, Hq, N, D), key/value (B, Hkv, Nk, D),
    ``attention_mask`` a boolean (True = attend) or additive mask (B, 1, Nq, Nk), or None; keyword arguments
    ``sliding_window``, ``softcap`` (float), ``s_aux`` ((Hq,) sink logits), ``is_causal``.
    Returns (output (B, Nq, Hq, D), None); attention weights are never returned (use the tracer).

    Raises:
        UnsupportedArchitectureError: a keyword argument outside :data:`SUPPORTED_ATTENTION_KWARGS` and
            :data:`IGNORED_ATTENTION_KWARGS` carries a value (e.g. packed-sequence ``cu_seq_lens_q``).
        WorkbenchError: dropout > 0 (the model is in training mode).
    """
    _check_kwargs(kwargs)
    if dropout:
        from .errors import WorkbenchError

        raise WorkbenchError(f"attention dropout {dropout} is active: call model.eval() before tracing")
    dev = query.device
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    softcap = kwargs.get("softcap")
    softcap = float(softcap) if softcap else None
    window = kwargs.get("sliding_window")
    nq, nk = query.shape[2], key.shape[2]
    mask = attention_mask
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    if mask is None and causal is False and nq > 1:
        # bidirectional attention (a VLM's vision tower): an all-visible mask, never the causal default
        mask = torch.zeros(1, 1, nq, nk, dtype=query.dtype, device=dev)
    if mask is not None:
        mask = mask.to(dev)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=dev).masked_fill(~mask, float("-inf"))
        else:
            mask = mask.to(query.dtype).masked_fill(mask <= torch.finfo(mask.dtype).min / 2, float("-inf"))
        mask = mask[:, :, :, :nk]
    elif window is not None and int(window) < nk and causal is not False:
        # the model skipped its mask although some query sees more than the window: build the window mask
        mask = _sliding_mask(nq, nk, int(window), query.dtype, dev)
    out, lse = attention_with_lse(query, key, value, mask, scale, softcap=softcap)
    sinks = kwargs.get("s_aux")
    if sinks is not None:
        sinks = sinks.to(device=dev, dtype=torch.float32).reshape(-1)
        lse_k = lse
        if mask is not None:  # rows that see no key keep lse 0 (their probabilities are all 0 anyway)
            seen = torch.isfinite(mask).any(-1)  # (B|1, 1, Nq)
            lse_k = lse.masked_fill(~seen, float("-inf"))
        lse_new = torch.logaddexp(lse_k, sinks.view(1, -1, 1))
        out = (out.float() * torch.exp(lse_k - lse_new)[..., None]).to(out.dtype)
        lse = torch.where(torch.isfinite(lse_k), lse_new, torch.zeros((), device=dev))
    hooks = _HOOKS.get()
    if hooks and causal is not False:  # hooks see decoder self-attention only, not vision towers
        call = AttentionCall(layer=getattr(module, "layer_idx", -1), query=query, key=key, value=value,
                             mask=mask, output=out, lse=lse, scale=scale, module=module, softcap=softcap,
                             sinks=sinks, sliding_window=None if window is None else int(window),
                             key_start=_key_start(nq, nk))
        for hook in hooks:
            new = hook.on_attention(call)
            if new is not None:
                call.output = new
        out = call.output
    return out.transpose(1, 2).contiguous(), None


def workbench_mask(*args, **kwargs):
    """transformers mask function: its SDPA boolean mask, recording the query and key offsets of this forward
    (so that :attr:`AttentionCall.key_positions` are absolute on sliding-window caches)."""
    from transformers.masking_utils import sdpa_mask

    q_len, kv_len = kwargs.get("q_length"), kwargs.get("kv_length")
    if q_len is not None and kv_len is not None:
        rec = _OFFSETS.get()
        if rec is None:
            rec = {}
            _OFFSETS.set(rec)
        rec[(int(q_len), int(kv_len))] = (kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0))
    return sdpa_mask(*args, **kwargs)


def register_attention() -> None:
    """Register ``"workbench"`` with transformers' attention and mask interfaces (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("workbench", workbench_attention)
    AttentionMaskInterface.register("workbench", workbench_mask)
    _REGISTERED = True
