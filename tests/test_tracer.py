"""The tracer's chunked closed-form statistics equal the same statistics of eager attention maps."""
import pytest
import torch

from workbench import Tracer
from workbench.core.errors import ContextTooLongError, HeadIndexError, MemoryBudgetError


def eager_maps(lm, ids, attention_mask=None):
    """(layer, batch, head, query, key) maps from transformers' eager attention (the oracle)."""
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(ids, attention_mask=attention_mask, output_attentions=True)
    finally:
        lm.model.set_attn_implementation("workbench")
    return torch.stack(out.attentions).float(), out.logits


def stats_from_maps(A, valid=None):
    """Reference statistics computed directly from full maps (docs/methods.md definitions)."""
    L, B, H, N, _ = A.shape
    if valid is None:
        valid = torch.ones(B, N, dtype=torch.bool)
    vis = torch.tril(torch.ones(N, N, dtype=torch.bool))[None] & valid[:, None, :] & valid[:, :, None]
    count = vis.sum(1).float()  # (B, key): queries that see key k
    received = A.sum(3) / count[None, :, None].clamp_min(1)
    entropy = -(A * torch.log(A.clamp_min(1e-30))).sum(-1)
    dist = (A * (torch.arange(N)[:, None] - torch.arange(N)[None, :]).float()).sum(-1)
    return received, entropy, dist


def test_tiny_stats_equal_eager(tiny_lm):
    ids = torch.randint(3, 97, (2, 48))
    A, _ = eager_maps(tiny_lm, ids)
    tr = Tracer(tiny_lm, stats=("received", "entropy", "distance", "top_key"), pattern_window=(0, 48),
                key_sets={"first3": torch.tensor([0, 1, 2])}, chunk_elements=300).run(ids)
    rec, ent, dist = stats_from_maps(A)
    assert torch.allclose(tr["pattern"], A, atol=1e-5)
    assert torch.allclose(tr["received"], rec, atol=1e-5)
    assert torch.allclose(tr["entropy"], ent, atol=1e-4)
    assert torch.allclose(tr["distance"], dist, atol=1e-3)
    assert torch.equal(tr["top_key"], A.argmax(-1))
    assert torch.allclose(tr["mass.first3"], A[..., :3].sum(-1), atol=1e-5)


def test_padded_batch_stats_agree_with_unpadded(tiny_lm):
    torch.manual_seed(3)
    a = torch.randint(3, 97, (1, 24))
    ids = torch.cat([torch.zeros(1, 6, dtype=torch.long), a[:, :18]], 1)
    ids = torch.cat([a, ids])
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    stats = ("received", "entropy", "distance")
    both = Tracer(tiny_lm, stats=stats).run(ids, attention_mask=mask)
    alone = Tracer(tiny_lm, stats=stats).run(a[:, :18])
    assert torch.allclose(both["received"][:, 1, :, 6:], alone["received"][:, 0], atol=1e-5)
    assert torch.allclose(both["entropy"][:, 1, :, 6:], alone["entropy"][:, 0], atol=1e-4)
    assert torch.allclose(both["distance"][:, 1, :, 6:], alone["distance"][:, 0], atol=1e-3)


def test_generation_rows_equal_single_forward_over_generated_sequence(tiny_lm):
    ids = torch.randint(3, 97, (1, 10))
    tracer = Tracer(tiny_lm, stats=("received", "entropy", "top_key"), z=True)
    with torch.no_grad(), tracer:
        seq = tiny_lm.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    gen = tracer.trace(seq)
    # the last generated token is never fed back, so rows cover seq[:, :-1]
    full = Tracer(tiny_lm, stats=("received", "entropy", "top_key"), z=True).run(seq[:, :-1])
    assert gen["entropy"].shape == full["entropy"].shape
    assert torch.allclose(gen["entropy"], full["entropy"], atol=1e-4)
    assert torch.equal(gen["top_key"], full["top_key"])
    assert torch.allclose(gen["received"], full["received"], atol=1e-5)
    assert torch.allclose(gen["z"], full["z"], atol=1e-5)


