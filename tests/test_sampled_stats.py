"""Row-sampled received attention and decode-only recording: what they estimate, and their stated bound."""
import math

import pytest
import torch

from tests.test_tracer import eager_maps
from workbench import Tracer
from workbench.core.stats import hoeffding_serfling_bound, sample_query_rows


def test_sample_query_rows_is_a_sorted_reproducible_subset():
    r = sample_query_rows(100, 30, seed=4)
    assert r.numel() == 30 and torch.equal(r, r.sort().values) and r.unique().numel() == 30
    assert torch.equal(r, sample_query_rows(100, 30, seed=4))
    assert not torch.equal(r, sample_query_rows(100, 30, seed=5))
    assert torch.equal(sample_query_rows(10, 50), torch.arange(10))


def test_bound_is_zero_when_all_rows_are_sampled_and_shrinks_with_more_rows():
    pop = torch.full((4,), 1000.0)
    eps = hoeffding_serfling_bound(torch.tensor([0.0, 10.0, 100.0, 1000.0]), pop, delta=0.05)
    assert eps[0] == 1.0 and eps[3] == 0.0
    assert 1.0 > eps[1] > eps[2] > 0.0
    # with replacement-free sampling from a huge population it tends to Hoeffding's sqrt(ln(2/delta)/(2n))
    huge = hoeffding_serfling_bound(torch.tensor([100.0]), torch.tensor([1e9]), 0.05)
    assert huge.item() == pytest.approx(math.sqrt(math.log(40.0) / 200), rel=1e-6)
    with pytest.raises(ValueError, match="delta"):
        hoeffding_serfling_bound(pop, pop, delta=1.5)


def test_sampled_received_equals_exact_mean_over_the_sampled_rows(tiny_lm):
    """With a planted row sample, the estimate is exactly the eager mean over those rows."""
    ids = torch.randint(3, 97, (2, 64))
    A, _ = eager_maps(tiny_lm, ids)
    tr = Tracer(tiny_lm, stats=("received",), received_sample_rows=20, seed=7, chunk_elements=200).run(ids)
    rows = sample_query_rows(64, 20, seed=7)
    sub = A[:, :, :, rows]  # (L, B, H, m, N); hidden entries are 0
    seen = (torch.arange(64)[None, :] <= rows[:, None]).sum(0).float()  # sampled rows that see key k
    ref = sub.sum(3) / seen.clamp_min(1)
    assert torch.allclose(tr["received"], ref, atol=1e-5)
    n_k = torch.arange(64, 0, -1).float()
    assert torch.allclose(tr["received_bound"][0, 0], hoeffding_serfling_bound(seen, n_k, 0.05))
    assert tr.meta["received_sampling"]["rows"] == 20


def test_sampling_all_rows_is_exact_and_padding_is_respected(tiny_lm):
    torch.manual_seed(3)
    a = torch.randint(3, 97, (1, 24))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 6, dtype=torch.long), a[:, :18]], 1)])
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    exact = Tracer(tiny_lm, stats=("received",)).run(ids, attention_mask=mask)
    full_sample = Tracer(tiny_lm, stats=("received",), received_sample_rows=24).run(ids, attention_mask=mask)
    assert torch.allclose(exact["received"], full_sample["received"], atol=1e-6)
    # a real subsample under padding: the padded row's hidden keys get no sampled rows and bound 1
    part = Tracer(tiny_lm, stats=("received",), received_sample_rows=12, seed=1).run(ids, attention_mask=mask)
    assert torch.all(part["received_bound"][:, 1, :6] == 1.0)
    assert torch.all(part["received"][:, 1, :, :6] == 0.0)


