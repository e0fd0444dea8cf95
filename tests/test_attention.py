"""The kernel-backed attention: same logits as stock SDPA, exact LSE, GQA, padding, KV-cache generation."""
import pytest
import torch

from tests.conftest import make_tiny_lm
from workbench.core.attention import AttentionCall, attention_hooks, attention_with_lse


def _eager_scores(q, k, scale, causal_offset=0):
    rep = q.shape[1] // k.shape[1]
    kr = k.repeat_interleave(rep, dim=1)
    s = (q @ kr.transpose(-1, -2)) * scale
    nq, nk = q.shape[2], k.shape[2]
    hidden = torch.arange(nk)[None, :] > (torch.arange(nq)[:, None] + causal_offset)
    return s.masked_fill(hidden, float("-inf"))


@pytest.mark.parametrize("nq,nk", [(17, 17), (1, 17), (5, 17)])
def test_kernel_output_and_lse_match_explicit_softmax(nq, nk):
    torch.manual_seed(0)
    q = torch.randn(2, 6, nq, 16)
    k, v = torch.randn(2, 3, nk, 16), torch.randn(2, 3, nk, 16)
    out, lse = attention_with_lse(q, k, v, None, 0.25)
    s = _eager_scores(q, k, 0.25, causal_offset=nk - nq)
    ref = torch.softmax(s, -1) @ v.repeat_interleave(2, dim=1)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(lse, torch.logsumexp(s, -1), atol=1e-5)


def test_logits_equal_stock_sdpa(tiny_lm):
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        ours = tiny_lm.model(ids).logits
        tiny_lm.model.set_attn_implementation("sdpa")
        stock = tiny_lm.model(ids).logits
        tiny_lm.model.set_attn_implementation("workbench")
    assert torch.allclose(ours, stock, atol=1e-5)


def test_padded_batch_agrees_with_unpadded(tiny_lm):
    torch.manual_seed(1)
    a, b = torch.randint(3, 97, (1, 30)), torch.randint(3, 97, (1, 22))
    pad = torch.zeros(1, 8, dtype=torch.long)
    ids = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :8] = 0
    with torch.no_grad():
        batch = tiny_lm.model(ids, attention_mask=mask).logits
        la = tiny_lm.model(a).logits
        lb = tiny_lm.model(b).logits
    assert torch.isfinite(batch).all()
    assert torch.allclose(batch[0], la[0], atol=1e-4)
    assert torch.allclose(batch[1, 8:], lb[0], atol=1e-4)


