"""Head ablations equal an independent reference in every path: prefill and decode, unpadded and padded
(the uniform kind averages the values of the *visible* keys only), GQA, and leave other heads alone."""
from __future__ import annotations

import pytest
import torch

from workbench.core.attention import attention_hooks
from workbench.interventions import HeadAblation


class Catch:
    """Records, per call, the head outputs after the interventions and the visibility it had (own code)."""

    def __init__(self):
        self.calls = []

    def on_attention(self, call):
        nq, nk = call.query.shape[2], call.key.shape[2]
        if call.mask is None:
            vis = (torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq))[None, None]
        else:
            vis = call.mask > float("-inf")
        self.calls.append((call.layer, call.output.clone(), call.value.clone(), vis, call.query.shape[1] // call.key.shape[1]))


def _run(lm, ids, mask=None, iv=None, generate=0):
    catch = Catch()
    hooks = ([iv] if iv is not None else []) + [catch]
    with torch.no_grad(), attention_hooks(*hooks):
        if generate:
            lm.model.generate(ids, attention_mask=mask, max_new_tokens=generate, do_sample=False, pad_token_id=0)
        else:
            lm.model(ids, attention_mask=mask, use_cache=False)
    return catch.calls


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("generate", [0, 3])
def test_uniform_ablation_is_the_mean_of_visible_values(tiny_lm, padded, generate):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 97, (2, 20), generator=g)
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        mask[1, :7] = 0
        ids[1, :7] = 0
    heads = [(0, 1), (1, 0), (1, 3)]
    calls = _run(tiny_lm, ids, mask, HeadAblation(heads, "uniform"), generate)
    base = _run(tiny_lm, ids, mask, None, generate)
    assert len(calls) == 2 * (1 + max(0, generate - 1))
    for (layer, out, v, vis, rep), (_, out0, _, _, _) in zip(calls, base):
        for h in range(out.shape[1]):
            if (layer, h) not in heads:
                # other heads untouched (the later layer sees an ablated residual, so compare layer 0 only)
                if layer == 0:
                    assert torch.equal(out[:, h], out0[:, h])
                continue
            vv = v[:, h // rep].double()  # (B, Nk, D)
            w = vis[:, 0].double()  # (B|1, Nq, Nk)
            n = w.sum(-1, keepdim=True)
            ref = torch.matmul(w, vv) / n.clamp_min(1)
            rows = (n[..., 0] > 0).expand(out.shape[0], -1)  # fully hidden (padding) rows have no visible key
            torch.testing.assert_close(out[:, h].double()[rows], ref.expand(out.shape[0], -1, -1)[rows],
                                       atol=1e-5, rtol=1e-5)


def test_zero_and_mean_ablation_are_exact(tiny_lm):
    ids = torch.randint(3, 97, (1, 16), generator=torch.Generator().manual_seed(2))
    means = {(1, 2): torch.arange(16, dtype=torch.float32)}
    calls = _run(tiny_lm, ids, None, HeadAblation([(1, 2)], "mean", means=means))
    assert torch.equal(calls[1][1][0, 2], means[(1, 2)].expand(16, 16))
    calls = _run(tiny_lm, ids, None, HeadAblation([(0, 3)], "zero"))
    assert torch.equal(calls[0][1][:, 3], torch.zeros_like(calls[0][1][:, 3]))


def test_mean_ablation_needs_a_mean_for_every_head_and_kinds_are_checked():
    with pytest.raises(ValueError, match=r"mean output for every head; missing \[\(1, 2\)\]"):
        HeadAblation([(1, 2)], "mean")
    with pytest.raises(ValueError, match=r"missing \[\(0, 3\)\]"):
        HeadAblation([(1, 2), (0, 3)], "mean", means={(1, 2): torch.zeros(16)})
    with pytest.raises(ValueError, match="unknown ablation kind 'Mean'"):
        HeadAblation([(1, 2)], "Mean")
    assert HeadAblation([(1, 2)], "zero").means == {}  # the other kinds need none
    with pytest.raises(ValueError, match=r"unknown phase 'Decode': use one of \('all', 'prefill', 'decode'\)"):
        HeadAblation([(1, 2)], "zero", phase="Decode")
