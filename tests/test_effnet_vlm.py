"""effnet-smollm2-vqa: the pretrained EfficientNet-Lite0 tower, easy-VQA data and scenes, the shipped
projector, and (slow) the assembled LLaVA model: it reads the image, the prefix cache is exact, and
VAR / VHR / visual-sink removal behave on it as their closed forms say."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.core.attention import attention_hooks


# --- the tower ----------------------------------------------------------------------------------------


def test_tower_loads_offline_and_is_imagenet_pretrained():
    """The tower's own ImageNet head ranks the right classes first on scikit-learn's two real photos
    (china.jpg: 442 'bell cote', flower.jpg: 985 'daisy'; ImageNet-1k indices, the packages ship no names)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from workbench.demo.effnet_vlm import load_tower

    tower = load_tower()
    d = load_sample_images()
    px = []
    for img in d.images:
        im = Image.fromarray(img).resize((224, 224), Image.BICUBIC)
        px.append((torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1) / 255.0 - 0.5) / 0.5)
    logits = tower.classify(torch.stack(px))
    top = {name.split("/")[-1]: int(i) for name, i in zip(d.filenames, logits.argmax(-1))}
    assert top == {"china.jpg": 442, "flower.jpg": 985}
    out = tower(torch.stack(px))
    assert out.last_hidden_state.shape == (2, 49, 1280) and out.hidden_states[-1] is out.last_hidden_state
    # a random-weight tower of the same architecture does not rank them so
    from workbench.demo.effnet_vlm import EffNetLiteConfig, EffNetLiteVisionModel

    torch.manual_seed(0)
    rnd = EffNetLiteVisionModel(EffNetLiteConfig()).eval()
    assert rnd.classify(torch.stack(px)).argmax(-1).tolist() != [442, 985]


def test_shipped_weights_are_small_and_have_the_llava_projector_and_lora_shapes():
    from safetensors import safe_open
    from safetensors.torch import load_file

    from workbench.demo.effnet_vlm import LORA_MODULES, LORA_PREFIX, WEIGHTS

    assert WEIGHTS.stat().st_size < 10 * 2**20
    sd = load_file(str(WEIGHTS))
    with safe_open(str(WEIGHTS), "pt") as f:
        meta = f.metadata()
    first, rank = int(meta["lora_from"]), int(meta["lora_rank"])
    proj = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith(LORA_PREFIX)}
    assert proj == {"model.multi_modal_projector.linear_1.weight": (576, 1280),
                    "model.multi_modal_projector.linear_1.bias": (576,),
                    "model.multi_modal_projector.linear_2.weight": (576, 576),
                    "model.multi_modal_projector.linear_2.bias": (576,)}
    dims = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
            "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}  # (in, out)
    lora = {k for k in sd if k.startswith(LORA_PREFIX)}
    assert lora == {f"{LORA_PREFIX}layers.{i}.{m}.{p}" for i in range(first, 30) for m in LORA_MODULES
                    for p in ("A", "B", "scale")}
    for i in range(first, 30):
        for m in LORA_MODULES:
            k = f"{LORA_PREFIX}layers.{i}.{m}"
            din, dout = dims[m.split(".")[1]]
            assert sd[k + ".A"].shape == (rank, din) and sd[k + ".B"].shape == (dout, rank)
    assert all(bool(torch.isfinite(v).all()) for v in sd.values())


def test_merged_lora_equals_the_adapter_forward():
    """Merging ``scale * B @ A`` into the weights (what the shipped model does) gives the logits of the
    un-merged adapter (LoRALinear) on a random-weight Llama, and B = 0 leaves the model unchanged."""
    from tests.conftest import make_tiny_lm
    from workbench.demo.effnet_vlm import add_lora, lora_state, merge_lora

    lm = make_tiny_lm(n_layers=3)
    ids = torch.randint(3, 97, (2, 12))
    with torch.no_grad():
        base = lm.model(ids).logits
    torch.manual_seed(1)
    wrappers = add_lora(lm.model.model, 1, rank=4)
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, base)  # B starts at zero
        for w in wrappers.values():
            w.B.normal_(0, 0.05)
        adapted = lm.model(ids).logits
    state = lora_state(wrappers)
    ref = make_tiny_lm(n_layers=3)
    assert merge_lora(ref.model.model, state) == 2 * 7
    with torch.no_grad():
        merged = ref.model(ids).logits
    assert float((adapted - base).abs().max()) > 1e-2
    assert float((merged - adapted).abs().max()) < 1e-5


