"""Kernel-backed attention with its log-sum-exp, and the hook point for tracing and interventions.

We register an attention function named ``"workbench"`` with transformers'
``AttentionInterface`` (and the SDPA boolean mask with ``AttentionMaskInterface``,
so padded batches keep their mask). Every attention layer of a model loaded by
:func:`workbench.load_model` then calls :func:`workbench_attention`, which

1. runs the fused kernel and gets the output ``out[b,h,i] = sum_j A[b,h,i,j] v_j`` and the
   per-query log-sum-exp ``lse[b,h,i] = log sum_j exp(scale * q_i . k_j + mask_ij)``
   (on CPU ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns both;
   elsewhere SDPA plus a chunked LSE);
2. hands an :class:`AttentionCall` to every active hook (tracer recorders and
   interventions), each of which may read it and may return a replacement output;
3. returns the output in the layout transformers expects.

Any attention probability can be recovered exactly from the call as
``A[i,j] = exp(scale * q_i . k_j + mask_ij - lse_i)``, so statistics never need the
kernel to materialise the N x N map (see :mod:`workbench.stats`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * LOG2E); exp2 is the faster kernel on CPU
_REGISTERED = False
_ACTIVE_HOOKS: list["AttentionHook"] = []


@dataclass
class AttentionCall:
    """One attention layer's inputs and kernel results, as seen by hooks.

    Shapes (B batch, Hq query heads, Hkv key/value heads, Nq queries, Nk keys, D head dim):
        query: (B, Hq, Nq, D) after rotary embedding.
        key, value: (B, Hkv, Nk, D), including any KV cache; grouped-query heads are *not* repeated
            (query head h uses key/value head ``h // n_rep``).
        mask: additive float mask (B or 1, 1, Nq, Nk) with 0 for visible and -inf for hidden keys,
            or None, meaning causal with the last query aligned to the last key (bottom-right).
        output: (B, Hq, Nq, D) attention output, the head output ``z`` before ``o_proj``.
        lse: (B, Hq, Nq) float32 natural-log log-sum-exp of the masked, scaled scores.
        scale: softmax scale (1/sqrt(D) unless the model says otherwise).
        layer: index of the decoder layer.
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

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_offset(self) -> int:
        """Position of the first query among the keys (Nk - Nq): nonzero while decoding with a cache."""
        return self.key.shape[2] - self.query.shape[2]

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
        qpos = torch.arange(q_start, q_stop, device=self.query.device) + self.q_offset
        kpos = torch.arange(nk, device=self.query.device)[keys]
        return (kpos[None, :] <= qpos[:, None])[None, None]

    def scores(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
               heads: list[int] | None = None) -> torch.Tensor:
        """Scaled, masked scores ``scale * q_i . k_j`` (-inf where hidden) for a block of queries.

        Args:
            q_start, q_stop: query rows (indices into this call's queries).
            keys: a slice or index tensor of key positions (default: all keys).
            heads: query heads to compute (default all).
        Returns:
            (B, H', nq, nk') float32 scores.
        """
        q = self.query[:, :, q_start:q_stop]
        k = self.key if keys is None else self.key[:, :, keys]
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
        s = s.float() * self.scale
        q_stop = self.query.shape[2] if q_stop is None else q_stop
        return s.masked_fill(~self.visible(q_start, q_stop, keys=keys), float("-inf"))

    def probs(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
              heads: list[int] | None = None) -> torch.Tensor:
        """Exact attention probabilities ``A[i,j] = exp(score_ij - lse_i)`` for a block, (B, H', nq, nk')."""
        lse = self.lse[:, :, q_start:q_stop]
        if heads is not None:
            lse = lse[:, heads]
        # exp2 of base-2 units: several times faster than exp, and far faster where exp underflows
        return torch.exp2((self.scores(q_start, q_stop, keys, heads) - lse[..., None]).mul_(LOG2E))


class AttentionHook(Protocol):
    """Anything with ``on_attention(call) -> Tensor | None``; a returned tensor replaces ``call.output``."""

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None: ...


@contextlib.contextmanager
def attention_hooks(*hooks: AttentionHook) -> Iterator[None]:
    """Activate hooks for every workbench attention call inside the ``with`` block (in order)."""
    _ACTIVE_HOOKS.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _ACTIVE_HOOKS.remove(h)


def _lse_chunked(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float, causal: bool,
                 chunk: int = 512) -> torch.Tensor:
    """Log-sum-exp of masked scaled scores in query chunks (fallback where the kernel gives none)."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    rep = hq // hkv
    out = torch.empty(b, hq, nq, dtype=torch.float32, device=q.device)
    for a in range(0, nq, chunk):
        z = min(nq, a + chunk)
        s = torch.matmul(q[:, :, a:z].reshape(b, hkv, rep * (z - a), d), k.transpose(-1, -2))
        s = s.view(b, hq, z - a, nk).float() * scale
        if mask is not None:
            s = s + mask[:, :, a:z].float()
        elif causal:
            qpos = torch.arange(a, z, device=q.device) + (nk - nq)
            s = s.masked_fill(torch.arange(nk, device=q.device)[None, :] > qpos[:, None], float("-inf"))
        out[:, :, a:z] = torch.logsumexp(s, dim=-1)
    return out


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention returning (output (B,Hq,Nq,D), lse (B,Hq,Nq) float32).

    ``mask`` is an additive float mask (0 / -inf) broadcastable to (B, 1, Nq, Nk), or None for
    causal attention aligned bottom-right (no mask at all when Nq == 1).
    Fully hidden query rows (left padding) give output 0 and lse 0.
    """
    nq, nk = query.shape[2], key.shape[2]
    causal = mask is None and nq > 1
    if causal and nq != nk:
        # the kernels' is_causal is top-left aligned; build the bottom-right mask explicitly
        qpos = torch.arange(nq, device=query.device) + (nk - nq)
        hidden = torch.arange(nk, device=query.device)[None, :] > qpos[:, None]
        mask = torch.zeros(nq, nk, dtype=query.dtype, device=query.device).masked_fill(hidden, float("-inf"))[None, None]
        causal = False
    if query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16, torch.float16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=mask, scale=scale
        )
        return out, lse.float()
    rep = query.shape[1] // key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=rep > 1
    )
    return out, _lse_chunked(query, key, mask, scale, causal)


