"""ACT calibration: the closed form on kernel output + LSE equals the eager map-editing reference."""
from __future__ import annotations

import pytest
import torch

from workbench.core.attention import attention_hooks
from workbench.core.errors import WorkbenchError
from workbench.interventions.act import ACTCalibration, act_reference, act_sink_mask


def eager_probs(call) -> torch.Tensor:
    """Independent oracle: the softmax map from q and k in float64, with its own causal mask (bottom-right)
    or the call's additive mask; no project helper. (B, Hq, Nq, Nk)."""
    q, k = call.query.double(), call.key.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * call.scale
    nq, nk = q.shape[2], k.shape[2]
    if call.mask is not None:
        s = s + call.mask.double()
    else:
        hidden = torch.arange(nk)[None, :] > torch.arange(nq)[:, None] + (nk - nq)
        s = s.masked_fill(hidden, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.nan_to_num(p, nan=0.0)  # fully hidden rows (left padding): all zero


def eager_sink_set(p: torch.Tensor, threshold: float, min_queries: int = 1) -> torch.Tensor:
    """ACT's sink set written out independently: mean received attention over the queries that see each key,
    keys above the threshold (and seen by at least ``min_queries`` queries), minus the first such key.
    p (B, Nq, Nk) -> (B, Nk) bool."""
    seen = (p > 0).sum(1)
    s = p.sum(1) / seen.clamp_min(1)
    out = torch.zeros(s.shape, dtype=torch.bool)
    for b in range(s.shape[0]):
        hits = [k for k in range(s.shape[1]) if float(s[b, k]) > threshold and int(seen[b, k]) >= min_queries]
        for k in hits[1:]:
            out[b, k] = True
    return out


def eager_calibrate(p: torch.Tensor, sinks: torch.Tensor, beta: float) -> torch.Tensor:
    """ACT's map edit written out (Yu et al. 2024, eq. of the module docstring), not the project's act_reference:
    sink columns times beta, the other columns times (1 - beta * A_S) / (1 - A_S); rows whose non-sink mass is
    below 1e-6 unchanged. p (B, Nq, Nk) float64, sinks (B, Nk) bool."""
    s = sinks[:, None, :].expand_as(p)
    a_s = torch.where(s, p, torch.zeros_like(p)).sum(-1, keepdim=True)
    factor = torch.where(s, torch.full_like(p, beta), (1 - beta * a_s) / (1 - a_s).clamp_min(1e-300))
    return torch.where(1 - a_s > 1e-6, p * factor, p)


class EagerACT:
    """Oracle: materialise the softmax map (own code), find ACT's sink set from it (own code), edit the map,
    multiply by V.

    Records the largest |closed form - eager| over every calibrated head output and checks that the
    other heads are untouched; returns the closed-form output so the model runs on the product path.
    Sinks come from the prefill call of each layer (whatever the phase) and are kept for its decode steps.
    """

    def __init__(self, act: ACTCalibration):
        self.act = act
        self.max_err = 0.0
        self.calls = 0
        self.changed = 0.0
        self.decode_changed = 0.0
        self.prefill_sets: dict = {}

    def on_attention(self, call):
        heads = self.act._by_layer.get(call.layer)
        if not heads:
            return None
        closed = self.act.on_attention(call)
        probs = eager_probs(call)  # (B, H, Nq, Nk) float64
        decoding = call.q_offset > 0
        applies = self.act.phase == "all" or (self.act.phase == "decode") == decoding
        for h in heads:
            if (call.layer, h) in self.act.fixed:
                mask = torch.zeros(probs.shape[0], probs.shape[-1], dtype=torch.bool)
                mask[:, self.act.fixed[(call.layer, h)]] = True
            elif not decoding:
                mask = eager_sink_set(probs[:, h], self.act.threshold, self.act.min_queries)
                self.prefill_sets[(call.layer, h)] = mask
            else:
                old = self.prefill_sets[(call.layer, h)]
                mask = torch.zeros(probs.shape[0], probs.shape[-1], dtype=torch.bool)
                mask[:, : old.shape[1]] = old
            if not applies:
                assert closed is None, "ACT changed a call outside its phase"
                continue
            new_p = eager_calibrate(probs[:, h], mask, self.act.beta)
            v = call.value[:, h // call.n_rep].double()
            eager = torch.matmul(new_p, v)
            self.max_err = max(self.max_err, float((closed[:, h].double() - eager).abs().max()))
            delta = float((closed[:, h] - call.output[:, h]).abs().max())
            self.changed = max(self.changed, delta)
            if decoding:
                self.decode_changed = max(self.decode_changed, delta)
        if closed is not None:
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
    # the project's eager reference equals the edit written out in this file
    for h in range(3):
        torch.testing.assert_close(new[:, h].double(), eager_calibrate(p[:, h].double(), mask[:, h], 0.4))
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


@pytest.mark.parametrize("stable_above", [0.0, 2.0])  # 0: always the second kernel call; 2: always out - sum_S
@pytest.mark.parametrize("fixed", [False, True])
def test_closed_form_equals_eager_tiny(tiny_lm, fixed, stable_above):
    heads = [(0, 1), (1, 0), (1, 3)]
    sinks = {(0, 1): [3, 7], (1, 0): [1], (1, 3): [0, 5, 20]} if fixed else None
    act = ACTCalibration(heads, beta=0.4, sinks=sinks, threshold=0.05, stable_above=stable_above)
    oracle = EagerACT(act)
    with torch.no_grad(), attention_hooks(oracle):
        tiny_lm.model(_ids(40, 97, b=2), use_cache=False)
    assert oracle.calls == 2
    assert oracle.max_err < 1e-5
    assert oracle.changed > 1e-4  # the calibration did something


def test_min_queries_keeps_the_last_keys_out_of_the_detected_sink_set(tiny_lm):
    """With min_queries the keys seen by fewer queries are never sinks (the oracle applies the rule itself);
    on this input that removes sinks the plain rule finds, and the calibration still equals the eager edit."""
    ids = _ids(12, 97, b=2)
    found = {}
    for mq in (1, 4):
        act = ACTCalibration([(0, 1), (1, 0), (1, 3)], beta=0.4, threshold=0.05, min_queries=mq)
        oracle = EagerACT(act)
        with torch.no_grad(), attention_hooks(oracle):
            tiny_lm.model(ids, use_cache=False)
        assert oracle.calls == 2 and oracle.max_err < 1e-5
        for key, m in act.detected.items():
            assert torch.equal(m, oracle.prefill_sets[key]), key
        found[mq] = torch.stack([act.detected[k] for k in sorted(act.detected)])
    assert found[1][..., 9:].any()  # the plain rule calls some of the last keys sinks here ...
    assert not found[4][..., 9:].any()  # ... keys 9..11, seen by 3 or fewer queries, are never sinks with 4
    assert torch.equal(found[4][..., :9], found[1][..., :9])


@pytest.mark.parametrize("stable_above", [0.0, 2.0])
def test_closed_form_equals_eager_during_generate(tiny_lm, stable_above):
    act = ACTCalibration([(0, 0), (1, 2)], beta=0.4, threshold=0.05, stable_above=stable_above)
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
    from workbench.tasks.text import token_windows

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

    from workbench.core.attention import attention_hooks
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


def _decode_run(lm, ids, steps, hook=None):
    """Prefill ``ids`` then ``steps`` teacher-forced decode steps (fixed next tokens), with ``hook`` active.
    Returns (prefill logits (1, N, V), list of decode-step logits (1, 1, V))."""
    nxt = torch.arange(5, 5 + steps).view(1, steps)
    hooks = (hook,) if hook is not None else ()
    with torch.no_grad(), attention_hooks(*hooks):
        out = lm.model(ids, use_cache=True)
        pre, past, steps_out = out.logits, out.past_key_values, []
        for t in range(steps):
            o = lm.model(nxt[:, t: t + 1], cache=past, use_cache=True)
            past = o.past_key_values
            steps_out.append(o.logits)
    return pre, steps_out


def test_decode_phase_detects_sinks_in_prefill_and_calibrates_decode_only(tiny_lm):
    ids = _ids(30, 97)
    base_pre, base_dec = _decode_run(tiny_lm, ids, 4)
    act = ACTCalibration([(0, 0), (1, 2)], beta=0.0, threshold=0.05, phase="decode")
    oracle = EagerACT(act)
    pre, dec = _decode_run(tiny_lm, ids, 4, oracle)
    assert torch.equal(pre, base_pre)  # the prompt is untouched
    assert oracle.calls == 2 * 5
    assert sum(int(m.sum()) for m in act.detected.values()) > 0  # sinks were found in the prefill
    assert oracle.max_err < 1e-5  # decode steps equal the eager oracle with the prefill's sinks
    assert oracle.decode_changed > 1e-3
    assert max(float((a - b).abs().max()) for a, b in zip(dec, base_dec)) > 1e-4


def test_new_input_never_reuses_old_sinks(tiny_lm):
    a, b = _ids(30, 97, seed=1), _ids(30, 97, seed=7)
    reused = ACTCalibration([(0, 0), (1, 2)], beta=0.0, threshold=0.05, phase="decode")
    _decode_run(tiny_lm, a, 2, reused)
    fresh = ACTCalibration([(0, 0), (1, 2)], beta=0.0, threshold=0.05, phase="decode")
    _, dec_fresh = _decode_run(tiny_lm, b, 2, fresh)
    _, dec_reused = _decode_run(tiny_lm, b, 2, reused)
    assert reused.detected.keys() == fresh.detected.keys()
    assert all(torch.equal(reused.detected[k], fresh.detected[k]) for k in fresh.detected)
    assert all(torch.equal(x, y) for x, y in zip(dec_fresh, dec_reused))


def test_decode_on_a_cache_act_never_saw_raises(tiny_lm):
    act = ACTCalibration([(0, 0)], beta=0.0, threshold=0.05, phase="decode")
    _decode_run(tiny_lm, _ids(30, 97, seed=1), 1, act)  # sinks of prompt 1
    with torch.no_grad():
        past = tiny_lm.model(_ids(30, 97, seed=2), use_cache=True).past_key_values  # prompt 2, outside ACT
        with act.applied(), pytest.raises(WorkbenchError, match="not the prompt whose sinks") as err:
            tiny_lm.model(torch.tensor([[5]]), cache=past, use_cache=True)
    assert str(err.value).endswith("run the prompt's prefill inside the ACT context too, e.g. wrap the whole "
                                   "generate() call")  # the fix, on one line
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_decode_phase_on_smollm2(smollm2):
    """Decode-only ACT on the real model: prefill logits bit-identical, decode steps changed, equal to eager."""
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 64, 1, split="heldout")
    heads = [(layer, h) for layer in (3, 14) for h in range(smollm2.spec.n_heads)]
    base_pre, base_dec = _decode_run(smollm2, ids, 3)
    act = ACTCalibration(heads, beta=0.4, phase="decode")
    oracle = EagerACT(act)
    pre, dec = _decode_run(smollm2, ids, 3, oracle)
    n_sinks = sum(int(m.sum()) for m in act.detected.values())
    dlogit = max(float((a - b).abs().max()) for a, b in zip(dec, base_dec))
    print(f"smollm2 decode-only ACT: {n_sinks} sink entries; prefill max |dlogit| "
          f"{float((pre - base_pre).abs().max()):.3g}; decode max |dlogit| {dlogit:.4g}; "
          f"decode head change {oracle.decode_changed:.4g}; closed form vs eager {oracle.max_err:.3g}")
    assert torch.equal(pre, base_pre)
    assert n_sinks > 0
    assert oracle.decode_changed > 1e-3 and dlogit > 1e-2
    assert oracle.max_err < 1e-5


def test_sink_mask_is_the_prefill_set_and_fixed_sinks_past_the_keys_are_ignored(tiny_lm):
    """sink_mask(call, head): the set detected in the prefill (the oracle's own), the same set during decode
    steps with the newly decoded keys never sinks, and a fixed set read at the call's keys."""
    act = ACTCalibration([(0, 1), (1, 2)], threshold=0.05, sinks={(1, 2): [3, 60]})
    seen = []

    class Probe:
        def on_attention(self, call):
            p = eager_probs(call)
            seen.append((call.layer, call.q_offset, call.key.shape[2], act.sink_mask(call, 1) if call.layer == 0
                         else act.sink_mask(call, 2), p))

    _decode_run(tiny_lm, _ids(20, 97), 3, Probe())
    assert [(layer, nk) for layer, _, nk, _, _ in seen] == [(0, 20), (1, 20), (0, 21), (1, 21), (0, 22), (1, 22),
                                                            (0, 23), (1, 23)]
    prefill = eager_sink_set(seen[0][4][:, 1], 0.05)
    assert prefill.any()
    for layer, off, nk, mask, _ in seen:
        if layer == 0:
            assert torch.equal(mask[:, :20], prefill) and not mask[:, 20:].any()
        else:  # fixed: key 3 only (position 60 is past every call's keys)
            assert mask.nonzero()[:, 1].tolist() == [3]


def test_fixed_sinks_past_the_input_change_nothing(tiny_lm):
    ids = _ids(20, 97)
    out = {}
    for name, sinks in (("in", {(1, 2): [3]}), ("past", {(1, 2): [3, 20, 45]})):
        with torch.no_grad(), ACTCalibration([(1, 2)], sinks=sinks).applied():
            out[name] = tiny_lm.model(ids, use_cache=False).logits
    with torch.no_grad():
        base = tiny_lm.model(ids, use_cache=False).logits
    assert torch.equal(out["in"], out["past"]) and not torch.equal(out["in"], base)