# --- easy-VQA data and scenes ---------------------------------------------------------------------------


def test_easyvqa_labels_agree_with_every_yes_no_question():
    from workbench.demo import easyvqa as V

    labels = V.image_labels("test")
    assert len(labels) == 1000
    checked = 0
    for q, a, i in V.questions("test"):
        c, s = labels[i]
        if not V.is_yesno(a) or c is None or s is None:
            continue
        neg = " not " in f" {q} " or q.startswith("is no ")
        word = next(w for w in V.COLORS + V.SHAPES if f" {w} " in f" {q.rstrip('?')} ")
        present = word in (c, s)
        assert (a == V.YES) == (present != neg), (q, a, labels[i])
        checked += 1
    assert checked > 6000


def test_scenes_are_deterministic_split_pure_and_pope_negatives_follow_the_rules():
    from workbench.demo import easyvqa as V

    a, b = V.scenes("test", 30, 7), V.scenes("test", 30, 7)
    assert [s.cells for s in a] == [s.cells for s in b]
    lab = V.image_labels("test")
    for s in a:
        objs = [o for o in s.classes if o >= 0]
        assert 2 <= len(objs) <= 4 and len(set(objs)) == len(objs)
        for i, k in zip(s.cells, s.classes):
            assert (i < 0) == (k < 0)
            if i >= 0:
                assert lab[i] == V.CLASSES[k]  # test scenes hold test images of the stated class
    assert a[0].pixels().shape == (3, 224, 224) and float(a[0].pixels().abs().max()) <= 1.0
    assert a[0].caption().count(" a ") + 1 == len(a[0].objects)
    items = V.pope_items(a)
    freq, co = V.training_stats()
    assert (items.groupby("split").size() == 60).all()
    for r in items.itertuples():
        assert (r.object in V.scene_objects(a[r.image])) == r.label
    for r in items[(items.split == "adversarial") & ~items.label].itertuples():
        pres = V.scene_objects(a[r.image])
        score = lambda o: sum(co.get((p, o), 0.0) for p in pres)  # noqa: E731
        assert score(r.object) == max(score(o) for o in V.ALL_OBJECTS if o not in pres)
    assert V.mentioned_objects("a red circle, a blue triangle and a circle") == [
        ("red", "circle"), ("blue", "triangle"), (None, "circle")]


def test_chair_row_and_mcnemar():
    from workbench.demo import easyvqa as V
    from workbench.core.intervals import mcnemar
    from workbench.tasks.vqa_hallucination import chair_metrics, chair_row

    sc = V.Scene("test", [-1, -1, -1, -1], [V.CLASSES.index(("red", "circle")), -1, V.CLASSES.index(("blue", "triangle")), -1])
    r = chair_row(sc, "a red circle, a green triangle and a triangle")
    assert r["hallucinated"] == [("green", "triangle")] and r["covered"] == [("red", "circle")]
    m = chair_metrics(pd.DataFrame([r, chair_row(sc, "a red circle and a blue triangle")]).assign(image=[0, 1]))
    assert m["chair_s"] == 0.5 and m["chair_i"] == pytest.approx(1 / 5) and m["recall"] == pytest.approx(3 / 4)
    t = mcnemar(np.array([1, 1, 1, 1, 1, 1, 0, 1], bool), np.array([0, 0, 0, 0, 0, 0, 0, 1], bool))
    assert t["a_only"] == 6 and t["b_only"] == 0 and t["p_value"] == pytest.approx(2 * 0.5 ** 6)


# --- the assembled model (slow: loads SmolLM2) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqa_lm():
    from workbench import load_model

    return load_model("effnet-smollm2-vqa")