@pytest.mark.slow
def test_real_model_sampled_received_is_within_its_bound(smollm2):
    """SmolLM2 on 1024 tokens of real prose: every (layer, head, key) estimate from 128 of 1024 rows
    is within the stated bound of the exact value (the bound is for 95% per entry; it is loose)."""
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 1024, 1)
    exact = Tracer(smollm2, stats=("received",)).run(ids)["received"]
    tr = Tracer(smollm2, stats=("received",), received_sample_rows=128, seed=0).run(ids)
    err = (tr["received"] - exact).abs()
    bound = tr["received_bound"][:, :, None, :].expand_as(err)
    assert (err <= bound).float().mean() > 0.99
    # the sink statistic of interest, first-token mass, is close and finds the same sink heads
    assert (err[..., 0] <= bound[..., 0]).float().mean() > 0.95
    assert ((tr["received"][..., 0] > 0.3) == (exact[..., 0] > 0.3)).float().mean() > 0.97


def test_rows_from_records_only_decoded_queries(tiny_lm):
    ids = torch.randint(3, 97, (1, 12))
    tracer = Tracer(tiny_lm, stats=("entropy", "top_key"), z=True, rows_from=12)
    with torch.no_grad(), tracer:
        seq = tiny_lm.model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    gen = tracer.trace(seq)
    full = Tracer(tiny_lm, stats=("entropy", "top_key"), z=True).run(seq[:, :-1])
    assert gen["top_key"].shape[-1] == seq.shape[1] - 1 - 12
    assert torch.equal(gen["top_key"], full["top_key"][..., 12:])
    assert torch.allclose(gen["entropy"], full["entropy"][..., 12:], atol=1e-4)
    assert torch.allclose(gen["z"], full["z"][:, :, 12:], atol=1e-5)
    frame = gen.to_frame("entropy")
    assert frame["query"].min() == 12 and frame["query"].max() == seq.shape[1] - 2


def test_row_arrays_and_pattern_window_have_their_own_query_coordinates(tiny_lm):
    ids = torch.randint(3, 97, (1, 20))
    tr = Tracer(tiny_lm, stats=("entropy",), pattern_window=(5, 12)).run(ids)
    assert tr.to_frame("entropy")["query"].min() == 0
    assert tr.to_frame("pattern")["query"].min() == 5


def test_bad_sampling_arguments(tiny_lm):
    with pytest.raises(ValueError, match="received_sample_rows"):
        Tracer(tiny_lm, stats=("received",), received_sample_rows=0)
    with pytest.raises(ValueError, match="bound_delta"):
        Tracer(tiny_lm, stats=("received",), received_sample_rows=4, bound_delta=0.0)
    with pytest.raises(ValueError, match="rows_from"):
        Tracer(tiny_lm, rows_from=-1)


def _random_call(nq=40, nk=40, mask=False):
    from workbench.core.attention import AttentionCall, attention_with_lse

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, nq, 8), torch.randn(2, 2, nk, 8), torch.randn(2, 2, nk, 8)
    m = None
    if mask:  # left padding of the second sequence, causal otherwise
        vis = torch.tril(torch.ones(nq, nk, dtype=torch.bool), diagonal=nk - nq)[None, None].repeat(2, 1, 1, 1)
        vis[1, :, :, :5] = False
        m = torch.zeros(vis.shape).masked_fill(~vis, float("-inf"))
    out, lse = attention_with_lse(q, k, v, m, 0.3)
    return AttentionCall(0, q, k, v, m, out, lse, 0.3)


def _eager_probs(call) -> torch.Tensor:
    """The call's softmax map in float64 from q and k, with its own masks (bottom-right causal or the call's
    additive mask); fully hidden rows are zero. (B, Hq, Nq, Nk)."""
    q, k = call.query.double(), call.key.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * call.scale
    nq, nk = s.shape[-2:]
    if call.mask is not None:
        s = s + call.mask.double()
    else:
        s = s.masked_fill(torch.arange(nk)[None, :] > torch.arange(nq)[:, None] + (nk - nq), float("-inf"))
    return torch.nan_to_num(torch.softmax(s, -1), nan=0.0)