def test_generate_with_kv_cache_equals_stock_sdpa(tiny_lm):
    ids = torch.randint(3, 97, (1, 12))
    kw = dict(max_new_tokens=15, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = tiny_lm.model.generate(ids, **kw)
        tiny_lm.model.set_attn_implementation("sdpa")
        stock = tiny_lm.model.generate(ids, **kw)
        tiny_lm.model.set_attn_implementation("workbench")
    assert torch.equal(ours, stock)


def test_hooks_see_every_layer_and_can_replace_output(tiny_lm):
    seen = []

    class Spy:
        def on_attention(self, call: AttentionCall):
            seen.append((call.layer, tuple(call.query.shape), tuple(call.key.shape)))
            return torch.zeros_like(call.output) if call.layer == 1 else None

    ids = torch.randint(3, 97, (1, 10))
    with torch.no_grad():
        base = tiny_lm.model(ids).logits
        with attention_hooks(Spy()):
            changed = tiny_lm.model(ids).logits
        after = tiny_lm.model(ids).logits
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == (1, 4, 10, 16) and seen[0][2] == (1, 2, 10, 16)  # GQA keys not repeated
    assert not torch.allclose(base, changed)
    assert torch.equal(base, after)  # the hook is gone after the block


def test_bottom_right_causal_for_chunked_queries():
    """Queries that follow cached keys see every earlier key (not the kernels' top-left alignment)."""
    lm = make_tiny_lm(n_layers=1)
    ids = torch.randint(3, 97, (1, 20))
    with torch.no_grad():
        full = lm.model(ids, use_cache=True)
        first = lm.model(ids[:, :15], use_cache=True)
        rest = lm.model(ids[:, 15:], past_key_values=first.past_key_values, use_cache=True)
    assert torch.allclose(full.logits[:, 15:], rest.logits, atol=1e-5)


@pytest.mark.parametrize("nq,nk", [(9, 9), (1, 9), (4, 9)])
def test_float64_reference_kernel_matches(nq, nk):
    """float64 has no CPU flash kernel: the exact blockwise reference (workbench.core.kernels) runs it."""
    torch.manual_seed(2)
    q = torch.randn(1, 4, nq, 8, dtype=torch.float64)
    k, v = torch.randn(1, 2, nk, 8, dtype=torch.float64), torch.randn(1, 2, nk, 8, dtype=torch.float64)
    out, lse = attention_with_lse(q, k, v, None, 0.3)
    s = _eager_scores(q, k, 0.3, causal_offset=nk - nq)
    assert torch.allclose(out, torch.softmax(s, -1) @ v.repeat_interleave(2, dim=1), atol=1e-10)
    assert torch.allclose(lse.double(), torch.logsumexp(s, -1), atol=1e-5)


# --- workbench_attention called directly, against an eager softmax written here --------------------------------

def _direct(nq=6, nk=6, hq=4, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, hq, nq, d, generator=g), torch.randn(2, hkv, nk, d, generator=g),
            torch.randn(2, hkv, nk, d, generator=g))


