"""Batches: analyzers that read one input refuse a batch with a one-line error; the tracer handles
batches whose layers mix masked and unmasked attention calls (Gemma-3's sliding and global layers)."""
import pytest
import torch

from workbench.core.attention import AttentionCall, attention_hooks, attention_with_lse
from workbench.core.errors import WorkbenchError
from workbench.core.tracer import Tracer


def _one_line(err) -> bool:
    return "\n" not in str(err.value) and "one" in str(err.value)


def test_greedy_decode_refuses_a_batch(tiny_lm):
    from workbench.analyzers.retrieval import greedy_decode

    with pytest.raises(WorkbenchError, match=r"\(2, 8\)") as err:
        greedy_decode(tiny_lm, torch.randint(3, 97, (2, 8)), max_new_tokens=2)
    assert _one_line(err)


def test_top_key_recorder_refuses_a_batch(tiny_lm):
    from workbench.analyzers.retrieval import TopKeyRecorder

    rec = TopKeyRecorder(2)
    rec.new_step()
    with pytest.raises(WorkbenchError, match="batch of 2") as err, attention_hooks(rec), torch.no_grad():
        tiny_lm.model(torch.randint(3, 97, (2, 8)))
    assert _one_line(err)
    rec = TopKeyRecorder(2)  # one sequence still works and gives the argmax of the last row
    rec.new_step()
    with attention_hooks(rec), torch.no_grad():
        tiny_lm.model(torch.randint(3, 97, (1, 8)))
    assert rec.top_keys().shape == (1, 2, 4)


def test_vhr_and_var_refuse_a_batch(tiny_lm):
    from workbench.interventions.var import VisualAttentionRedistribution
    from workbench.interventions.vhr import VisionAwareHeadReinforcement

    ids = torch.randint(3, 97, (2, 8))
    vhr = VisionAwareHeadReinforcement(torch.zeros(2, 4, 16), layers=[0])
    with pytest.raises(WorkbenchError, match="batch of 2") as err, vhr.applied(), torch.no_grad():
        tiny_lm.model(ids)
    assert _one_line(err)
    var = VisualAttentionRedistribution(tiny_lm, torch.arange(2, 5), dims=[0], layers=[0])
    with pytest.raises(WorkbenchError, match="batch of 2") as err, var.applied(), torch.no_grad():
        tiny_lm.model(ids)
    assert _one_line(err)


def test_vision_analyses_refuse_a_batch(tiny_lm):
    from workbench.analyzers.vision import head_outputs, image_attention_table, sink_table
    from workbench.core.vlm import VLMInput

    inp = VLMInput(torch.randint(3, 97, (2, 8)))
    for fn in (lambda: head_outputs(tiny_lm, inp, torch.tensor([7])), lambda: sink_table(tiny_lm, [inp], [0]),
               lambda: image_attention_table(tiny_lm, [inp], [0])):
        with pytest.raises(WorkbenchError, match="one input at a time, got a batch of 2") as err:
            fn()
        assert _one_line(err)


def test_tracer_batch_mixing_masked_and_unmasked_layers(tiny_lm):
    """Layer 0 gets no mask (causal), layer 1 an explicit additive mask (as a sliding-window layer does):
    received counts are (1,1,N) on one and (B,1,N) on the other; the trace must still be exact."""
    torch.manual_seed(1)
    b, hq, hkv, n, d = 3, 4, 2, 12, 16
    tracer = Tracer(tiny_lm, stats=("received",))
    tracer.reset()
    window = 4  # the masked layer attends to at most the last 4 keys
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    hidden = (j > i) | (j <= i - window)
    mask = torch.zeros(b, 1, n, n).masked_fill(hidden, float("-inf"))
    refs = []
    for layer, m in ((0, None), (1, mask)):
        q, k, v = torch.randn(b, hq, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)
        out, lse = attention_with_lse(q, k, v, m, 0.25)
        tracer.on_attention(AttentionCall(layer, q, k, v, m, out, lse, 0.25))
        s = torch.matmul(q, k.repeat_interleave(hq // hkv, 1).transpose(-1, -2)) * 0.25
        s = s.masked_fill((j > i) if m is None else hidden, float("-inf"))
        p = torch.softmax(s, -1)
        seen = (~((j > i) if m is None else hidden)).sum(0).float()  # queries that see key k
        refs.append(p.sum(2) / seen)
    tr = tracer.trace()
    assert tr["received"].shape == (2, b, hq, n)
    assert (tr["received"] - torch.stack(refs)).abs().max() < 1e-5
