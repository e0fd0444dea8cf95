"""ACT calibration: the closed form on kernel output + LSE equals the eager map-editing reference."""
from __future__ import annotations

import pytest
import torch

from workbench.attention import attention_hooks
from workbench.interventions.act import ACTCalibration, act_reference, act_sink_mask


class EagerACT:
    """Oracle: materialise the softmax map, find ACT's sink set from it, edit the map, multiply by V.

    Records the largest |closed form - eager| over every calibrated head output and checks that the
    other heads are untouched; returns the closed-form output so the model runs on the product path.
    """

    def __init__(self, act: ACTCalibration):
        self.act = act
        self.max_err = 0.0
        self.calls = 0
        self.changed = 0.0
        self.prefill_sets: dict = {}

    def on_attention(self, call):
        heads = self.act._by_layer.get(call.layer)
        if not heads:
            return None
        closed = self.act.on_attention(call)
        probs = call.probs()  # (B, H, Nq, Nk), exact, eager
        vis_count = call.visible().float().sum(2)  # (B|1, 1, Nk)
        for h in heads:
            if (call.layer, h) in self.act.fixed:
                mask = torch.zeros(probs.shape[0], probs.shape[-1], dtype=torch.bool)
                mask[:, self.act.fixed[(call.layer, h)]] = True
            elif call.q_offset == 0:
                s = probs[:, h].sum(1) / vis_count[:, 0].clamp_min(1)
                mask = act_sink_mask(s, self.act.threshold, vis_count[:, 0], self.act.min_queries)
                self.prefill_sets[(call.layer, h)] = mask
            else:
                old = self.prefill_sets[(call.layer, h)]
                mask = torch.zeros(probs.shape[0], probs.shape[-1], dtype=torch.bool)
                mask[:, : old.shape[1]] = old
            new_p = act_reference(probs[:, h: h + 1], mask[:, None], self.act.beta)[:, 0]
            v = call.value[:, h // call.n_rep].float()
            eager = torch.matmul(new_p, v)
            self.max_err = max(self.max_err, float((closed[:, h].float() - eager).abs().max()))
            self.changed = max(self.changed, float((closed[:, h] - call.output[:, h]).abs().max()))
        others = [h for h in range(call.query.shape[1]) if h not in heads]
        assert torch.equal(closed[:, others], call.output[:, others]), "ACT changed a head it was not asked to"
        self.calls += 1
        return closed


def test_reference_rows_sum_to_one_and_scale_sinks():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 5, 7), -1)
    mask = torch.zeros(2, 3, 7, dtype=torch.bool)
    mask[:, :, 2] = True
    new = act_reference(p, mask, 0.4)
    torch.testing.assert_close(new.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(new[..., 2], 0.4 * p[..., 2])
    # non-sink keys keep their proportions
    ratio = new[..., [0, 1, 3, 4, 5, 6]] / p[..., [0, 1, 3, 4, 5, 6]]
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))


def test_sink_mask_drops_first_detected_sink():
    s = torch.tensor([[0.5, 0.02, 0.3, 0.05, 0.2, 0.9]])
    counts = torch.tensor([[6, 5, 4, 3, 2, 1]])
    assert act_sink_mask(s).nonzero()[:, 1].tolist() == [2, 4, 5]
    assert act_sink_mask(s, counts=counts, min_queries=2).nonzero()[:, 1].tolist() == [2, 4]


def _ids(n, vocab, seed=1, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (b, n), generator=g)


@pytest.mark.parametrize("fixed", [False, True])
def test_closed_form_equals_eager_tiny(tiny_lm, fixed):
    heads = [(0, 1), (1, 0), (1, 3)]
    sinks = {(0, 1): [3, 7], (1, 0): [1], (1, 3): [0, 5, 20]} if fixed else None
    act = ACTCalibration(heads, beta=0.4, sinks=sinks, threshold=0.05)
    oracle = EagerACT(act)
    with torch.no_grad(), attention_hooks(oracle):
        tiny_lm.model(_ids(40, 97, b=2), use_cache=False)
    assert oracle.calls == 2
    assert oracle.max_err < 1e-5
    assert oracle.changed > 1e-4  # the calibration did something


def test_closed_form_equals_eager_during_generate(tiny_lm):
    act = ACTCalibration([(0, 0), (1, 2)], beta=0.4, threshold=0.05)
    oracle = EagerACT(act)
    with torch.no_grad(), attention_hooks(oracle):
        tiny_lm.model.generate(_ids(24, 97), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert oracle.calls == 2 * 5  # prefill + 4 decode steps, two layers
    assert oracle.max_err < 1e-5


def test_beta_one_is_identity_and_changes_logits(tiny_lm):
    ids = _ids(32, 97)
    with torch.no_grad():
        base = tiny_lm.model(ids).logits
        with ACTCalibration([(0, 0), (0, 1), (1, 0)], beta=1.0, threshold=0.05).applied():
            same = tiny_lm.model(ids).logits
        with ACTCalibration([(0, 0), (0, 1), (1, 0)], beta=0.0, threshold=0.05).applied():
            diff = tiny_lm.model(ids).logits
    torch.testing.assert_close(same, base, atol=1e-5, rtol=1e-5)
    assert (diff - base).abs().max() > 1e-4


def test_beta_out_of_range():
    with pytest.raises(ValueError):
        ACTCalibration([(0, 0)], beta=1.5)


@pytest.mark.slow
def test_closed_form_equals_eager_smollm2(smollm2):
    from workbench.text import token_windows

    ids = token_windows(smollm2.tokenizer, 96, 2, split="heldout")
    heads = [(layer, h) for layer in (2, 9, 17, 28) for h in range(smollm2.spec.n_heads)]
    act = ACTCalibration(heads, beta=0.4)
    oracle = EagerACT(act)
    with torch.no_grad(), attention_hooks(oracle):
        smollm2.model(ids, use_cache=False)
    assert oracle.calls == 4
    assert sum(int(m.sum()) for m in act.detected.values()) > 0  # hidden sinks were found and calibrated
    assert oracle.max_err < 1e-5


def test_act_is_available_by_name_to_front_ends(tiny_lm):
    """The dashboard builds interventions by name: ACT must be one, and calibrate only its head."""
    import torch

    from workbench.attention import attention_hooks
    from workbench.interventions.registry import available_interventions, build_intervention

    assert "act calibration" in available_interventions()
    iv = build_intervention("act calibration", tiny_lm, [(1, 2)], beta=0.0)
    seen = {}

    class Catch:
        def on_attention(self, call):
            seen[call.layer] = call.output.clone()

    ids = torch.randint(3, 97, (1, 24))
    with torch.no_grad(), attention_hooks(Catch()):
        tiny_lm.model(ids)
    base = dict(seen)
    with torch.no_grad(), attention_hooks(iv, Catch()):
        tiny_lm.model(ids)
    assert torch.equal(seen[0], base[0])  # layer 0 untouched
    assert torch.equal(seen[1][:, [0, 1, 3]], base[1][:, [0, 1, 3]])  # other heads of layer 1 untouched
