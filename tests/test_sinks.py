"""Sink analyzer, massive-activation finder, perplexity harness, head-search plumbing and the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_lm

SINK = 5  # token id of the planted sink token
MASSIVE = 7  # token id of the planted massive-activation token


def planted_sink_lm():
    """One-layer Llama whose every head attends almost only to token SINK.

    Queries are a constant vector and keys are nonzero only for token SINK, both on the lowest-frequency
    rotary pair (dims 7 and 15 of each head) with rope_theta = 1e12, so rotation is negligible and every
    query gives the SINK keys a score of 8 against 0 for the others.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.attention import register_attention
    from workbench.core.models import LoadedModel, ModelSpec

    register_attention()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, attention_bias=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e12}, pad_token_id=0)
    cfg._attn_implementation = "workbench"
    model = LlamaForCausalLM(cfg).eval()
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 0.0
        emb[SINK] = 0.0
        emb[SINK, 0] = 1.0  # after RMSNorm: 8 on dim 0
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias):
            p.zero_()
        for h in range(4):
            attn.q_proj.bias[h * 16 + 7] = 4.0
        for kv in range(2):
            attn.k_proj.weight[kv * 16 + 7, 0] = 1.0
    tok = make_tiny_lm().tokenizer
    return LoadedModel(model=model, tokenizer=tok, spec=ModelSpec.from_config("planted-sink", cfg))


def _text_ids(n, sinks=(0, 10, 25), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 97, (2, n), generator=g)
    ids[:, list(sinks)] = SINK
    return ids


def test_sink_analyzer_finds_planted_sinks():
    from workbench.analyzers.sinks import hidden_sink_masks, layer_profile, received_attention, sink_rate, sink_tokens

    lm = planted_sink_lm()
    ids = _text_ids(40)
    rec = received_attention(lm, ids, progress=False)
    assert rec.shape == (2, 1, 4, 40)
    assert sink_rate(rec) == 100.0  # the first token is a sink in every head
    hid = hidden_sink_masks(rec)
    for b in range(2):
        for h in range(4):
            assert hid[b, 0, h].nonzero().reshape(-1).tolist() == [10, 25]  # hidden sinks, first one dropped
    prof = layer_profile(rec)
    assert prof.loc[0, "heads_with_hidden_sinks"] == 100.0 and prof.loc[0, "mean_hidden_sinks"] == 2.0
    toks = sink_tokens(rec, ids, lm.tokenizer)
    hidden = toks[toks.kind == "hidden"]
    assert hidden.token.tolist() == [f"t{SINK}"] and int(hidden.occurrences.iloc[0]) == 4  # 2 samples x 2 positions
    # without the planted sinks there are none
    rec0 = received_attention(lm, torch.randint(10, 97, (2, 40)), progress=False)
    assert sink_rate(rec0) == 0.0 and not hidden_sink_masks(rec0).any()


def test_received_matches_eager_definition(tiny_lm):
    """s_k = (1/(T-k)) sum_{i>=k} A[i,k] from the kernel-backed tracer equals the eager map's."""
    from workbench.analyzers.sinks import key_counts, received_attention

    ids = torch.randint(3, 97, (1, 24))
    rec = received_attention(tiny_lm, ids, progress=False)[0]
    tiny_lm.model.set_attn_implementation("eager")
    try:
        att = tiny_lm.model(ids, output_attentions=True).attentions
    finally:
        tiny_lm.model.set_attn_implementation("workbench")
    eager = torch.stack([a[0].sum(1) for a in att]) / key_counts(24)
    torch.testing.assert_close(rec, eager, atol=1e-5, rtol=1e-4)


def _massive_lm():
    lm = make_tiny_lm()
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[MASSIVE, 3] = 5000.0
    return lm