def test_tracing_leaves_logits_unchanged(tiny_lm):
    ids = torch.randint(3, 97, (1, 30))
    with torch.no_grad():
        base = tiny_lm.model(ids).logits
        with Tracer(tiny_lm, stats=("received", "entropy"), pattern_window=(0, 30), z=True, resid_pre=True):
            traced = tiny_lm.model(ids).logits
    assert torch.equal(base, traced)


def test_head_and_layer_selection(tiny_lm):
    ids = torch.randint(3, 97, (1, 20))
    A, _ = eager_maps(tiny_lm, ids)
    tr = Tracer(tiny_lm, layers=[1], heads=[0, 3], stats=("received",), pattern_window=(5, 12), z=True).run(ids)
    assert tr.layers == [1] and tr.heads == [0, 3]
    received, _, _ = stats_from_maps(A)  # (L, B, H, N) from the eager maps
    assert tr["received"].shape == (1, 1, 2, 20)
    torch.testing.assert_close(tr["received"][0], received[1][:, [0, 3]], atol=1e-5, rtol=1e-4)
    assert torch.allclose(tr["pattern"][0], A[1][:, [0, 3], 5:12, :12], atol=1e-5)
    assert tr["z"].shape == (1, 1, 20, 2, 16)
    assert torch.allclose(tr.hook("blocks.1.attn.hook_pattern"), A[1][:, [0, 3], 5:12, :12], atol=1e-5)
    with pytest.raises(HeadIndexError):
        tr.hook("blocks.0.attn.hook_pattern")


def test_bad_input_errors(tiny_lm):
    with pytest.raises(HeadIndexError, match="head 9 is out of range"):
        Tracer(tiny_lm, heads=[9])
    with pytest.raises(HeadIndexError, match="layer 5 is out of range"):
        Tracer(tiny_lm, layers=[5])
    with pytest.raises(ContextTooLongError, match="context"):
        Tracer(tiny_lm, stats=("received",)).run(torch.randint(3, 97, (1, 300)))
    with pytest.raises(MemoryBudgetError, match="budget"):
        Tracer(tiny_lm, pattern_window=(0, 200), memory_budget_bytes=10_000).run(torch.randint(3, 97, (1, 200)))


def test_resid_pre_matches_hidden_states(tiny_lm):
    ids = torch.randint(3, 97, (1, 16))
    with torch.no_grad():
        hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states
    tr = Tracer(tiny_lm, resid_pre=True).run(ids)
    for layer in range(2):
        assert torch.allclose(tr["resid_pre"][layer], hs[layer], atol=1e-6)


@pytest.mark.slow
def test_real_model_maps_and_stats_equal_eager(smollm2):
    from workbench.tasks.text import token_windows

    ids = token_windows(smollm2.tokenizer, 192, 1)
    A, eager_logits = eager_maps(smollm2, ids)
    tr = Tracer(smollm2, stats=("received", "entropy", "distance", "top_key"), pattern_window=(0, 192)).run(ids)
    rec, ent, dist = stats_from_maps(A)
    assert (tr["pattern"] - A).abs().max() < 1e-4
    assert (tr["received"] - rec).abs().max() < 1e-4
    assert (tr["entropy"] - ent).abs().max() < 1e-3
    assert (tr["distance"] - dist).abs().max() < 1e-2
    assert (tr["top_key"] == A.argmax(-1)).float().mean() > 0.999  # ties at float precision may differ
    with torch.no_grad():
        ours = smollm2.model(ids).logits
    assert (ours - eager_logits).abs().max() < 1e-3


