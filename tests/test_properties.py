"""Property-based tests (hypothesis): the closed-form statistics equal an independent eager reference
(its own float64 softmax and masks, no project helper) over random shapes, GQA ratios, decode offsets,
padding, random masks, head subsets and chunk sizes."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.core.attention import AttentionCall, attention_with_lse
from workbench.core.stats import head_statistics, sample_query_rows, sampled_received


@st.composite
def calls(draw):
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 2))
    rep = draw(st.integers(1, 3))
    nq = draw(st.integers(1, 10))
    off = draw(st.integers(0, 4))  # keys before the first query (a KV cache)
    nk = nq + off
    d = draw(st.sampled_from([4, 8]))
    mask_kind = draw(st.sampled_from(["causal", "padding", "random"]))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * rep, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g) * 1.5
    v = torch.randn(b, hkv, nk, d, generator=g)
    qpos = torch.arange(nq) + off
    vis = torch.arange(nk)[None, :] <= qpos[:, None]  # causal, bottom-right
    vis = vis[None, None].repeat(b, 1, 1, 1)
    if mask_kind == "padding":
        for i in range(b):
            pad = draw(st.integers(0, max(0, nk - 1)))
            vis[i, :, :, :pad] = False
    elif mask_kind == "random":
        vis &= torch.rand(vis.shape, generator=g) < 0.7
    if mask_kind != "causal":
        vis[..., -1] |= vis.sum(-1) == 0  # at least one visible key per row (a fully hidden row has no attention)
        vis &= torch.arange(nk)[None, :] <= qpos[:, None]
        vis |= (vis.sum(-1, keepdim=True) == 0) & (torch.arange(nk)[None, :] == qpos[:, None])
    mask = None if mask_kind == "causal" else torch.zeros(vis.shape).masked_fill(~vis, float("-inf"))
    scale = draw(st.sampled_from([0.3, 1.0 / d ** 0.5]))
    out, lse = attention_with_lse(q, k, v, mask, scale)
    heads = draw(st.one_of(st.none(), st.lists(st.integers(0, hkv * rep - 1), min_size=1, max_size=hkv * rep,
                                               unique=True)))
    chunk = draw(st.sampled_from([1, 7, 64, 1 << 20]))
    return AttentionCall(0, q, k, v, mask, out, lse, scale), vis, heads, chunk


def eager(call: AttentionCall, vis: torch.Tensor) -> torch.Tensor:
    """(B, Hq, Nq, Nk) float64 softmax with the given visibility."""
    rep = call.query.shape[1] // call.key.shape[1]
    k = call.key.double().repeat_interleave(rep, dim=1)
    s = torch.matmul(call.query.double(), k.transpose(-1, -2)) * call.scale
    s = s.masked_fill(~vis, float("-inf"))
    return torch.softmax(s, dim=-1)


@settings(max_examples=120, deadline=None)
@given(calls())
def test_statistics_equal_the_eager_reference(case):
    call, vis, heads, chunk = case
    hsel = list(range(call.query.shape[1])) if heads is None else heads
    p = eager(call, vis)[:, hsel]  # (B, H', Nq, Nk)
    st_ = head_statistics(call, heads, received=True, rows=True, chunk_elements=chunk)
    torch.testing.assert_close(st_["received_sum"].double(), p.sum(2), atol=2e-5, rtol=1e-4)
    count = vis.sum(2, dtype=torch.float64)  # (B, 1, Nk)
    torch.testing.assert_close(st_["received_count"].double().expand_as(count), count)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    torch.testing.assert_close(st_["entropy"].double(), ent, atol=5e-5, rtol=1e-4)
    qpos = (torch.arange(call.query.shape[2]) + call.q_offset).double()
    dist = (p * (qpos[:, None] - torch.arange(call.key.shape[2]).double()[None, :])).sum(-1)
    torch.testing.assert_close(st_["distance"].double(), dist, atol=5e-5, rtol=1e-4)
    top_p, top_k = p.max(-1)
    torch.testing.assert_close(st_["top_prob"].double(), top_p, atol=2e-5, rtol=1e-4)
    # ties aside (probabilities within 1e-6), the top key is the eager argmax
    chosen = p.gather(-1, st_["top_key"][..., None])[..., 0]
    assert torch.all((st_["top_key"] == top_k) | (top_p - chosen < 1e-6))


@settings(max_examples=60, deadline=None)
@given(calls(), st.integers(1, 6), st.integers(0, 99))
def test_sampled_received_equals_the_eager_mean_over_the_sampled_rows(case, m, seed):
    call, vis, heads, chunk = case
    hsel = list(range(call.query.shape[1])) if heads is None else heads
    rows = sample_query_rows(call.query.shape[2], m, seed)
    got = sampled_received(call, rows, heads, chunk)
    p = eager(call, vis)[:, hsel]
    torch.testing.assert_close(got["received_sum"].double(), p[:, :, rows].sum(2), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got["received_count"].double().expand(vis.shape[0], 1, -1),
                               vis[:, :, rows].sum(2, dtype=torch.float64))
    torch.testing.assert_close(got["received_population"].double().expand(vis.shape[0], 1, -1),
                               vis.sum(2, dtype=torch.float64))