def _eager_out(q, k, v, scale, hidden=None, softcap=None, sinks=None):
    """(B, Nq, Hq, D) output and (B, Hq, Nq, Nk) map from float64 scores; ``hidden`` (B|1, 1, Nq, Nk) bool,
    default bottom-right causal; ``sinks`` (Hq,) learned sink logits that take a share of each row."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.matmul(q.double(), k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    nq, nk = s.shape[-2:]
    if hidden is None:
        hidden = (torch.arange(nk)[None, :] > torch.arange(nq)[:, None] + (nk - nq))[None, None]
    s = s.masked_fill(hidden, float("-inf"))
    if sinks is not None:
        col = sinks.double().view(1, -1, 1, 1).expand(s.shape[0], -1, nq, 1)
        p = torch.softmax(torch.cat([s, col], -1), -1)[..., :-1]
    else:
        p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return torch.matmul(p, v).transpose(1, 2), p


class _Keep:
    def on_attention(self, call):
        self.call = call


def test_direct_call_defaults_scale_to_inverse_sqrt_head_dim_and_layer_to_minus_one():
    import math
    import types

    from workbench.core.attention import workbench_attention

    q, k, v = _direct(nq=6, nk=6, d=8)
    keep = _Keep()
    with attention_hooks(keep):
        out, _ = workbench_attention(types.SimpleNamespace(), q, k, v, None)  # no scaling, no layer_idx
    ref, p = _eager_out(q, k, v, 1.0 / math.sqrt(8))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert keep.call.layer == -1 and keep.call.scale == pytest.approx(1.0 / math.sqrt(8))
    # probabilities of a head subset are those heads' rows of the map
    torch.testing.assert_close(keep.call.probs(heads=[3, 0]).double(), p[:, [3, 0]], atol=1e-5, rtol=1e-5)


def test_direct_call_masks_windows_softcap_and_sinks_as_the_eager_reference():
    import types

    from workbench.core.attention import workbench_attention

    mod = types.SimpleNamespace(layer_idx=3)
    q, k, v = _direct(nq=7, nk=7)
    causal = torch.arange(7)[None, :] > torch.arange(7)[:, None]
    # an additive float mask as transformers makes it (finfo.min where hidden), left padding on sequence 1
    hidden = causal[None, None].repeat(2, 1, 1, 1)
    hidden[1, :, :, :2] = True
    add = torch.zeros(hidden.shape).masked_fill(hidden, torch.finfo(torch.float32).min)
    keep = _Keep()
    with attention_hooks(keep):
        out, _ = workbench_attention(mod, q, k, v, add, scaling=0.3)
    ref, _ = _eager_out(q, k, v, 0.3, hidden)
    ok = ~hidden[:, 0].all(-1)  # rows that see some key
    torch.testing.assert_close(out.double().transpose(1, 2)[ok[:, None].expand(-1, 4, -1)],
                               ref.transpose(1, 2)[ok[:, None].expand(-1, 4, -1)], atol=1e-5, rtol=1e-5)
    assert keep.call.layer == 3 and torch.equal(torch.isinf(keep.call.mask), hidden)  # hidden keys are -inf
    # the same mask as booleans (True = attend)
    out_b, _ = workbench_attention(mod, q, k, v, ~hidden, scaling=0.3)
    torch.testing.assert_close(out_b[ok], out[ok])
    # no mask but a sliding window shorter than the keys: the window is applied (q - W < k <= q)
    out_w, _ = workbench_attention(mod, q, k, v, None, scaling=0.3, sliding_window=3)
    win = causal | (torch.arange(7)[None, :] <= torch.arange(7)[:, None] - 3)
    torch.testing.assert_close(out_w.double(), _eager_out(q, k, v, 0.3, win[None, None])[0], atol=1e-5, rtol=1e-5)
    with attention_hooks(keep):  # in bfloat16 the window mask has the model's dtype
        workbench_attention(mod, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, scaling=0.3, sliding_window=3)
    assert keep.call.mask.dtype == torch.bfloat16 and torch.equal(torch.isinf(keep.call.mask[0, 0]), win)
    # soft-capped scores (Gemma-2) and learned sinks (gpt-oss)
    out_c, _ = workbench_attention(mod, q, k, v, None, scaling=0.9, softcap=2.0)
    torch.testing.assert_close(out_c.double(), _eager_out(q, k, v, 0.9, softcap=2.0)[0], atol=1e-5, rtol=1e-5)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out_s, _ = workbench_attention(mod, q, k, v, None, scaling=0.3, s_aux=sinks)
    torch.testing.assert_close(out_s.double(), _eager_out(q, k, v, 0.3, sinks=sinks)[0], atol=1e-5, rtol=1e-5)


def test_call_blocks_equal_rows_and_columns_of_the_eager_scores():
    """visible / additive_mask / scores of a block (rows, key subsets, head subsets), causal and masked."""
    import types

    from workbench.core.attention import workbench_attention

    q, k, v = _direct(nq=7, nk=7)
    causal = (torch.arange(7)[None, :] > torch.arange(7)[:, None])[None, None]
    padded = causal.repeat(2, 1, 1, 1)
    padded[1, :, :, :2] = True
    keys = torch.tensor([0, 3, 6])
    for mask, hid in ((None, causal), (~padded, padded)):
        keep = _Keep()
        with attention_hooks(keep):
            workbench_attention(types.SimpleNamespace(layer_idx=0), q, k, v, mask, scaling=0.3)
        c = keep.call
        ref = (torch.matmul(q.double(), k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.3)
        ref = ref.masked_fill(hid, float("-inf"))
        assert torch.equal(c.visible(), ~hid) and torch.equal(c.visible(2, 5, keys=keys), ~hid[:, :, 2:5][..., keys])
        assert torch.equal(torch.isinf(c.additive_mask(1, 4)), hid[:, :, 1:4])
        assert torch.equal(torch.isinf(c.additive_mask(keys=keys)), hid[..., keys])
        torch.testing.assert_close(c.scores(2, 5).double(), ref[:, :, 2:5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c.scores(keys=keys).double(), ref[..., keys], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c.scores(1, 6, keys=keys, heads=[3, 1]).double(), ref[:, [3, 1], 1:6][..., keys],
                                   atol=1e-5, rtol=1e-5)
