"""Vision-language models: VLM mechanics (tiny random LLaVA and Qwen2-VL), VHD, sinks, VHR, VAR, benchmark."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.core.attention import attention_hooks
from workbench.core.models import LoadedModel, ModelSpec

IMG = 99  # image token id of the tiny LLaVA


class _Tok:
    pad_token_id = 0
    chat_template = None

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]

    def decode(self, ids):
        return " ".join(f"t{int(i)}" for i in torch.as_tensor(ids).reshape(-1))


def _wrap(model, name):
    return LoadedModel(model=model, tokenizer=_Tok(), spec=ModelSpec.from_config(name, model.config))


def tiny_llava(seed: int = 0, n_layers: int = 4) -> LoadedModel:
    """A random LlavaForConditionalGeneration: CLIP tower (16 patches) + GQA Llama, workbench attention."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from workbench.core.attention import register_attention

    register_attention()
    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=64, num_hidden_layers=n_layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       pad_token_id=0)
    vis = CLIPVisionConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4, num_channels=1)
    cfg = LlavaConfig(vision_config=vis, text_config=text, image_token_id=IMG, vision_feature_select_strategy="default",
                      vision_feature_layer=-1, image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation({"text_config": "workbench", "vision_config": "sdpa"})
    return _wrap(model, "tiny-llava")


def tiny_qwen2vl(seed: int = 0) -> LoadedModel:
    """A random Qwen2VLForConditionalGeneration (4 image tokens after 2x2 merging, M-RoPE)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from workbench.core.attention import register_attention

    register_attention()
    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=2, spatial_merge_size=2,
                           temporal_patch_size=1, in_channels=1),
        image_token_id=97, vision_start_token_id=95, vision_end_token_id=96)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.set_attn_implementation({"text_config": "workbench", "vision_config": "sdpa"})
    return _wrap(model, "tiny-qwen2vl")


def llava_input(lm, seed: int = 0):
    from workbench.core.vlm import make_input

    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[5, 6] + [IMG] * 16 + [7, 8, 9, 10]])
    return make_input(lm.model, ids, torch.randn(1, 1, 16, 16, generator=g))


def qwen_input(lm):
    from workbench.core.vlm import make_input

    ids = torch.tensor([[5, 6, 95] + [97] * 4 + [96, 7, 8, 9]])
    return make_input(lm.model, ids, torch.randn(16, 4, generator=torch.Generator().manual_seed(0)),
                      image_grid_thw=torch.tensor([[1, 4, 4]]))


class _Calls:
    """Attention hook keeping every call (tests only)."""

    def __init__(self):
        self.calls = []

    def on_attention(self, call):
        self.calls.append(call)


# --- VLM mechanics --------------------------------------------------------------------------------


def test_llava_positions_text_only_and_tracer():
    from workbench.core.tracer import Tracer
    from workbench.core.vlm import image_positions, position_map, text_only

    lm = tiny_llava()
    inp = llava_input(lm)
    assert image_positions(lm.model, inp.input_ids).tolist() == list(range(2, 18))
    txt = text_only(lm.model, inp)
    assert txt.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]] and txt.pixel_values is None
    assert position_map(lm.model, inp).tolist() == [0, 1, 18, 19, 20, 21]
    tr = Tracer(lm, stats=("received",), z=True).run(inp.input_ids, **inp.kwargs())
    assert tr["z"].shape == (4, 1, 22, 4, 16)  # every decoder layer; the vision tower is not traced
    # the workbench kernel gives the same logits as SDPA everywhere (vision tower stays bidirectional)
    with torch.no_grad():
        a = lm.model(input_ids=inp.input_ids, **inp.kwargs()).logits
        lm.model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
        b = lm.model(input_ids=inp.input_ids, **inp.kwargs()).logits
        lm.model.set_attn_implementation({"text_config": "workbench", "vision_config": "workbench"})
        c = lm.model(input_ids=inp.input_ids, **inp.kwargs()).logits  # vision tower on the kernel: must stay bidirectional
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a, c, atol=1e-4)


def test_qwen2vl_positions_text_only_and_vhd():
    from workbench.analyzers.vision import vhd_steps
    from workbench.core.vlm import image_positions, text_only

    lm = tiny_qwen2vl()
    inp = qwen_input(lm)
    assert image_positions(lm.model, inp.input_ids).tolist() == [3, 4, 5, 6]
    assert text_only(lm.model, inp).input_ids.tolist() == [[5, 6, 7, 8, 9]]  # pads and vision start/end removed
    v, n = vhd_steps(lm, inp, answer=torch.tensor([[11, 12]]))
    assert v.shape == (2, 3, 4) and n.shape == (2, 3, 4) and bool((v > 0).all())


def test_vhd_is_zero_for_a_blind_head_and_matches_manual_passes():
    """A planted blind head (value projection zero) has VHD 0; VHD equals the two aligned passes' z distance."""
    from workbench.core.tracer import Tracer
    from workbench.analyzers.vision import vhd_steps
    from workbench.core.vlm import text_only

    lm = tiny_llava()
    attn = lm.model.model.language_model.layers[1].self_attn
    with torch.no_grad():
        attn.v_proj.weight[:16] = 0  # kv head 0 -> query heads 0 and 1 of layer 1 output z = 0
    inp = llava_input(lm)
    ans = torch.tensor([[30, 31, 32]])
    v, _ = vhd_steps(lm, inp, ans)
    assert torch.all(v[:, 1, :2] == 0) and torch.all(v[:, 1, 2:] > 0)
    full = inp.with_suffix(ans[:, :-1])
    z_img = Tracer(lm, z=True).run(full.input_ids, **full.kwargs())["z"][:, 0]
    z_txt = Tracer(lm, z=True).run(text_only(lm.model, full).input_ids)["z"][:, 0]
    n, m = inp.input_ids.shape[1], 6
    for t in range(3):
        want = (z_img[:, n - 1 + t] - z_txt[:, m - 1 + t]).norm(dim=-1)
        assert torch.allclose(v[t], want, atol=1e-5)


def test_text_only_model_is_refused(tiny_lm):
    from workbench.core.vlm import NotAVisionModelError, image_positions

    with pytest.raises(NotAVisionModelError, match="text-only"):
        image_positions(tiny_lm.model, torch.tensor([[1, 2]]))


# --- sinks ---------------------------------------------------------------------------------------------


def test_sink_scores_and_detector_find_a_planted_massive_dimension():
    from workbench.analyzers.vision import SinkDetector, sink_scores

    x = torch.randn(1, 5, 1024)  # phi <= sqrt(d_model): 32 here
    x[0, 3, 7] = 500.0
    phi = sink_scores(x, [7, 9])
    rms = x[0, 3].pow(2).mean().sqrt()
    assert torch.isclose(phi[0, 3], 500.0 / rms) and phi[0, 3] >= 20 and bool((phi[0, [0, 1, 2, 4]] < 20).all())
    lm = tiny_llava()
    inp = llava_input(lm)
    emb = lm.model.model.language_model.embed_tokens
    with torch.no_grad():
        emb.weight[7, 5] = 3000.0  # token 7 (position 18) carries a massive value on dim 5
    det = SinkDetector(lm, [5], tau=5.0)  # d_model 64 bounds phi by 8
    with det, torch.no_grad():
        lm.model(input_ids=inp.input_ids, **inp.kwargs())
    assert det.sinks[0][0].nonzero().reshape(-1).tolist() == [18]


# --- VAR -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("summ,rho", [(0.0, 0.0), (0.2, 0.5)])
def test_var_closed_form_equals_eager_reference(summ, rho):
    from workbench.interventions.var import var_eager, var_output

    lm = tiny_llava()
    inp = llava_input(lm)
    rec = _Calls()
    with attention_hooks(rec), torch.no_grad():  # prefill, then one decoding step with the KV cache
        out = lm.model(input_ids=inp.input_ids, use_cache=True, **inp.kwargs())
        lm.model(input_ids=torch.tensor([[11]]), past_key_values=out.past_key_values, use_cache=True)
    worst, n_sel = 0.0, 0
    for call in rec.calls:
        nk = call.key.shape[2]
        sinks = torch.zeros(nk, dtype=torch.bool)
        sinks[[0, 2, 9]] = True  # a text sink and two visual sinks
        image = torch.zeros(nk, dtype=torch.bool)
        image[2:18] = True
        got, sel = var_output(call, sinks, image, p=0.6, summ=summ, rho=rho)
        want, sel_ref = var_eager(call, sinks, image, 0.6, summ, rho)
        assert torch.equal(sel, sel_ref)
        # heads=[1]: only head 1's image-centric rows change, to the same values; the other heads keep the output
        got1, sel1 = var_output(call, sinks, image, p=0.6, summ=summ, rho=rho, heads=[1])
        assert torch.equal(sel1[:, 1], sel[:, 1]) and not sel1[:, [0, 2, 3]].any()
        assert torch.equal(got1[:, 1], got[:, 1]) and torch.equal(got1[:, [0, 2, 3]], call.output[:, [0, 2, 3]])
        worst = max(worst, float((got.float() - want).abs().max()))
        n_sel += int(sel.sum())
    assert worst < 1e-5 and n_sel > 0
    assert any(c.q_offset > 0 for c in rec.calls)


def test_var_hook_spares_first_two_and_last_layers():
    from workbench.interventions.var import VisualAttentionRedistribution

    lm = tiny_llava(n_layers=5)
    inp = llava_input(lm)
    var = VisualAttentionRedistribution(lm, torch.arange(2, 18), dims=[0, 1, 2], tau=0.0, summ=0.0, rho=0.0)
    with var.applied(), torch.no_grad():  # the hook runs (and counts) only in layers 2 .. n_layers - 2
        lm.model(input_ids=inp.input_ids, **inp.kwargs())
    assert set(var.n_selected) == {2, 3}


# --- VHR -----------------------------------------------------------------------------------------------


def test_vhr_selection_rule():
    from workbench.interventions.vhr import default_layers, select_heads

    vhd = torch.tensor([1.0, 2.0, 3.0, 4.0, 20.0])
    norm = torch.tensor([1.0, 1.0, 1.0, 1.0, 50.0])
    assert select_heads(vhd, norm).tolist() == [False, False, True, True, False]  # the outlier is dropped
    norm[4] = 1.0  # high VHD but ordinary text norm: not an outlier
    assert select_heads(vhd, norm).tolist() == [False, False, False, True, True]
    # an outlier needs a text norm above mean + std (here 2 + 1), not merely above mean - std
    assert select_heads(vhd, torch.tensor([1.0, 3.0, 1.0, 3.0, 2.0])).tolist() == [False, False, False, True, True]
    # the outlier's VHD becomes 0 (not just small): the median is then taken over 0.5, 0.6, 0.7, 0.8 and 0
    assert select_heads(torch.tensor([0.5, 0.6, 0.7, 0.8, 20.0]), torch.tensor([1.0, 1.0, 1.0, 1.0, 50.0])).tolist() \
        == [False, False, True, True, False]
    assert default_layers(32) == [1] + list(range(18, 32))


def test_vhr_scales_exactly_the_selected_heads():
    from workbench.interventions.vhr import VisionAwareHeadReinforcement, select_heads

    lm = tiny_llava()
    inp = llava_input(lm)
    before, after = _Calls(), _Calls()

    class Snap:
        def __init__(self, store):
            self.store = store

        def on_attention(self, call):
            self.store.calls.append((call.layer, call.q_offset, call.output.clone()))

    vhr = VisionAwareHeadReinforcement.prepare(lm, inp, layers=[1, 3], alpha=2.0)
    with attention_hooks(Snap(before), vhr, Snap(after)), torch.no_grad():
        out = lm.model(input_ids=inp.input_ids, use_cache=True, **inp.kwargs())
        lm.model(input_ids=torch.tensor([[11]]), past_key_values=out.past_key_values, use_cache=True)
    assert set(vhr.selected) == {1, 3}
    for (layer, off, b), (_, _, a) in zip(before.calls, after.calls):
        if layer not in (1, 3):
            assert torch.equal(a, b)
            continue
        sel = vhr.selected[layer]
        assert 0 < int(sel.sum()) < 4
        if off == 0:  # VHD at the last prompt position, against the text-only pass, on the incoming output
            vhd = (b[0, :, -1].float() - vhr.z_text[layer].float()).norm(dim=-1)
            torch.testing.assert_close(vhr.vhd[layer], vhd, rtol=0, atol=0)
            assert torch.equal(sel, select_heads(vhd, vhr.z_text[layer].float().norm(dim=-1)))
        rows = slice(-1, None)  # prefill: only the first generation position; decoding: the new row
        expect = b.clone()
        expect[:, sel, rows] *= 2.0
        assert torch.equal(a, expect)
        if off == 0:
            assert torch.equal(a[:, :, :-1], b[:, :, :-1])


# --- digits data and the benchmark ---------------------------------------------------------------------------


def test_digit_composites_and_pope_negatives():
    from workbench.demo import digits as D
    from workbench.tasks.hallucination import pope_items, heldout_images

    a = D.make_composite(np.random.default_rng(3), "test")
    b = D.make_composite(np.random.default_rng(3), "test")
    assert torch.equal(a.pixels, b.pixels) and a.cells == b.cells and a.pixels.shape == (1, 32, 32)
    assert 1 <= len(a.digits) <= 3 and len(set(a.digits)) == len(a.digits)
    imgs = heldout_images(20)
    items = pope_items(imgs)
    freq, co = D.training_stats()
    for r in items.itertuples():
        assert (r.digit in imgs[r.image].digits) == r.label
    for r in items[(items.split == "popular") & ~items.label].itertuples():
        absent = [d for d in range(10) if d not in imgs[r.image].digits]
        assert freq[r.digit] == max(freq[d] for d in absent)
    for r in items[(items.split == "adversarial") & ~items.label].itertuples():
        pres = imgs[r.image].digits
        absent = [d for d in range(10) if d not in pres]
        assert co[pres, r.digit].sum() == max(co[pres, d].sum() for d in absent)


def test_pope_and_chair_metrics():
    from workbench.tasks.hallucination import chair_metrics, mentioned_digits, pope_metrics
    from workbench.core.intervals import cluster_ci as with_ci

    df = pd.DataFrame({"image": [0, 0, 1, 1], "label": [True, False, True, False], "pred": [True, True, False, False]})
    m = pope_metrics(df)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["yes_ratio"] == 0.5
    ci = with_ci(df, pope_metrics, n_boot=50)
    assert ci["accuracy_ci"][0] <= 0.5 <= ci["accuracy_ci"][1]
    assert mentioned_digits(" 3 7 3 x1") == [3, 7, 1]
    c = pd.DataFrame({"image": [0, 1], "truth": [[3, 7], [1]], "mentioned": [[3, 8], [1]],
                      "hallucinated": [[8], []], "covered": [[3], [1]]})
    cm = chair_metrics(c)
    assert cm["chair_s"] == 0.5 and cm["chair_i"] == pytest.approx(1 / 3) and cm["recall"] == pytest.approx(2 / 3)
    assert cm["length"] == 1.5


def test_census_vision_section_skips_text_only_models(tiny_lm):
    from workbench.report.census import CensusContext
    from workbench.report.vision_report import census_section

    sec = census_section(CensusContext(tiny_lm, torch.zeros(1, 4, dtype=torch.long), progress=False))
    assert sec.heads is None and "text-only" in sec.summary["skipped"]


def test_cli_rejects_unknown_method():
    from workbench.cli import main

    assert main(["hallucination", "--method", "dola", "--json"]) == 2


# --- the real digits VLM -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_vlm():
    from workbench import load_model

    return load_model("digits-vlm")


@pytest.mark.slow
def test_digits_vlm_image_reaches_the_language_model_and_analyzers_run(digits_vlm):
    from workbench.demo import digits as D
    from workbench.demo.digits_vlm import N_IMAGE_TOKENS, make_input
    from workbench.tasks.hallucination import heldout_images
    from workbench.analyzers.vision import vhd_steps
    from workbench.core.vlm import image_positions

    lm = digits_vlm
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration" and lm.spec.n_layers == 30
    c = heldout_images(1, seed=5)[0]
    inp = make_input(lm, D.LIST_QUESTION, c.pixels)
    assert image_positions(lm.model, inp.input_ids).numel() == N_IMAGE_TOKENS
    blank = make_input(lm, D.LIST_QUESTION, D.blank_pixels())
    with torch.no_grad():
        a = lm.model(input_ids=inp.input_ids, **inp.kwargs()).logits[0, -1]
        b = lm.model(input_ids=blank.input_ids, **blank.kwargs()).logits[0, -1]
    assert float((a - b).abs().max()) > 1e-3  # the pixels reach the answer position
    v, n = vhd_steps(lm, inp)
    assert v.shape == (1, 30, 9) and bool(torch.isfinite(v).all()) and float(v.max()) > 0
    # the model reads the image: it names more of the present digits with the image than with a blank one
    from workbench.tasks.hallucination import answer, mentioned_digits

    hits = {"image": 0, "blank": 0}
    for comp in heldout_images(6, seed=5):
        for cond, px in (("image", comp.pixels), ("blank", D.blank_pixels())):
            said = mentioned_digits(answer(lm, make_input(lm, D.LIST_QUESTION, px), "none", 8))
            hits[cond] += len(set(said) & set(comp.digits))
    assert hits["image"] >= hits["blank"] + 4