class _Calls:
    def __init__(self):
        self.calls = []

    def on_attention(self, call):
        self.calls.append(call)


@pytest.mark.slow
def test_preset_is_a_llava_model_that_reads_the_image(vqa_lm):
    """The first 40 open (shape / colour) easy-VQA test questions: the greedy first answer token is
    right far more often with the image than with a white image; and the shared-prefix KV cache gives
    the logits of one full pass per question."""
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_vlm import make_input
    from workbench.core.vlm import image_positions
    from workbench.tasks.vqa_eval import first_token_logits, score

    lm = vqa_lm
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration"
    assert type(lm.model.model.vision_tower).__name__ == "EffNetLiteVisionModel" and lm.spec.n_layers == 30
    qs = [(q, a, i) for q, a, i in V.questions("test") if not V.is_yesno(a)][:40]
    acc = {}
    for cond in ("image", "blank"):
        right = 0
        for i in sorted({i for _, _, i in qs}):
            mine = [(q, a) for q, a, j in qs if j == i]
            px = V.image_pixels("test", i) if cond == "image" else V.blank_pixels()
            logits = first_token_logits(lm, px, [q for q, _ in mine])
            right += int(score(lm.tokenizer, logits, [a for _, a in mine]).correct.sum())
            if cond == "image" and i == qs[0][2]:
                inp = make_input(lm, mine[0][0], px)
                assert image_positions(lm.model, inp.input_ids).numel() == 49
                with torch.no_grad():
                    full = lm.model(input_ids=inp.input_ids, **inp.kwargs()).logits[0, -1]
                assert torch.allclose(logits[0], full, atol=1e-3)
        acc[cond] = right / len(qs)
    assert acc["image"] >= acc["blank"] + 0.1, acc


@pytest.mark.slow
def test_var_closed_form_equals_eager_reference_on_the_preset(vqa_lm):
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_vlm import make_input
    from workbench.interventions.var import var_eager, var_output

    lm = vqa_lm
    inp = make_input(lm, V.POPE_QUESTION.format(obj="red circle"), V.scenes("test", 1, 3)[0].pixels())
    rec = _Calls()
    with attention_hooks(rec), torch.no_grad():
        out = lm.model(input_ids=inp.input_ids, use_cache=True, **inp.kwargs())
        lm.model(input_ids=torch.tensor([[lm.tokenizer(" yes").input_ids[0]]]), past_key_values=out.past_key_values,
                 use_cache=True)
    worst, n_sel = 0.0, 0
    for call in rec.calls[::3] + rec.calls[-3:]:
        nk = call.key.shape[2]
        sinks = torch.zeros(nk, dtype=torch.bool)
        sinks[[0, 5, 20]] = True  # a text sink and two image tokens
        image = torch.zeros(nk, dtype=torch.bool)
        image[3:52] = True
        got, sel = var_output(call, sinks, image, p=0.6, summ=0.0, rho=0.0)
        want, sel_ref = var_eager(call, sinks, image, 0.6, 0.0, 0.0)
        assert torch.equal(sel, sel_ref)
        worst = max(worst, float((got.float() - want).abs().max()))
        n_sel += int(sel.sum())
    assert worst < 1e-4 and n_sel > 0


@pytest.mark.slow
def test_vhr_scales_exactly_the_selected_heads_on_the_preset(vqa_lm):
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_vlm import make_input
    from workbench.interventions.vhr import VisionAwareHeadReinforcement

    lm = vqa_lm
    inp = make_input(lm, V.POPE_QUESTION.format(obj="circle"), V.scenes("test", 1, 4)[0].pixels())
    before, after = [], []

    class Snap:
        def __init__(self, store):
            self.store = store

        def on_attention(self, call):
            self.store.append((call.layer, call.output.clone()))

    vhr = VisionAwareHeadReinforcement.prepare(lm, inp, layers=[1, 20, 29], alpha=2.0)
    with attention_hooks(Snap(before), vhr, Snap(after)), torch.no_grad():
        lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs())
    assert set(vhr.selected) == {1, 20, 29}
    for (layer, b), (_, a) in zip(before, after):
        if layer not in vhr.selected:
            assert torch.equal(a, b)
            continue
        sel = vhr.selected[layer]
        assert 0 < int(sel.sum()) < 9
        expect = b.clone()
        expect[:, sel, -1] *= 2.0
        assert torch.equal(a, expect)


