"""The exact reference kernel: blockwise online softmax in plain torch, returning the output and the
log-sum-exp (the ``reference`` backend of :mod:`workbench.core.kernels`, and the oracle its tests compare
the fused kernels with)."""
from __future__ import annotations

import torch

REFERENCE_Q_BLOCK = 256
REFERENCE_K_BLOCK = 1024


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float, causal: bool = False, softcap: float | None = None,
                        q_block: int = REFERENCE_Q_BLOCK, k_block: int = REFERENCE_K_BLOCK
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention by blockwise online softmax (Milakov & Gimelshein 2018; FlashAttention's recurrence).

    For each block of ``q_block`` queries the keys are visited in blocks of ``k_block``, keeping the running
    maximum m, normaliser l and unnormalised output. Key blocks that the mask (or
    causality) hides from every query of the block are skipped.

    Args:
        q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) (Hq a multiple of Hkv).
        mask: additive (B or 1, 1, Nq, Nk) (0 / finite bias / -inf), or None.
        scale: softmax scale; causal: bottom-right causal when ``mask`` is None; softcap: c or None.
    Returns:
        (out (B, Hq, Nq, D) in q's dtype, lse (B, Hq, Nq) float32); rows that see no key give 0 and 0.
        Arithmetic is float32 (float64 for float64 inputs).
    Memory: O(B * Hq * q_block * k_block) floats besides the output.
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    rep, off = hq // hkv, nk - nq
    dev = q.device
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # at least float32 arithmetic
    out = torch.zeros(b, hq, nq, v.shape[-1], dtype=acc_dtype, device=dev)
    lse = torch.zeros(b, hq, nq, dtype=acc_dtype, device=dev)
    kf, vf = k.to(acc_dtype), v.to(acc_dtype)
    for a in range(0, nq, q_block):
        z = min(nq, a + q_block)
        c = z - a
        if mask is not None:
            seen = torch.isfinite(mask[:, :, a:z]).any(dim=2).any(dim=0).reshape(-1)  # (Nk,)
            idx = seen.nonzero()
            if idx.numel() == 0:
                continue
            k_lo, k_hi = int(idx[0]), int(idx[-1]) + 1
        else:
            k_lo, k_hi = 0, min(nk, z + off) if causal else nk
        qb = q[:, :, a:z].to(acc_dtype).reshape(b, hkv, rep * c, d)
        m = torch.full((b, hkv, rep * c), float("-inf"), dtype=acc_dtype, device=dev)
        den = torch.zeros(b, hkv, rep * c, dtype=acc_dtype, device=dev)
        acc = torch.zeros(b, hkv, rep * c, v.shape[-1], dtype=acc_dtype, device=dev)
        for k0 in range(k_lo, k_hi, k_block):
            k1 = min(k_hi, k0 + k_block)
            s = torch.matmul(qb, kf[:, :, k0:k1].transpose(-1, -2)) * scale  # (B, Hkv, rep*c, kb)
            if softcap is not None:
                s = torch.tanh(s / softcap) * softcap
            s = s.view(b, hkv, rep, c, k1 - k0)
            if mask is not None:
                s = s + mask[:, :, a:z, k0:k1].to(acc_dtype)[:, :, None]
            elif causal:
                hidden = torch.arange(k0, k1, device=dev)[None, :] > (torch.arange(a, z, device=dev) + off)[:, None]
                s = s.masked_fill(hidden, float("-inf"))
            s = s.reshape(b, hkv, rep * c, k1 - k0)
            m_new = torch.maximum(m, s.amax(dim=-1))
            safe = torch.where(torch.isfinite(m_new), m_new, 0.0)
            corr = torch.exp(m - safe)
            p = torch.exp(s - safe[..., None])
            den = den * corr + p.sum(-1)
            acc = acc * corr[..., None] + torch.matmul(p, vf[:, :, k0:k1])
            m = m_new
        seen_any = den > 0
        blk_out = torch.where(seen_any[..., None], acc / den.clamp_min(1e-30)[..., None], 0.0)
        blk_lse = torch.where(seen_any, m + torch.log(den.clamp_min(1e-30)), 0.0)
        out[:, :, a:z] = blk_out.view(b, hq, c, -1)
        lse[:, :, a:z] = blk_lse.view(b, hq, c)
    return out.to(q.dtype), lse.float()