def test_massive_finder_finds_planted_entry():
    from workbench.analyzers.massive import layer_summary, massive_activations, massive_dims, onset_layer, token_summary

    lm = _massive_lm()
    ids = torch.randint(10, 97, (3, 30))
    ids[:, 4] = MASSIVE
    ids[1, 17] = MASSIVE
    df = massive_activations(lm, ids, progress=False)
    at0 = df[df.layer == 0]
    assert sorted(zip(at0["sample"], at0.pos, at0.dim)) == [(0, 4, 3), (1, 4, 3), (1, 17, 3), (2, 4, 3)]
    assert (at0.token == f"t{MASSIVE}").all() and (at0.value == 5000.0).all() and (at0.ratio_to_median > 1000).all()
    assert massive_dims(df) == [3] and onset_layer(df) == 0
    assert set(df.layer) <= {0, 1, 2}  # the residual carries it on; final residual reported as layer 2
    assert layer_summary(df).loc[0, "sample_share"] == 1.0
    assert token_summary(df, 0).loc[0, "count"] == 4
    # forward_inputs (the VLM path) gives the same entries
    df2 = massive_activations(lm, forward_inputs=[{"input_ids": ids[:2]}, {"input_ids": ids[2:]}], progress=False)
    key = ["sample", "layer", "pos", "dim"]
    a, b = (d.sort_values(key).reset_index(drop=True) for d in (df, df2))
    assert a[key + ["token"]].equals(b[key + ["token"]])
    torch.testing.assert_close(torch.tensor(a.value.values), torch.tensor(b.value.values), rtol=1e-5, atol=1e-3)
    # nothing is massive in plain random text
    assert massive_activations(lm, torch.randint(10, 97, (2, 30)), progress=False).empty


def test_massive_edit_zero_and_mean():
    from workbench.analyzers.massive import MassiveActivationEdit, massive_activations, massive_means

    lm = _massive_lm()
    ids = torch.randint(10, 97, (2, 30))
    ids[:, 4] = MASSIVE
    df = massive_activations(lm, ids, progress=False)
    with torch.no_grad():
        base = lm.model(ids).logits
        with MassiveActivationEdit(lm, 0, [3], "mean", massive_means(df, 0)) as e:
            same = lm.model(ids).logits
        with MassiveActivationEdit(lm, 0, [3], "zero") as z:
            zero = lm.model(ids).logits
            after = massive_activations(lm, ids, progress=False)
    assert e.edited == 2 and z.edited >= 2
    torch.testing.assert_close(same, base)  # the mean of identical entries is the entry itself
    assert after.empty  # zeroed entering layer 0, so no layer carries it
    assert (zero - base).abs().max() > 1e-3
    with pytest.raises(ValueError):
        MassiveActivationEdit(lm, 0, [3], "mean")


def test_perplexity_of_uniform_model_is_vocab_size():
    from workbench.tasks.perplexity import perplexity

    lm = make_tiny_lm()
    with torch.no_grad():
        lm.model.lm_head.weight.zero_()
    res = perplexity(lm, torch.randint(3, 97, (3, 20)), batch_size=2)
    assert res["tokens"] == 3 * 19
    assert math.isclose(res["perplexity"], 97.0, rel_tol=1e-5)


def test_prefix_cache_equals_full_forward(tiny_lm):
    from workbench.interventions.act_search import PrefixCache, compare
    from workbench.interventions.act import ACTCalibration
    from workbench.tasks.cloze import ChoiceTask, choice_scores

    g = torch.Generator().manual_seed(0)
    task = ChoiceTask("t", torch.randint(3, 97, (10, 20), generator=g), torch.randint(3, 97, (10, 4), generator=g),
                      torch.zeros(10, dtype=torch.long), "train")
    pc = PrefixCache(tiny_lm, task, batch_size=4)
    torch.testing.assert_close(pc.scores(0), choice_scores(tiny_lm, task, 4))
    with ACTCalibration([(1, 2)], beta=0.2, threshold=0.05).applied():
        torch.testing.assert_close(pc.scores(1), choice_scores(tiny_lm, task, 4))
    c = compare(torch.tensor([True, False, True, False]), torch.tensor([True, True, True, False]))
    assert c["difference"] == 0.25 and c["gained"] == 1 and c["lost"] == 0
    assert c["baseline_ci95"][0] < 0.5 < c["baseline_ci95"][1]