@pytest.mark.slow
def test_visual_sink_removal_equals_masking_the_keys(vqa_lm):
    """The closed form of removing keys S equals attention recomputed with S masked out."""
    from workbench.demo import easyvqa as V
    from workbench.core.attention import attention_with_lse
    from workbench.demo.effnet_vlm import make_input

    lm = vqa_lm
    inp = make_input(lm, V.CAPTION_QUESTION, V.scenes("test", 1, 5)[0].pixels())
    rec = _Calls()
    with attention_hooks(rec), torch.no_grad():
        lm.model(input_ids=inp.input_ids, use_cache=False, **inp.kwargs())
    call = rec.calls[10]
    s_idx = torch.tensor([4, 9, 30])
    a = call.probs(0, call.query.shape[2], keys=s_idx)
    kv = torch.arange(call.query.shape[1]) // call.n_rep
    closed = (call.output.float() - a @ call.value[:, kv][:, :, s_idx].float()) / (1 - a.sum(-1, keepdim=True))
    nq, nk = call.query.shape[2], call.key.shape[2]
    vis = call.visible(0, nq).clone()
    vis[..., s_idx] = False
    mask = torch.zeros(vis.shape).masked_fill(~vis, float("-inf"))
    ref, _ = attention_with_lse(call.query, call.key, call.value, mask, call.scale)
    assert float((closed - ref.float()).abs().max()) < 1e-4


def test_paper_claims_follow_their_stated_rules():
    """Each verdict flips exactly where its rule says: VHR needs CHAIR_S down AND recall kept; VAR needs the
    F1 interval above 0; visual-sink removal needs few changed answers AND a narrow F1 interval."""
    from workbench.tasks.vqa_claims import interval_verdict, paper_claims

    assert interval_verdict([0.01, 0.05]) == "holds" and interval_verdict([-0.05, -0.01]) == "opposite"
    assert interval_verdict([-0.01, 0.02]).startswith("not shown")
    assert interval_verdict([-0.05, -0.01], lower_is_better=True) == "holds"

    def chair(s_ci, r_ci):
        return {"paired": [{"method": "vhr", "chair_s_diff_ci": s_ci, "recall_diff_ci": r_ci,
                            "mcnemar_hallucinated": {"p_value": 0.01}}]}

    def pope(method, f1_ci, changed=0, n=500):
        return {"paired": [{"method": method, "split": "random", "f1_diff_ci": f1_ci, "answers_changed": changed,
                            "n_questions": n, "mcnemar_correct": {"p_value": 0.5}}]}

    empty = {"paired": []}
    assert paper_claims(empty, chair([-0.2, -0.1], [-0.03, 0.01]))[0]["verdict"] == "holds"
    assert paper_claims(empty, chair([-0.2, -0.1], [-0.08, 0.01]))[0]["verdict"] == "CHAIR_S: holds; recall kept: False"
    assert paper_claims(empty, chair([-0.1, 0.1], [0.0, 0.01]))[0]["verdict"].startswith("CHAIR_S: not shown")
    assert paper_claims(pope("var", [0.01, 0.04]), empty)[0]["verdict"] == "holds"
    assert paper_claims(pope("var", [-0.04, -0.01]), empty)[0]["verdict"] == "opposite"
    assert paper_claims(pope("no-visual-sinks", [-0.01, 0.01], changed=25), empty)[0]["verdict"] == "holds"
    assert paper_claims(pope("no-visual-sinks", [-0.01, 0.01], changed=26), empty)[0]["verdict"] == "does not hold"
    assert paper_claims(pope("no-visual-sinks", [-0.03, 0.01], changed=0), empty)[0]["verdict"] == "does not hold"
    assert paper_claims(pope("vhr", [0.1, 0.2]), empty) == []


