"""Attention kernels that return the log-sum-exp: a small registry chosen per call.

Every backend computes, for query i and key j,

    s_ij = softcap(scale * q_i . k_j) + mask_ij,   softcap(x) = c * tanh(x / c)  (identity without c),
    out_i = sum_j exp(s_ij - lse_i) v_j,            lse_i = log sum_j exp(s_ij)   (natural log),

and returns ``(out (B, Hq, Nq, D) in the query dtype, lse (B, Hq, Nq) float32)``. Grouped-query keys and
values (B, Hkv, Nk, D) are never repeated by the caller. A query row that sees no key (left padding) gets
output 0 and lse 0, never NaN.

Backends, in the order :func:`select_backend` tries them (the first that supports the call wins):

* ``cpu-flash``: ``aten._scaled_dot_product_flash_attention_for_cpu`` (float32, bfloat16, float16), no
  soft-capping. Output and LSE from one fused pass.
* ``cuda-flash``: ``aten._scaled_dot_product_flash_attention`` (float16, bfloat16, head dim <= 256), causal
  or full attention without a mask or soft-capping.
* ``cuda-efficient``: ``aten._scaled_dot_product_efficient_attention(..., compute_log_sumexp=True)`` with an
  additive bias (padding, sliding windows, finite biases), float32/float16/bfloat16, no soft-capping.
* ``cuda-flex``: ``torch.nn.attention.flex_attention`` compiled, with ``return_lse=True``; the soft-cap is a
  score modification and the mask is added in it; float32/float16/bfloat16.
* ``reference``: exact blockwise online softmax in plain torch (float32 arithmetic;
  :mod:`workbench.core.reference_kernel`), O(Nq x block)
  memory, any device and dtype; used wherever no fused kernel fits (soft-capping on the CPU, float64, other
  devices). Key blocks that the mask hides completely are skipped, so sliding-window layers cost
  O(N x W) rather than O(N^2).

None of them computes an extra QK^T product: the LSE comes out of the same pass as the output.
:func:`force_backend` pins one backend (tests and benchmarks compare them).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .reference_kernel import reference_attention
from .registry import Registry, UnknownNameError

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Features:
    """What a call needs from a kernel: an additive mask, soft-capping, causal alignment."""

    mask: bool
    softcap: bool
    causal: bool


@dataclass(frozen=True)
class Backend:
    """A kernel: ``supports(q, k, features) -> bool`` and ``run(q, k, v, mask, scale, causal, softcap)``."""

    name: str
    supports: Callable[[torch.Tensor, torch.Tensor, Features], bool]
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("workbench_forced_backend", default=None)


def _hide_empty_rows(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose lse is not finite saw no key: output 0 and lse 0 (some kernels give -inf / NaN there)."""
    lse = lse.float()
    empty = ~torch.isfinite(lse)
    out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out, lse.masked_fill(empty, 0.0)


def _repeat_kv(x: torch.Tensor, rep: int) -> torch.Tensor:
    if rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, rep, n, d).reshape(b, h * rep, n, d)


# --- CPU -------------------------------------------------------------------------------------------


def _cpu_flash_supports(q: torch.Tensor, k: torch.Tensor, f: Features) -> bool:
    return q.device.type == "cpu" and q.dtype in FUSED_DTYPES and not f.softcap


def _cpu_flash(q, k, v, mask, scale, causal, softcap):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale)
    return out, lse.float()  # rows that see no key: the kernel already gives output 0 and lse 0


# --- CUDA (not reachable on a CPU-only machine; checked by benchmarks/gpu_check.py) -----------------


def _cuda_flash_supports(q: torch.Tensor, k: torch.Tensor, f: Features) -> bool:
    return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and not f.mask
            and not f.softcap and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0)


def _cuda_flash(q, k, v, mask, scale, causal, softcap):
    rep = q.shape[1] // k.shape[1]
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        q, _repeat_kv(k, rep), _repeat_kv(v, rep), 0.0, causal, False, scale=scale)
    return res[0], res[1].float()


def _cuda_efficient_supports(q: torch.Tensor, k: torch.Tensor, f: Features) -> bool:
    return q.device.type == "cuda" and q.dtype in FUSED_DTYPES and not f.softcap