def workbench_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: fused kernel + LSE, then the active hooks.

    Args follow transformers' ``AttentionInterface``: query (B, Hq, N, D), key/value (B, Hkv, Nk, D),
    ``attention_mask`` a boolean (True = attend) or additive mask (B, 1, Nq, Nk), or None.
    Returns (output (B, Nq, Hq, D), None); attention weights are never returned (use the tracer).
    """
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        from .errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            "workbench attention does not support soft-capping or sliding-window layers yet: "
            "use a model without them (Llama, Qwen2, SmolLM2, ...)"
        )
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    mask = attention_mask
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    if mask is None and causal is False and query.shape[2] > 1:
        # bidirectional attention (a VLM's vision tower): an all-visible mask, never the causal default
        mask = torch.zeros(1, 1, query.shape[2], key.shape[2], dtype=query.dtype, device=query.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
        else:
            mask = mask.to(query.dtype).masked_fill(mask <= torch.finfo(mask.dtype).min / 2, float("-inf"))
        mask = mask[:, :, :, : key.shape[2]]
    out, lse = attention_with_lse(query, key, value, mask, scale)
    if _ACTIVE_HOOKS and causal is not False:  # hooks see decoder self-attention only, not vision towers
        call = AttentionCall(layer=getattr(module, "layer_idx", -1), query=query, key=key, value=value,
                             mask=mask, output=out, lse=lse, scale=scale, module=module)
        for hook in list(_ACTIVE_HOOKS):
            new = hook.on_attention(call)
            if new is not None:
                call.output = new
        out = call.output
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Register ``"workbench"`` with transformers' attention and mask interfaces (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("workbench", workbench_attention)
    AttentionMaskInterface.register("workbench", sdpa_mask)
    _REGISTERED = True