def test_balanced_questions_use_easy_vqa_templates_are_right_and_unpredictable_from_the_question():
    """The synthetic yes/no questions are strings easy-VQA itself asks, their answers are right for the image's
    class, and each question string is answered "yes" about as often as "no" (so the question alone does not
    tell), unlike easy-VQA's own yes/no questions."""
    from collections import Counter, defaultdict

    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_train import NEGATIVE_TEMPLATES, balanced_questions

    real = defaultdict(Counter)
    for q, a, _ in V.questions("train"):
        if a in ("yes", "no"):
            real[q][a] += 1
    things = [f"{c} shape" for c in {c for c, _ in V.CLASSES}] + sorted({s for _, s in V.CLASSES})
    negative = {t.format(x) for t in NEGATIVE_TEMPLATES for x in things}
    rng = np.random.default_rng(0)
    synth = defaultdict(Counter)
    for label in V.image_labels("train").values():
        qs = balanced_questions(rng, label, 8)
        assert len(qs) == (0 if label == (None, None) else 8)
        for q, a in qs:
            assert q in real, q
            named = label[0] if " shape" in q else label[1]
            there = (f" {named} " in f" {q.replace('?', ' ')}")  # the question names the image's own attribute
            negated = q in negative
            assert a == ("yes" if there != negated else "no"), (label, q, a)
            synth[q][a] += 1
    share = pd.Series({q: c["yes"] / sum(c.values()) for q, c in synth.items()})
    assert set(share.index) == set(real) and share.between(0.35, 0.65).all(), share.describe()
    # easy-VQA's own questions are skewed: most strings have one answer in >= 80% of their occurrences
    skew = pd.Series({q: max(c.values()) / sum(c.values()) for q, c in real.items()})
    assert (skew >= 0.8).mean() > 0.5


def test_absent_answer_is_the_answer_of_every_easy_vqa_yes_no_question_whose_thing_is_not_there():
    """Every yes/no question of easy-VQA train is in one of the eight templates, and its answer is
    absent_answer(q) exactly when the colour or shape it names is not the image's."""
    from workbench.demo import easyvqa as V
    from workbench.demo.effnet_train import absent_answer

    labels = V.image_labels("train")
    n = 0
    for q, a, i in V.questions("train"):
        if a not in ("yes", "no"):
            continue
        label = labels[i]
        named = label[0] if " shape" in q else label[1]
        there = named is not None and f" {named} " in f" {q.replace('?', ' ')}"
        assert absent_answer(q) is not None, q
        assert (a == absent_answer(q)) != there, (q, a, label)
        n += 1
    assert n > 20000
    assert absent_answer("what is the color of the shape?") is None


