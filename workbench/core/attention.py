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

:class:`AttentionCall` lives in :mod:`.attention_call` and is importable from here.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Protocol

import torch

from .attention_call import LOG2E, AttentionCall  # noqa: F401  (LOG2E re-exported: stats uses it)
from .kernels import attention_with_lse  # noqa: F401  (re-exported: interventions and tests use it)

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