def test_pydoc_cloze_is_deterministic_and_its_splits_share_no_text(smollm2):
    """Both splits at calibrate's defaults (64 train and 200 held-out questions of 32 tokens, and the README's
    128 / 300): every context is text of its own split, no held-out context occurs in the train text, no
    paragraph is in both splits, and the distractors are other whole words of the question's own context."""
    from workbench.tasks.cloze import build_task, cloze_paragraphs, cloze_text, _whole_word
    from workbench.tasks.text import prose_paragraphs

    tok = smollm2.tokenizer
    a = build_task("pydoc-cloze", tok, "train", 20, seed=1)
    b = build_task("pydoc-cloze", tok, "train", 20, seed=1)
    assert torch.equal(a.contexts, b.contexts) and torch.equal(a.choices, b.choices)
    train_par, held_par = set(cloze_paragraphs("train")), set(cloze_paragraphs("heldout"))
    assert not train_par & held_par and train_par | held_par == set(prose_paragraphs("all"))
    assert (len(prose_paragraphs("all")), len(train_par | held_par), len(held_par)) == (1217, 983, 983 // 4)
    for context_tokens, most in ((32, 321), (48, 222)):  # the held-out blanks the module docstring states
        with pytest.raises(ValueError, match=f"has only {most} usable blanks for {most + 1} questions"):
            build_task("pydoc-cloze", tok, "heldout", most + 1, context_tokens=context_tokens)
    text = {"train": cloze_text("train"), "heldout": cloze_text("heldout")}
    for n_cal, n_eval in ((64, 200), (128, 300)):
        cal = build_task("pydoc-cloze", tok, "train", n_cal, context_tokens=32)
        ev = build_task("pydoc-cloze", tok, "heldout", n_eval, context_tokens=32)
        assert (cal.split, ev.split, len(cal), len(ev)) == ("train", "heldout", n_cal, n_eval)
        held_ctx = [tok.decode(ctx) for ctx in ev.contexts.tolist()]
        assert all(c in text["heldout"] for c in held_ctx)
        assert all(tok.decode(ctx) in text["train"] for ctx in cal.contexts.tolist())
        assert not [c for c in held_ctx if c in text["train"]]  # no held-out context is train text
        assert not set(map(tuple, cal.contexts.tolist())) & set(map(tuple, ev.contexts.tolist()))
    for task in (a, ev):
        right = task.choices.gather(1, task.answer[:, None])[:, 0]
        assert all(len(set(row)) == 4 for row in task.choices.tolist())
        assert all(tok.decode([t]).startswith(" ") for t in right.tolist())
        for ctx, row, r in zip(task.contexts.tolist(), task.choices.tolist(), right.tolist()):
            pieces = [tok.decode([t]) for t in ctx + [r]]
            local = {ctx[q] for q in range(len(ctx)) if _whole_word(pieces[q], pieces[q + 1])} - {r}
            wrong = set(row) - {r}
            # the distractors are whole words of the question's own context; the split's pool tops them up only
            # when the context has fewer than three
            assert wrong <= local if len(local) >= 3 else local <= wrong


class CharTok:
    """Character tokenizer over a 97-token vocabulary (for CLI tests on the tiny model)."""

    pad_token_id = 0
    chat_template = None

    def __call__(self, text, return_tensors=None):
        class R:
            pass
        r = R()
        r.input_ids = torch.tensor([[10 + ord(c) % 87 for c in text]])
        return r

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


class BosCharTok(CharTok):
    """CharTok that puts the planted sink token (id SINK) before every text, as a start-of-text token."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        r = super().__call__(text, return_tensors)
        if add_special_tokens:
            r.input_ids = torch.cat([torch.tensor([[SINK]]), r.input_ids], 1)
        return r


def half_sink_lm():
    """planted_sink_lm with a start-of-text sink token: heads 0-1 (key-value group 0) attend to it, heads 2-3
    (group 1, keys zeroed) attend uniformly, so Sink_1^0.3 is 50% exactly."""
    lm = planted_sink_lm()
    with torch.no_grad():
        lm.model.model.layers[0].self_attn.k_proj.weight[16:] = 0.0
    lm.tokenizer = BosCharTok()
    return lm


def test_sinks_cli_json(tmp_path, capsys):
    from workbench.cli import main
    from workbench.core.presets import Preset, register_preset

    def load():
        lm = half_sink_lm()
        with torch.no_grad():  # the character "c" (3% of the prose) carries a massive activation (a " ", on ~17% of
            lm.model.model.embed_tokens.weight[10 + ord("c") % 87, 3] = 5000.0  # the tokens, is an outlier feature)
        return lm

    register_preset(Preset("tiny-cli-test", "tiny random llama", load, lambda: True))
    rc = main(["sinks", "--model", "tiny-cli-test", "--samples", "4", "--long-samples", "2", "--long-len", "96",
               "--ppl-samples", "2", "--ppl-len", "32", "--out", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    # exact: the planted start-of-text sink holds s_0 > 0.3 in heads 0-1 and not in heads 2-3, by eager maps
    from tests.test_tracer import eager_maps
    from workbench.tasks.text import token_windows

    lm = load()
    for n, k in ((64, 4), (96, 2)):
        A, _ = eager_maps(lm, token_windows(lm.tokenizer, n, k, split="train"))
        want = float((A[..., 0].sum(-1) / n > 0.3).float().mean() * 100)
        assert want == 50.0 and res["sink_rate_first_token_by_length"][str(n)] == pytest.approx(want)
    assert res["sink_rate_first_token"] == res["sink_rate_first_token_by_length"]["64"]
    assert set(res["sink_rate_first_token_by_length"]) == {"64", "96"}
    assert len(res["profile"]) == 1 and res["massive_dims"] == [3] and res["sink_onset_layer"] is None  # 2 of 4 heads
    m = res["massive_activations"][0]
    assert {"layer", "dim", "token", "value", "ratio_to_median"} <= set(m) and m["token"] == CharTok().decode([10 + ord("c") % 87])
    assert [r["intervention"] for r in res["perplexity"]] == ["baseline", "zero", "mean"]
    assert Path(res["files"]["html"]).exists() and Path(res["files"]["html"]).parent.parent == tmp_path
    from workbench.io.provenance import read_provenance

    prov = read_provenance(res["files"]["json"])  # provenance in the JSON result and the page footer
    assert prov == res["provenance"] == read_provenance(res["files"]["html"])
    assert prov["model"]["id"] == res["model"] and len(prov["weights_sha256"]) == 64
    assert prov["config"]["n_short"] == 4 and prov["config"]["long_len"] == 96


def test_calibrate_cli_rejects_bad_input(capsys):
    from workbench.cli import main

    assert main(["calibrate", "--heads", "1.2", "--search", "--json"]) == 2
    assert main(["calibrate", "--task", "nope", "--heads", "1.2"]) == 2
    assert "unknown task" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_cli_json(capsys):
    from workbench.cli import main

    assert main(["calibrate", "--heads", "3.2,7.0", "--n-eval", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["heads"] == ["3.2", "7.0"]
    ev = res["evaluation"]
    assert ev["n"] == 8 and ev["baseline_ci95"][0] <= ev["baseline_accuracy"] <= ev["baseline_ci95"][1]
    assert main(["calibrate", "--heads", "30.0"]) == 2


def test_census_gains_sinks_section():
    from workbench.report.census import run_census

    lm = half_sink_lm()
    res = run_census(lm, n_samples=2, seq_len=40, out_dir=None, progress=False,
                     sections=["attention", "sinks"])  # the retrieval section needs a real tokenizer (tests/test_retrieval.py)
    assert "sinks" in res.summary and {"hidden_sink_share", "first_token_sink_share"} <= set(res.heads.columns)
    assert len(res.heads) == 4
    # exact: Sink_1^0.3 from the eager attention maps of the same windows (transformers' own attention)
    from tests.test_tracer import eager_maps
    from workbench.tasks.text import token_windows

    ids = token_windows(lm.tokenizer, 40, 2)
    A, _ = eager_maps(lm, ids)  # (L, B, H, N, N)
    s0 = A[..., 0].sum(-1) / 40  # every query sees key 0
    want = float((s0 > 0.3).float().mean() * 100)
    assert want == 50.0  # the planted start-of-text sink in heads 0-1, none in heads 2-3
    assert res.summary["sinks"]["sink_rate_first_token"] == pytest.approx(want)