def _cuda_efficient(q, k, v, mask, scale, causal, softcap):
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    rep = hq // k.shape[1]
    bias = None
    if mask is not None:
        bias = mask.to(q.dtype).expand(b, hq, nq, nk)
        if nk % 16:  # the kernel needs the bias rows 16-element aligned (as SDPA pads them)
            pad = 16 - nk % 16
            bias = torch.nn.functional.pad(bias, (0, pad))[..., :nk]
    res = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, _repeat_kv(k, rep), _repeat_kv(v, rep), bias, True, 0.0, causal, scale=scale)
    out, lse = res[0], res[1][..., :nq]  # the LSE is padded to a multiple of 32 queries
    return _hide_empty_rows(out, lse)


_FLEX = None


def _cuda_flex_supports(q: torch.Tensor, k: torch.Tensor, f: Features) -> bool:
    if q.device.type != "cuda" or q.dtype not in FUSED_DTYPES:
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_flex(q, k, v, mask, scale, causal, softcap):
    global _FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if _FLEX is None:
        _FLEX = torch.compile(flex_attention)  # compiled: the uncompiled op materialises the scores
    nq, nk = q.shape[2], k.shape[2]
    off = nk - nq
    cap = float(softcap) if softcap is not None else None
    add = mask

    def score_mod(score, b, h, qi, ki):
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if add is not None:
            score = score + add[b if add.shape[0] > 1 else 0, 0, qi, ki].to(score.dtype)
        elif causal:
            score = torch.where(ki <= qi + off, score, -float("inf"))
        return score

    gqa = q.shape[1] != k.shape[1]
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # older torch: the deprecated flag
        out, lse = _FLEX(q, k, v, score_mod=score_mod, scale=scale, enable_gqa=gqa, return_lse=True)
    else:
        out, aux = _FLEX(q, k, v, score_mod=score_mod, scale=scale, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        lse = aux.lse  # natural log (flex converts its base-2 statistics)
    return _hide_empty_rows(out, lse)


# --- the exact reference ----------------------------------------------------------------------------


def _reference_supports(q: torch.Tensor, k: torch.Tensor, f: Features) -> bool:
    return True


def _reference(q, k, v, mask, scale, causal, softcap):
    return reference_attention(q, k, v, mask, scale, causal, softcap)


class UnknownKernelError(UnknownNameError, ValueError):
    """No kernel backend of that name."""


# The kernels, in the order :func:`select_backend` tries them.
BACKENDS: Registry[Backend] = Registry("kernel backend", error=UnknownKernelError)
for _b in (
    Backend("cpu-flash", _cpu_flash_supports, _cpu_flash),
    Backend("cuda-flash", _cuda_flash_supports, _cuda_flash),
    Backend("cuda-efficient", _cuda_efficient_supports, _cuda_efficient),
    Backend("cuda-flex", _cuda_flex_supports, _cuda_flex),
    Backend("reference", _reference_supports, _reference),
):
    BACKENDS.register(_b.name, _b)


def select_backend(q: torch.Tensor, k: torch.Tensor, features: Features) -> Backend:
    """The backend for a call: the forced one (:func:`force_backend`) if set, else the first in
    :data:`BACKENDS` that supports the device, dtype and features.

    Raises:
        ValueError: the forced backend cannot run this call.
    """
    forced = _FORCED.get()
    if forced is not None:
        be = BACKENDS[forced]
        if not be.supports(q, k, features):
            raise ValueError(f"kernel backend {forced!r} cannot run a {q.dtype} call on {q.device} with {features}")
        return be
    for be in BACKENDS.values():
        if be.supports(q, k, features):
            return be
    return BACKENDS["reference"]


@contextlib.contextmanager
def force_backend(name: str) -> Iterator[None]:
    """Run every workbench attention call in this context (thread / task) with backend ``name``.

    Raises:
        UnknownKernelError (a ValueError): unknown backend name.
    """
    BACKENDS.get(name)
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                       scale: float, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention returning (output (B, Hq, Nq, D), lse (B, Hq, Nq) float32).

    ``mask`` is an additive float mask (0 / finite bias / -inf) broadcastable to (B, 1, Nq, Nk), or None for
    causal attention aligned bottom-right (no mask at all when Nq == 1). ``softcap`` c applies
    ``c * tanh(s / c)`` to the scaled scores before the mask is added (Gemma-2).
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
    feats = Features(mask=mask is not None, softcap=softcap is not None, causal=causal)
    be = select_backend(query, key, feats)
    return be.run(query, key, value, mask, scale, causal, softcap)
