"""Decoding past a sliding window: every key index reported is an absolute input position, equal to eager's.

Gemma-3's sliding layers keep only the last W - 1 keys in the cache, so while decoding their attention
calls see keys ``t - W + 1 .. t``; a key index into the call is not a position. The retrieval recorder
(:class:`~workbench.analyzers.retrieval.TopKeyRecorder`) and the tracer map them through
``AttentionCall.key_positions``; here against eager ``output_attentions`` on the whole sequence.
"""
import pytest
import torch

from workbench.analyzers.retrieval import greedy_decode
from workbench.core.tracer import Tracer

WINDOW = 8


class _Tok:
    """Minimal tokenizer for a random model: no end-of-sequence or newline ids, so decoding runs its length."""

    chat_template = None

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]


def make_tiny_gemma3(window: int = WINDOW, seed: int = 0):
    """A random-weight Gemma-3 (2 sliding layers around 1 global one, 4 query heads, 1 KV head)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from workbench.core.attention import register_attention
    from workbench.core.models import LoadedModel, ModelSpec

    register_attention()
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                           sliding_window=window, max_position_embeddings=256,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           pad_token_id=0, bos_token_id=2, eos_token_id=1)
    cfg._attn_implementation = "workbench"
    model = Gemma3ForCausalLM(cfg).eval()
    return LoadedModel(model=model, tokenizer=_Tok(), spec=ModelSpec.from_config("tiny-gemma3", cfg))


def eager_attentions(lm, ids):
    """Eager attention maps (layers of (B, H, N, N)) of the whole sequence, the oracle."""
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return lm.model(ids, output_attentions=True, use_cache=False).attentions
    finally:
        lm.model.set_attn_implementation("workbench")


def check_top_keys_past_window(lm, ids, new_tokens, window):
    dec = greedy_decode(lm, ids, max_new_tokens=new_tokens, stop_at_newline=False)
    assert len(dec.tokens) == new_tokens
    n = ids.shape[1]
    att = eager_attentions(lm, torch.cat([ids, torch.tensor([dec.tokens[:-1]])], 1))
    # step t emits tokens[t] from query position n - 1 + t
    ref = torch.stack([torch.stack([a[0, :, n - 1 + t].argmax(-1) for a in att]) for t in range(new_tokens)])
    assert torch.equal(dec.top_keys, ref)
    sliding = [i for i, t in enumerate(lm.model.config.layer_types) if t == "sliding_attention"]
    q = torch.arange(new_tokens)[:, None, None] + n - 1
    top = dec.top_keys[:, sliding]
    assert ((top > q - window) & (top <= q)).all()  # inside each query's window, in absolute positions
    assert (top >= window).any()  # past the window: relative indices would all be < window
    return dec


def test_tiny_gemma3_top_keys_are_absolute_past_the_window():
    lm = make_tiny_gemma3()
    ids = torch.randint(3, 97, (1, 3 * WINDOW))
    check_top_keys_past_window(lm, ids, 6, WINDOW)
    # the prompt cache was rolled back (crop on sliding layers): decoding again gives the same tokens
    from workbench.analyzers.retrieval import prefill

    cache = prefill(lm, ids)
    a = greedy_decode(lm, ids, 5, prefill_cache=cache, stop_at_newline=False)
    b = greedy_decode(lm, ids, 5, prefill_cache=cache, stop_at_newline=False)
    assert a.tokens == b.tokens and torch.equal(a.top_keys, b.top_keys)


def test_tiny_gemma3_tracer_during_generate_reports_absolute_keys():
    lm = make_tiny_gemma3()
    n, t = 3 * WINDOW, 6
    ids = torch.randint(3, 97, (1, n))
    tracer = Tracer(lm, stats=("received", "top_key"), rows_from=n, pattern_window=(n, n + t - 1))
    with tracer, torch.no_grad():
        seq = lm.model.generate(ids, max_new_tokens=t, min_new_tokens=t, do_sample=False)
    tr = tracer.trace()
    att = eager_attentions(lm, seq[:, :-1])  # the last generated token is never fed back
    A = torch.stack([a[0] for a in att])[:, None]  # (L, 1, H, N', N')
    rows = A[:, :, :, n:]  # decoded query rows n .. n + t - 2
    assert torch.equal(tr["top_key"], rows.argmax(-1))
    assert (tr["pattern"] - rows).abs().max() < 1e-5
    seen = (rows > 0).sum(3).clamp_min(1)  # queries (of the decoded ones) that see each key
    ref = rows.sum(3) / seen
    assert (tr["received"][..., : ref.shape[-1]] - ref).abs().max() < 1e-5


@pytest.mark.slow
def test_gemma3_top_keys_are_absolute_past_the_512_window(gemma3):
    from workbench.tasks.text import token_windows

    ids = token_windows(gemma3.tokenizer, 600, 1)  # 600 tokens: the sliding layers' caches are full
    check_top_keys_past_window(gemma3, ids, 4, 512)


class _EagerACTAbsolute:
    """Oracle for ACT during generate on a sliding-window cache: the sink sets found in the prefill (over
    positions) are looked up at each decode call's key positions, counted here from the step number."""

    def __init__(self, act, n_prompt):
        from workbench.interventions.act import act_reference, act_sink_mask

        self.act, self.n, self.ref, self.sink_mask = act, n_prompt, act_reference, act_sink_mask
        self.sets, self.steps, self.max_err, self.shifted = {}, {}, 0.0, 0

    def on_attention(self, call):
        heads = self.act._by_layer.get(call.layer)
        if not heads:
            return None
        closed = self.act.on_attention(call)
        probs = call.probs()
        nk = probs.shape[-1]
        if call.q_offset == 0:
            pos = torch.arange(nk)
        else:
            step = self.steps[call.layer] = self.steps.get(call.layer, 0) + 1
            t = self.n - 1 + step  # position of this decode step's query
            pos = torch.arange(nk) + t - nk + 1
            self.shifted += int(pos[0] > 0)
        for h in heads:
            if (call.layer, h) in self.act.fixed:
                mask = torch.isin(pos, self.act.fixed[(call.layer, h)])[None].expand(probs.shape[0], -1)
            elif call.q_offset == 0:
                cnt = call.visible().float().sum(2)[:, 0]
                mask = self.sink_mask(probs[:, h].sum(1) / cnt.clamp_min(1), self.act.threshold, cnt, self.act.min_queries)
                self.sets[(call.layer, h)] = mask
            else:
                old = self.sets[(call.layer, h)]
                mask = torch.zeros(probs.shape[0], nk, dtype=torch.bool)
                known = pos < old.shape[1]
                mask[:, known] = old[:, pos[known]]
            eager = torch.matmul(self.ref(probs[:, h: h + 1], mask[:, None], self.act.beta)[:, 0],
                                 call.value[:, h // call.n_rep].float())
            self.max_err = max(self.max_err, float((closed[:, h].float() - eager).abs().max()))
        return closed


@pytest.mark.parametrize("fixed", [False, True])
def test_tiny_gemma3_act_during_generate_reads_sinks_at_absolute_positions(fixed):
    from workbench.core.attention import attention_hooks
    from workbench.interventions.act import ACTCalibration

    lm = make_tiny_gemma3()
    n = 3 * WINDOW
    heads = [(0, 1), (1, 0), (2, 3)]  # sliding, global, sliding
    sinks = {h: [0, 5, n - 4] for h in heads} if fixed else None
    act = ACTCalibration(heads, beta=0.4, sinks=sinks, threshold=0.05)
    oracle = _EagerACTAbsolute(act, n)
    with torch.no_grad(), attention_hooks(oracle):
        lm.model.generate(torch.randint(3, 97, (1, n)), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert oracle.shifted == 2 * 4  # both sliding layers decoded 4 steps on a full window
    assert oracle.max_err < 1e-5