@pytest.mark.slow
def test_training_runs_and_init_continues_from_the_written_file(tmp_path):
    """A tiny seeded run writes the projector and the adapter; continuing from that file with 0 steps gives
    back exactly its tensors (the projector replaces alignment, the adapter factors are the start)."""
    from safetensors.torch import load_file

    from workbench.demo.effnet_vlm import train

    kw = dict(n_images=4, n_scenes=2, steps_align=2, batch=2, turns=2, log=lambda m: None)
    first = train(steps=1, out=tmp_path / "a.safetensors", **kw)
    assert first["steps"] == 1 and len(first["losses"]) == 1 and first["losses"][0] > 0
    again = train(steps=0, out=tmp_path / "b.safetensors", init=tmp_path / "a.safetensors", **kw)
    assert again["steps_align"] == 0 and len(again["init_sha256"]) == 64
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert set(a) == set(b) and any(k.startswith("lora.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith(".B") and a[k].abs().sum() > 0 for k in a)  # one step moved the adapter off zero
    # --projector-lr: one step from that file moves the projector too (by default it stays as aligned)
    moved = train(steps=1, out=tmp_path / "c.safetensors", init=tmp_path / "a.safetensors", projector_lr=1e-2, **kw)
    c = load_file(str(tmp_path / "c.safetensors"))
    assert moved["projector_lr"] == 1e-2
    proj = [k for k in a if k.startswith("model.multi_modal_projector.")]
    assert proj and all(not torch.equal(a[k], c[k]) for k in proj)


@pytest.mark.slow
def test_census_vision_section_runs_on_the_preset(vqa_lm):
    """The census's vision section analyses effnet-smollm2-vqa (not skipped): one row per head with VHD and the
    image-centric share, and the sink dimensions of the language model."""
    from workbench.report.census import CensusContext
    from workbench.report.vision_report import census_section

    sec = census_section(CensusContext(vqa_lm, torch.zeros(1, 4, dtype=torch.long), progress=False,
                                       options={"vision_images": 1}))
    assert "skipped" not in sec.summary, sec.summary
    assert len(sec.heads) == vqa_lm.spec.n_layers * vqa_lm.spec.n_heads
    assert sec.heads.vhd.notna().all() and (sec.heads.vhd >= 0).all() and sec.heads.vhd.max() > 0
    assert sec.heads.image_centric_share.between(0, 1).all()
    assert len(sec.summary["sink_dims"]) >= 1


@pytest.mark.slow
def test_the_image_moves_yes_no_answers_against_the_question_prior(vqa_lm):
    """easy-VQA's yes/no questions are mostly answered by the question alone (the train split's majority answer
    per question string scores ~0.83 on test). On the first 30 test questions where that prior is wrong, only
    the image can give the right answer: the model must get more of them right with the image than with a
    white image."""
    from collections import Counter, defaultdict

    from workbench.demo import easyvqa as V
    from workbench.tasks.vqa_eval import first_token_logits, score

    votes = defaultdict(Counter)
    for q, a, _ in V.questions("train"):
        votes[q][a] += 1
    picked = [(q, a, i) for q, a, i in V.questions("test")
              if V.is_yesno(a) and votes[q].most_common(1)[0][0] != a][:30]
    right = {"image": 0}
    for i in sorted({i for _, _, i in picked}):
        mine = [(q, a) for q, a, j in picked if j == i]
        logits = first_token_logits(vqa_lm, V.image_pixels("test", i), [q for q, _ in mine])
        right["image"] += int(score(vqa_lm.tokenizer, logits, [a for _, a in mine]).correct.sum())
    blank = first_token_logits(vqa_lm, V.blank_pixels(), [q for q, _, _ in picked])  # one white image for all
    right["blank"] = int(score(vqa_lm.tokenizer, blank, [a for _, a, _ in picked]).correct.sum())
    assert right["image"] >= right["blank"] + 0.15 * len(picked), right


@pytest.mark.slow
def test_hallucination_command_runs_pope_on_the_reports_heldout_scenes(vqa_lm, tmp_path):
    """``workbench hallucination`` (one call: ``hallucination_report``) on effnet-smollm2-vqa asks POPE on easy-VQA
    scenes, not the digit composites: its metrics on the first 2 held-out scenes equal those of the reference
    report's answers to the same questions (``reports/effnet-smollm2-vqa/pope_answers.csv``, made by
    scripts/effnet_vlm_report.py from the shipped weights), and the file it writes carries its provenance."""
    import json

    from workbench.io.runs import model_dir
    from workbench.report.hallucination_report import hallucination_report
    from workbench.tasks.hallucination import pope_metrics

    got = hallucination_report(vqa_lm, "none", "random", 2, out=tmp_path, progress=False)
    assert got["model"] == "effnet-smollm2-vqa" and "easy-VQA" in got["images"] and got["n"] == 4
    ref = pd.read_csv(model_dir("reports", "effnet-smollm2-vqa") / "pope_answers.csv")
    ref = ref[(ref.image < 2) & (ref.split == "random") & (ref.method == "none")]
    assert len(ref) == 4
    want = pope_metrics(ref)
    assert {k: got[k] for k in want} == pytest.approx(want)
    written = json.loads((tmp_path / "effnet-smollm2-vqa" / "hallucination_none_random_2.json").read_text())
    assert written["provenance"]["weights_sha256"] and written["provenance"]["config"]["scene_seed"] == 2000