@pytest.mark.slow
def test_real_model_patterns_equal_transformer_lens_bridge(smollm2):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from workbench.core.models import cache_dir

    path = str(cache_dir() / "smollm2-135m")
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(path, hf_model=eager, tokenizer=smollm2.tokenizer)
    ids = smollm2.encode("The Eiffel Tower is in Paris. The Colosseum is in Rome. The Eiffel Tower is in")
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith(("hook_pattern", "hook_z")))
    tr = Tracer(smollm2, pattern_window=(0, ids.shape[1]), z=True).run(ids)
    for layer in range(smollm2.spec.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        assert (cache[name] - tr.hook(name)).abs().max() < 1e-4, name
        zname = f"blocks.{layer}.attn.hook_z"
        assert (cache[zname] - tr.hook(zname)).abs().max() < 1e-3, zname


def test_trace_metadata_and_axis_names(tiny_lm):
    """What trace() writes besides the arrays: the model's sizes, the recorded layers/heads, the pattern window's
    first query, and each array's axis names (Trace.to_frame, save and load read them)."""
    ids = torch.randint(3, 97, (1, 12))
    tr = Tracer(tiny_lm, layers=[1], heads=[2, 0], stats=("received", "entropy"), pattern_window=(3, 9), z=True,
                resid_pre=True).run(ids)
    assert tr.meta == {"model": "tiny-llama", "layers": [1], "heads": [0, 2], "n_layers": 2, "n_heads": 4,
                       "query_start": 3, "token_strings": [[f"t{i}" for i in ids[0].tolist()]]}
    assert tr.dims == {"entropy": ("layer", "batch", "head", "query"), "z": ("layer", "batch", "query", "head", "d_head"),
                       "received": ("layer", "batch", "head", "key"), "pattern": ("layer", "batch", "head", "query", "key"),
                       "resid_pre": ("layer", "batch", "pos", "d_model"), "tokens": ("batch", "pos")}
    assert tr["resid_pre"].shape == (1, 1, 12, 64) and tr["pattern"].shape == (1, 1, 2, 6, 9)
    assert torch.equal(tr["tokens"], ids)


def test_check_budget_counts_the_bytes_of_the_window(tiny_lm):
    """layers x batch x heads x window rows x keys (the window's last query) x 4 bytes, the window cut at the
    input's length; over the budget by one byte raises."""
    tracer = Tracer(tiny_lm, layers=[1], heads=[0, 2], pattern_window=(3, 10))
    assert tracer.check_budget(2, 8) == 1 * 2 * 2 * (8 - 3) * 8 * 4
    assert tracer.check_budget(3, 50) == 1 * 3 * 2 * (10 - 3) * 10 * 4
    assert Tracer(tiny_lm, stats=("entropy",)).check_budget(2, 50) == 0  # no window: no maps
    need = 2 * 2 * 4 * 7 * 10 * 4
    assert Tracer(tiny_lm, pattern_window=(3, 10), memory_budget_bytes=need).check_budget(2, 50) == need
    with pytest.raises(MemoryBudgetError, match="budget"):
        Tracer(tiny_lm, pattern_window=(3, 10), memory_budget_bytes=need - 1).check_budget(2, 50)


def test_bound_delta_must_lie_strictly_between_0_and_1(tiny_lm):
    for delta in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="bound_delta"):
            Tracer(tiny_lm, stats=("received",), received_sample_rows=4, bound_delta=delta)
    assert Tracer(tiny_lm, stats=("received",), received_sample_rows=4, bound_delta=0.999).bound_delta == 0.999


def test_pattern_window_across_generate_equals_the_eager_map(tiny_lm):
    """A window spanning the prompt and the decode steps: prefill rows and one row per decode step, each over
    absolute keys 0..q_stop-1, equal eager attention over the generated sequence."""
    ids = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(4))
    tracer = Tracer(tiny_lm, heads=[1, 3], pattern_window=(4, 15), z=True)
    with torch.no_grad(), tracer:
        seq = tiny_lm.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    tr = tracer.trace(seq)
    A, _ = eager_maps(tiny_lm, seq[:, :-1])  # (L, B, H, 15, 15)
    torch.testing.assert_close(tr["pattern"], A[:, :, [1, 3], 4:15, :15], atol=1e-5, rtol=1e-4)
    assert tr.to_frame("pattern")["query"].min() == 4


def test_a_tracer_of_no_layers_or_no_heads_is_refused(tiny_lm):
    from workbench.core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="at least one layer"):
        Tracer(tiny_lm, layers=[], stats=("received",))
    with pytest.raises(WorkbenchError, match="at least one head"):
        Tracer(tiny_lm, heads=[], z=True)
