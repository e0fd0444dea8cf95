"""Exact attention statistics, block by block: the score-block size, and the two block loops that recover
``A[i,j] = exp(s_ij - lse_i)`` and reduce them (the unmasked causal fast path of all heads, and the general
path: masks, soft-capping, head subsets), both called by :func:`workbench.core.stats.head_statistics`."""
from __future__ import annotations

import math

import torch

from .attention_call import LOG2E, AttentionCall

# 1M floats = 4 MiB per score block: measured fastest on a 2-core AMD EPYC (1 MiB L2 per core,
# 32 MiB L3) at 2048-8192 tokens; 8M-float blocks were up to 3x slower (benchmarks/profile_attention.py).
DEFAULT_CHUNK_ELEMENTS = 1 << 20
# ...but never fewer than 32 query rows per block: thinner GEMMs were 19% slower at 16384 tokens
# (the block is then 32 x H x N floats, still O(N) per head)
MIN_BLOCK_ROWS = 32
LN2 = math.log(2.0)


def _chunk_rows(call: AttentionCall, chunk_elements: int) -> int:
    """Query rows per score block: ``chunk_elements`` floats, at least MIN_BLOCK_ROWS rows, at most all rows."""
    b, h, nq, _ = call.query.shape
    return max(1, min(nq, max(MIN_BLOCK_ROWS, chunk_elements // max(1, b * h * call.key.shape[2]))))


def _causal_statistics(call: AttentionCall, received: bool, want: set[str], chunk_elements: int) -> dict[str, torch.Tensor]:
    """Fast path for unmasked causal calls (all heads): one batched GEMM per chunk with the
    log-sum-exp subtracted inside the GEMM, an in-place exp, and masking of the chunk's
    diagonal block only (keys before the chunk are visible to all of its queries)."""
    b, hq, nq, d = call.query.shape
    hkv, nk = call.key.shape[1], call.key.shape[2]
    rep, off = hq // hkv, call.q_offset
    dev = call.device
    # base-2 units: s2 = (scale q.k - lse) * log2(e), A = exp2(s2); exp2 is several times faster than exp
    # on this kind of input, and far faster where exp underflows (scores far below the log-sum-exp)
    q = (call.query.float() * (call.scale * LOG2E)).reshape(b * hkv, rep, nq, d)
    k = call.key.float().reshape(b * hkv, nk, d)
    lse = call.lse.reshape(b * hkv, rep, nq) * LOG2E
    out: dict[str, torch.Tensor] = {}
    if received:
        rsum = torch.zeros(b * hkv, rep, nk, device=dev)
        # query i (absolute position i + off) sees key k iff k <= i + off
        kidx = torch.arange(nk, dtype=torch.float32, device=dev)
        out["received_count"] = (nq - (kidx - off).clamp_min(0)).clamp_min(0).view(1, 1, nk)
    probs_rows = bool(want & {"entropy", "distance"})  # these need exp(s); the top key does not
    top_rows = bool(want & {"top_key", "top_prob"})
    ent = torch.empty(b * hkv, rep, nq, device=dev) if "entropy" in want else None
    dist = torch.empty(b * hkv, rep, nq, device=dev) if "distance" in want else None
    if top_rows:
        top = torch.empty(b * hkv, rep, nq, dtype=torch.long, device=dev)
        topp = torch.empty(b * hkv, rep, nq, device=dev)
    kpos = torch.arange(nk, dtype=torch.float32, device=dev)
    step = _chunk_rows(call, chunk_elements)
    # one score block reused by every chunk: no allocation (and no fresh pages to fault in) per chunk
    block = torch.empty(b * hq * step * nk, device=dev)
    for a in range(0, nq, step):
        z = min(nq, a + step)
        c, kmax = z - a, min(nk, z + off)
        qc = q[:, :, a:z].reshape(b * hkv, rep * c, d)
        neg_lse = (-lse[:, :, a:z]).reshape(b * hkv, rep * c, 1).expand(-1, -1, kmax)
        s = block[: b * hq * c * kmax].view(b * hkv, rep * c, kmax)
        torch.baddbmm(neg_lse, qc, k[:, :kmax].transpose(1, 2), out=s)  # (score - lse) * log2(e)
        s = s.view(b * hkv, rep, c, kmax)
        # the diagonal block: keys a+off .. kmax-1, hidden above the diagonal
        d0 = a + off
        hidden = torch.ones(c, kmax - d0, dtype=torch.bool, device=dev).triu_(1)
        if want:
            s[..., d0:].masked_fill_(hidden, float("-inf"))
            if top_rows:
                tp, tk = s.max(dim=-1)
                top[:, :, a:z], topp[:, :, a:z] = tk, torch.exp2(tp)
            if probs_rows or received:
                p = torch.exp2(s)
            if ent is not None:  # -sum A ln A = -ln(2) sum A s2
                ent[:, :, a:z] = -LN2 * torch.where(p > 0, p * s, 0.0).sum(-1)
            if dist is not None:
                qpos = torch.arange(a, z, dtype=torch.float32, device=dev) + off
                # sum_j A_ij (i - j); rows sum to 1 except with learned sinks, which keep the rest
                mass = 1.0 if call.sinks is None else p.sum(-1)
                dist[:, :, a:z] = qpos * mass - torch.matmul(p, kpos[:kmax])
        else:
            p = s.exp2_()
            p[..., d0:].masked_fill_(hidden, 0.0)
        if received:
            rsum[..., :kmax] += p.sum(dim=2)
    if received:
        out["received_sum"] = rsum.view(b, hq, nk)
    for name, arr in (("entropy", ent), ("distance", dist)):
        if arr is not None:
            out[name] = arr.view(b, hq, nq)
    if top_rows:
        out.update(top_key=top.view(b, hq, nq), top_prob=topp.view(b, hq, nq))
    return out


def _masked_statistics(call: AttentionCall, heads: list[int] | None, received: bool, want: set[str],
                       chunk_elements: int) -> dict[str, torch.Tensor]:
    """General path: explicit masks (padding) or a subset of heads."""
    b, hq, nq, _ = call.query.shape
    nk = call.key.shape[2]
    hsel = list(range(hq)) if heads is None else list(heads)
    h = len(hsel)
    all_heads = None if heads is None or hsel == list(range(hq)) else hsel
    dev = call.device
    out: dict[str, torch.Tensor] = {}
    if received:
        rsum = torch.zeros(b, h, nk, device=dev)
        rcount = torch.zeros(call.visible(0, 1).shape[0], 1, nk, device=dev)
    ent = torch.empty(b, h, nq, device=dev) if "entropy" in want else None
    dist = torch.empty(b, h, nq, device=dev) if "distance" in want else None
    top_rows = bool(want & {"top_key", "top_prob"})
    if top_rows:
        top = torch.empty(b, h, nq, dtype=torch.long, device=dev)
        topp = torch.empty(b, h, nq, device=dev)
    step = _chunk_rows(call, chunk_elements)
    kpos = torch.arange(nk, dtype=torch.float32, device=dev)
    for a in range(0, nq, step):
        z = min(nq, a + step)
        # causal without an explicit mask: keys after the chunk's last query are never visible
        kmax = nk if call.mask is not None else min(nk, z + call.q_offset)
        s = call.scores(a, z, keys=slice(0, kmax), heads=all_heads)
        lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, all_heads, a:z]
        if received or ent is not None or dist is not None:
            p = torch.exp2((s - lse[..., None]).mul_(LOG2E))
        if received:
            rsum[..., :kmax] += p.sum(dim=2)
            rcount[..., :kmax] += call.visible(a, z, kmax).sum(dim=2, dtype=torch.float32)
        if ent is not None:  # -sum_j A_ij ln A_ij over the keys (with learned sinks the rows sum to < 1)
            ent[..., a:z] = -torch.where(p > 0, p * (s - lse[..., None]), 0.0).sum(-1)
        if dist is not None:
            qpos = torch.arange(a, z, dtype=torch.float32, device=dev) + call.q_offset
            mass = 1.0 if call.sinks is None else p.sum(-1)
            dist[..., a:z] = qpos * mass - torch.matmul(p, kpos[:kmax])
        if top_rows:
            tp, tk = s.max(dim=-1)
            top[..., a:z] = tk
            topp[..., a:z] = torch.exp(tp - lse)
    if received:
        out["received_sum"], out["received_count"] = rsum, rcount
    for name, arr in (("entropy", ent), ("distance", dist)):
        if arr is not None:
            out[name] = arr
    if top_rows:
        out.update(top_key=top, top_prob=topp)
    return out