@pytest.mark.parametrize("mask,heads", [(False, None), (True, None), (False, [3, 0]), (True, [2, 1])])
def test_a_subset_of_row_statistics_equals_the_full_computation(mask, heads):
    from workbench.core.stats import head_statistics

    call = _random_call(mask=mask)
    full = head_statistics(call, heads, received=True, rows=True, chunk_elements=300)
    # the full computation equals the eager map of the chosen heads, in every path (causal / masked, subsets)
    p = _eager_probs(call)[:, heads if heads is not None else slice(None)]
    seen = (p > 0).any(-1)  # rows that see some key
    torch.testing.assert_close(full["received_sum"].double(), p.sum(2), atol=1e-5, rtol=1e-5)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    torch.testing.assert_close(full["entropy"].double()[seen], ent[seen], atol=1e-4, rtol=1e-4)
    dist = (p * (torch.arange(40)[:, None] - torch.arange(40)[None, :]).double()).sum(-1)
    torch.testing.assert_close(full["distance"].double()[seen], dist[seen], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full["top_prob"].double()[seen], p.max(-1).values[seen], atol=1e-5, rtol=1e-5)
    assert torch.equal(full["top_key"][seen], p.argmax(-1)[seen])
    top = head_statistics(call, heads, received=False, rows=("top_key",), chunk_elements=300)
    assert set(top) == {"top_key", "top_prob"}
    assert torch.equal(top["top_key"], full["top_key"])
    ent = head_statistics(call, heads, received=True, rows=("entropy",), chunk_elements=300)
    assert torch.allclose(ent["entropy"], full["entropy"]) and "distance" not in ent
    assert torch.allclose(ent["received_sum"], full["received_sum"])
    with pytest.raises(ValueError, match="unknown row statistics"):
        head_statistics(call, heads, rows=("entropyy",))


def test_visibility_of_chosen_keys_equals_columns_of_the_full_visibility():
    for mask in (False, True):
        call = _random_call(nq=12, nk=30, mask=mask)
        keys = torch.tensor([0, 7, 17, 29])
        assert torch.equal(call.visible(2, 9, keys=keys), call.visible(2, 9)[..., keys])
        assert torch.allclose(call.probs(2, 9, keys=keys), call.probs(2, 9)[..., keys])


def test_bound_uses_bardenet_maillard_corollary_2_5_factor():
    """rho_n = 1 - (n-1)/N for n <= N/2, (1 - n/N)(1 + 1/n) above; eps = sqrt(rho ln(2/delta) / (2n))."""
    big_n = 1000.0
    for n, rho in ((1, 1.0), (10, 1 - 9 / big_n), (500, 1 - 499 / big_n), (501, (1 - 501 / big_n) * (1 + 1 / 501)),
                   (900, (1 - 0.9) * (1 + 1 / 900))):
        eps = hoeffding_serfling_bound(torch.tensor([float(n)]), torch.tensor([big_n]), 0.1).item()
        assert eps == pytest.approx(min(1.0, math.sqrt(rho * math.log(20.0) / (2 * n))), rel=1e-6), n
    # a tensor delta is applied per entry
    two = hoeffding_serfling_bound(torch.tensor([10.0, 10.0]), torch.tensor([100.0, 100.0]), torch.tensor([0.1, 0.01]))
    assert two[1] > two[0]


def test_sampled_received_over_generate_is_the_stratified_estimate(tiny_lm):
    """Prefill sampled, decode steps exact: the estimate weights the prefill's sampled sum by N_k / n_k,
    and the bound is the prefill's half-width scaled by its share N_pk / N_k of the queries."""
    ids = torch.randint(3, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    tracer = Tracer(tiny_lm, stats=("received",), received_sample_rows=10, seed=3)
    with torch.no_grad(), tracer:
        seq = tiny_lm.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    tr = tracer.trace(seq)
    n_all = seq.shape[1] - 1  # queries that ran: 40 prompt rows + 7 decode steps
    A, _ = eager_maps(tiny_lm, seq[:, :n_all])  # (L, 1, H, Nq, Nk)
    rows = sample_query_rows(40, 10, seed=3)
    k = torch.arange(n_all)
    pop_p = (40 - k).clamp_min(0).float()  # prompt queries that see key k
    n_p = (rows[:, None] >= k[None, :]).sum(0).float()  # sampled prompt rows that see key k
    s_p = A[:, :, :, rows].sum(3)  # sampled prefill sums
    s_d = A[:, :, :, 40:].sum(3)  # exact decode sums
    total = (n_all - k).float()
    w = torch.where(n_p > 0, pop_p / n_p.clamp_min(1), torch.zeros(()))
    ref = (s_p * w + s_d) / total
    assert torch.allclose(tr["received"], ref, atol=1e-5)
    # the naive pooled mean (sampled prefill rows and decode rows as one sample) differs: it was biased
    naive = (s_p + s_d) / (n_p + (total - pop_p))
    assert (tr["received"] - naive).abs().max() > 1e-3
    eps_p = hoeffding_serfling_bound(n_p, pop_p, 0.05)
    ref_bound = torch.where(pop_p > 0, pop_p * eps_p / total, torch.zeros(()))
    assert torch.allclose(tr["received_bound"][0, 0], ref_bound, atol=1e-6)
    assert torch.all(tr["received_bound"][0, 0, 40:] == 0)  # keys only decode steps see: exact


def _coverage(lm, ids, rows, seeds, new_tokens):
    """Share of (seed, layer, head, key) entries whose sampled estimate lies within its bound, and the
    share for the first token (the sink entry, largest values), over ``seeds``, and the largest error / bound."""
    def run(sample, seed):
        tracer = Tracer(lm, stats=("received",), received_sample_rows=sample, seed=seed)
        with torch.no_grad(), tracer:
            if new_tokens:
                seq = lm.model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                        pad_token_id=lm.tokenizer.eos_token_id)
            else:
                lm.model(ids, use_cache=False)
                seq = ids
        return tracer.trace(seq)
    exact = run(None, 0)["received"]
    inside, inside0, worst = [], [], 0.0
    for seed in seeds:
        tr = run(rows, seed)
        err = (tr["received"] - exact).abs()
        bound = tr["received_bound"][:, :, None, :].expand_as(err)
        ok = err <= bound + 1e-5  # exact strata (bound 0) differ from the exact run by kernel rounding only
        inside.append(ok.float().mean().item())
        inside0.append(ok[..., 0].float().mean().item())
        pos = bound > 1e-5
        worst = max(worst, (err[pos] / bound[pos]).max().item())
    return sum(inside) / len(inside), sum(inside0) / len(inside0), worst


@pytest.mark.slow
def test_real_model_bound_covers_over_seeds_with_and_without_generation(smollm2):
    """SmolLM2, a 100-token prompt of real prose, 20 sampled rows, over 4 seeds: at least 95% of the
    (layer, head, key) entries lie inside their stated 95% bound, in a single forward and when 16 decode
    steps (exact) are combined with the sampled prefill."""
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 100, 1, split="heldout")
    for new_tokens in (0, 16):
        cov, cov0, worst = _coverage(smollm2, ids, 20, range(4), new_tokens)
        print(f"smollm2 100 tokens, 20 rows, {new_tokens} new tokens, 4 seeds: {cov:.5f} of entries inside the "
              f"bound, first token {cov0:.4f}, largest error / bound {worst:.3f}")
        assert cov >= 0.95 and cov0 >= 0.95


@pytest.mark.parametrize("mask", [False, True])
def test_key_mass_and_pattern_rows_equal_the_eager_map(mask):
    from workbench.core.stats import key_mass, pattern_rows

    call = _random_call(mask=mask)
    p = _eager_probs(call)  # (B, Hq, Nq, Nk)
    keys = torch.tensor([0, 5, 39, 40, -1])  # the last two are outside the call's keys: dropped
    torch.testing.assert_close(key_mass(call, keys).double(), p[..., [0, 5, 39]].sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(key_mass(call, keys, heads=[3, 1]).double(), p[:, [3, 1]][..., [0, 5, 39]].sum(-1),
                               atol=1e-5, rtol=1e-5)
    none = key_mass(call, torch.tensor([40, 41]), heads=[2])
    assert none.shape == (2, 1, 40) and not none.any()
    rows = pattern_rows(call, 3, 9, 50, heads=[0, 2])  # k_stop past the keys: clipped to 40
    torch.testing.assert_close(rows.double(), p[:, [0, 2], 3:9], atol=1e-5, rtol=1e-5)
