"""Retrieval heads: retrieval score on a planted mechanism and against an eager reference, answer-span
location across tokenisations, resumable sweep, masking of chosen heads only, real-model checks."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import make_tiny_lm
from workbench.core.attention import attention_hooks
from workbench.core.errors import NeedleNotFoundError, WorkbenchError
from workbench.interventions import HeadAblation
from workbench.studies.retrieval_masking import masking_table, select_heads
from workbench.tasks.needle import (NEEDLES, Needle, build_prompt, char_span_to_tokens, find_token_span,
                                        locate_answer)
from workbench.analyzers.retrieval import greedy_decode, prefill, retrieval_hits
from workbench.studies.retrieval_sweep import read_results, run_sweep, summarize


# --- retrieval score -------------------------------------------------------------------------

class ScriptedLogits:
    """Forward hook on lm_head forcing the emitted tokens to a script (one per forward pass)."""

    def __init__(self, script, vocab):
        self.script, self.vocab, self.step = list(script), vocab, 0

    def __call__(self, module, args, out):
        logits = torch.full_like(out, -1e4)
        logits[..., self.script[min(self.step, len(self.script) - 1)]] = 1e4
        self.step += 1
        return logits


class PlantTopKey:
    """Makes head ``head`` of ``layer`` attend (as seen by later hooks) to key ``positions[t]`` at step t.

    It replaces the call's query and key (clones, so the model's cache and output are untouched) such
    that the head's last query has a huge score at the target key only.
    """

    def __init__(self, layer, head, positions):
        self.layer, self.head, self.positions, self.t = layer, head, list(positions), 0

    def on_attention(self, call):
        if call.layer != self.layer:
            return None
        pos = self.positions[self.t]
        self.t += 1
        q, k = call.query.clone(), call.key.clone()
        kv = self.head // call.n_rep
        q[:, self.head, -1] = 0
        q[:, self.head, -1, 0] = 1.0
        k[:, kv, :, 0] = 0
        k[:, kv, pos, 0] = 1e4
        call.query, call.key = q, k
        return None


def test_retrieval_score_planted_head_equals_hand_count():
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2)
    ctx = torch.randint(10, 90, (1, 40))
    a, b = 20, 23
    ctx[0, a:b] = torch.tensor([5, 7, 11])
    ctx[0, 23] = 5          # same token as step 3 emits, but outside the answer span
    script = [5, 7, 9, 5]   # emitted tokens
    # step t points at a + t: hits at t=0 (5==5), t=1 (7==7); t=2 token 11 != 9; t=3 outside span
    plant = PlantTopKey(1, 2, [a, a + 1, a + 2, a + 3])
    pc = prefill(lm, ctx)
    handle = lm.model.lm_head.register_forward_hook(ScriptedLogits(script, 97))
    try:
        with attention_hooks(plant):  # registered before the recorder, so the recorder sees the plant
            dec = greedy_decode(lm, ctx, max_new_tokens=4, prefill_cache=pc)
    finally:
        handle.remove()
    assert dec.tokens == script
    assert dec.top_keys.shape == (4, 2, 4)
    assert dec.top_keys[:, 1, 2].tolist() == [a, a + 1, a + 2, a + 3]
    scores = retrieval_hits(dec.top_keys, dec.tokens, ctx[0], (a, b))
    assert scores[1, 2].item() == pytest.approx(2 / 3)
    # every other head: the definition evaluated by hand from its recorded top keys
    for layer in range(2):
        for h in range(4):
            hits = sum(1 for t, w in enumerate(script)
                       if a <= dec.top_keys[t, layer, h] < b and ctx[0, dec.top_keys[t, layer, h]] == w)
            assert scores[layer, h].item() == pytest.approx(hits / 3)


def test_top_keys_equal_eager_output_attentions_during_decoding():
    """The lean recorder's top keys equal argmax of eager attention rows (the published method)."""
    lm = make_tiny_lm(n_layers=3, n_heads=4, n_kv_heads=2, seed=3)
    ctx = torch.randint(3, 97, (1, 30))
    dec = greedy_decode(lm, ctx, max_new_tokens=8)
    full = torch.cat([ctx, torch.tensor([dec.tokens[:-1]])], dim=1)
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = lm.model(full, output_attentions=True).attentions
    finally:
        lm.model.set_attn_implementation("workbench")
    n = ctx.shape[1]
    for t in range(len(dec.tokens)):
        for layer in range(3):
            ref = att[layer][0, :, n - 1 + t].argmax(-1)
            assert dec.top_keys[t, layer].tolist() == ref.tolist()
    # and the emitted tokens are the eager greedy tokens
    with torch.no_grad():
        ref_tokens = lm.model(full).logits[0, n - 1:].argmax(-1).tolist()
    assert dec.tokens == ref_tokens


def test_summary_averages_only_correct_tests():
    recs = [{"key": "a", "length": 10, "depth": 0.0, "needle": "x", "correct": True, "scores": [[1.0, 0.0]]},
            {"key": "b", "length": 10, "depth": 0.0, "needle": "y", "correct": True, "scores": [[0.5, 0.1]]},
            {"key": "c", "length": 10, "depth": 0.0, "needle": "z", "correct": False, "scores": [[0.0, 0.9]]}]
    res = summarize(recs, 1, 2)
    assert res.heads.score.tolist() == pytest.approx([0.75, 0.05])
    assert res.heads.retrieval.tolist() == [True, False]
    assert res.summary["n_correct"] == 2 and res.summary["n_retrieval_heads"] == 1
    js = res.to_json()
    assert js["retrieval_heads"] == [{"layer": 0, "head": 0, "score": 0.75}]


# --- answer span --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from workbench.core.models import cache_dir

    path = cache_dir() / "smollm2-135m"
    if not (path / "tokenizer.json").exists():
        from workbench import load_model

        return load_model("smollm2-135m").tokenizer
    return AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("depth", [0, 33, 100])
def test_answer_span_is_located_for_every_needle(tok, depth):
    for nd in NEEDLES:
        p = build_prompt(tok, nd, 300, depth)
        a, b = p.answer_span
        assert b > a
        assert tok.decode(p.ids[0, a:b]).strip() == nd.answer
        na, nb = p.needle_span
        assert na <= a and b <= nb
        assert abs(p.ids.shape[1] - 300) <= 3
        assert p.text.count(nd.sentence) == 1


def test_answer_span_differs_from_standalone_tokenisation(tok):
    # glued to punctuation and digits: the in-context tokens are not the standalone tokenisation
    nd = Needle("code", "The vault code for Harlan was 7Q-Zeta9, written in red ink.", "What was the vault code?", "7Q-Zeta9")
    p = build_prompt(tok, nd, 200, 50)
    a, b = p.answer_span
    assert tok.decode(p.ids[0, a:b]).strip() == "7Q-Zeta9"
    nd2 = Needle("x", "Her favourite colour was deep ultramarine blue.", "Colour?", "ultramarine")
    p2 = build_prompt(tok, nd2, 200, 50)
    a2, b2 = p2.answer_span
    standalone = tok("ultramarine", add_special_tokens=False)["input_ids"]
    assert p2.ids[0, a2:b2].tolist() != standalone  # inside the sentence it is " ultramarine"
    # the token-search fallback (tokenizers without offsets) finds the same span
    ids = p2.ids[0].tolist()
    ans, _ = locate_answer(ids, None, tok, p2.text, nd2, p2.text.index(nd2.sentence))
    assert ans == (a2, b2)


def test_needle_not_found_raises(tok):
    nd = NEEDLES[0]
    p = build_prompt(tok, nd, 200, 50)
    ids = p.ids[0].tolist()
    with pytest.raises(NeedleNotFoundError):
        locate_answer(ids, None, tok, p.text, nd, 0)  # the needle is not at character 0
    with pytest.raises(NeedleNotFoundError):
        find_token_span(ids, tok, "a phrase that was never inserted anywhere")
    with pytest.raises(NeedleNotFoundError):
        char_span_to_tokens([(0, 0)] * 5, 3, 9)
    with pytest.raises(WorkbenchError):
        build_prompt(tok, nd, 10, 50)  # too short for the template


# --- resumable sweep ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_with_tok(tok):
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, vocab=len(tok), max_pos=512)
    lm.tokenizer = tok
    return lm


class Killed(Exception):
    pass


def test_sweep_killed_midway_resumes_without_loss_or_redo(tiny_with_tok, tmp_path):
    lm = tiny_with_tok
    kw = dict(lengths=[160, 200], depths=[0, 50, 100], needles=NEEDLES[:2], out_dir=tmp_path, progress=False,
              max_new_tokens=3)
    first: list[str] = []

    def kill_after_five(rec):
        first.append(rec["key"])
        if len(first) == 5:
            raise Killed

    with pytest.raises(Killed):
        run_sweep(lm, on_test=kill_after_five, **kw)
    assert [r["key"] for r in read_results(tmp_path)] == first
    # a line cut off while being written is dropped and its test redone
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"key": "L200-D50-tallinford", "trunc')
    with pytest.raises(WorkbenchError):
        run_sweep(lm, **kw)  # not resuming into existing results
    second: list[str] = []
    res = run_sweep(lm, resume=True, on_test=lambda r: second.append(r["key"]), **kw)
    assert not set(first) & set(second)
    assert len(first) + len(second) == 12
    keys = [r["key"] for r in read_results(tmp_path)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12
    assert res.summary["n_tests"] == 12
    # resuming a finished sweep runs nothing
    third: list[str] = []
    run_sweep(lm, resume=True, on_test=lambda r: third.append(r["key"]), **kw)
    assert third == []
    # resuming with another setting or grid is refused, naming the field, before any test runs
    from workbench.io.jsonl import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="max_new_tokens: 3 != 4"):
        run_sweep(lm, resume=True, on_test=lambda r: third.append(r["key"]), **{**kw, "max_new_tokens": 4})
    with pytest.raises(CheckpointMismatchError, match="lengths"):
        run_sweep(lm, resume=True, on_test=lambda r: third.append(r["key"]), **{**kw, "lengths": [160]})
    assert third == []


def test_retrieval_ablate_and_masking_test_share_one_default_grid():
    """`retrieval`, `ablate` and `masking-test` (and their Python calls) default to the same needle grid."""
    import inspect

    import typer

    from workbench.cli import _load_commands, app
    from workbench.studies.retrieval_runs import ablate_needles, masking_test
    from workbench.studies.retrieval_sweep import run_sweep
    from workbench.tasks.needle import DEFAULT_DEPTHS, DEFAULT_LENGTHS

    _load_commands()
    group = typer.main.get_command(app)
    for name in ("retrieval", "ablate", "masking-test"):
        opts = {p.name: p.default for p in group.commands[name].params}
        assert [int(x) for x in opts["lengths"].split(",")] == list(DEFAULT_LENGTHS), name
        assert [float(x) for x in opts["depths"].split(",")] == list(DEFAULT_DEPTHS), name
    for fn in (run_sweep, ablate_needles, masking_test):
        sig = inspect.signature(fn).parameters
        assert (sig["lengths"].default, sig["depths"].default) == (DEFAULT_LENGTHS, DEFAULT_DEPTHS), fn.__name__


# --- masking ------------------------------------------------------------------------------------

def test_select_heads():
    scores = pd.DataFrame({"layer": [0, 0, 1, 1, 2, 2], "head": [0, 1, 0, 1, 0, 1],
                           "score": [0.9, 0.05, 0.3, 0.0, 0.2, 0.01]})
    assert select_heads("retrieval:top-2", 3, 2, scores) == [(0, 0), (1, 0)]
    pool = {(0, 1), (1, 1), (2, 1)}
    for seed in range(5):
        r = select_heads("random:2", 3, 2, scores, seed)
        assert set(r) <= pool and len(r) == 2
        assert r == select_heads("random:2", 3, 2, scores, seed)
    assert select_heads("2.1, 0.0", 3, 2) == [(0, 0), (2, 1)]
    with pytest.raises(WorkbenchError):
        select_heads("random:4", 3, 2, scores)
    with pytest.raises(WorkbenchError):
        select_heads("retrieval:top-2", 3, 2, None)
    with pytest.raises(IndexError):
        select_heads("3.0", 3, 2)


class Capture:
    def __init__(self):
        self.out = {}

        self.values = {}

    def on_attention(self, call):
        self.out.setdefault(call.layer, []).append(call.output.clone())
        self.values.setdefault(call.layer, []).append((call.value.clone(), call.n_rep))


@pytest.mark.parametrize("kind", ["uniform", "zero", "mean"])
def test_decode_masking_changes_only_chosen_heads(kind):
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, seed=1)
    ctx = torch.randint(3, 97, (1, 24))
    heads = [(0, 1), (0, 2)]
    means = {h: torch.randn(16) for h in heads} if kind == "mean" else None
    abl = HeadAblation(heads, kind, "decode", means)

    def run(hooks):
        cap = Capture()
        pc = prefill(lm, ctx, hooks=hooks + (cap,))
        step = torch.tensor([[7]])
        with attention_hooks(*hooks, cap), torch.no_grad():
            lm.model(input_ids=step, past_key_values=pc, use_cache=True)
        return cap

    base_cap, ab_cap = run(()), run((abl,))
    base, ab = base_cap.out, ab_cap.out
    # prefill (first call of each layer): untouched
    for layer in range(2):
        assert torch.equal(base[layer][0], ab[layer][0])
    # decoding step, layer 0: chosen heads changed, the others identical
    b0, a0 = base[0][1], ab[0][1]
    for h in range(4):
        same = torch.equal(b0[:, h], a0[:, h])
        assert same == ((0, h) not in heads)
    v, rep = ab_cap.values[0][1]
    for _, h in heads:
        expect = {"uniform": v[:, h // rep].mean(dim=1), "zero": torch.zeros(1, 16),
                  "mean": means[(0, h)][None] if means else None}[kind]
        assert torch.allclose(a0[:, h, 0], expect, atol=1e-5)
    # phase="all" also changes the prefill of the chosen heads only
    ab_all = run((HeadAblation(heads, kind, "all", means),)).out
    for h in range(4):
        assert torch.equal(base[0][0][:, h], ab_all[0][0][:, h]) == ((0, h) not in heads)


def test_masking_table():
    rows = []
    for cond, sel, k, seed, acc in [("baseline", "none", 0, None, [1, 1]), ("u/top-5", "top", 5, None, [0, 0]),
                                    ("u/r0", "random", 5, 0, [1, 1]), ("u/r1", "random", 5, 1, [1, 0])]:
        for c in acc:
            rows.append({"condition": cond, "selection": sel, "k": k, "seed": seed,
                         "kind": None if sel == "none" else "uniform", "correct": bool(c)})
    t = masking_table(pd.DataFrame(rows))
    r = t.iloc[0]
    assert (r.baseline, r.top_k, r.random_k_mean, r.random_k_min, r.random_k_max) == (1.0, 0.0, 0.75, 0.5, 1.0)


# --- real model -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_model_needle_and_retrieval_scores(smollm2, tmp_path):
    from workbench.studies.retrieval_sweep import run_test

    rec = run_test(smollm2, NEEDLES[0], 256, 50)
    assert rec["correct"], rec["prediction"]
    scores = torch.tensor(rec["scores"])
    assert scores.shape == (30, 9)
    # the model copies the answer: some head's top key tracks the answer tokens at most steps
    assert scores.max() >= 0.5
    # uniform masking of the best heads during decoding changes the answer's retrieval
    p = build_prompt(smollm2.tokenizer, NEEDLES[0], 256, 50)
    top = torch.topk(scores.flatten(), 20).indices
    heads = [(int(i) // 9, int(i) % 9) for i in top]
    dec = greedy_decode(smollm2, p.ids, record=False, hooks=(HeadAblation(heads, "uniform", "decode"),))
    assert smollm2.tokenizer.decode(dec.tokens, skip_special_tokens=True) != rec["prediction"]


@pytest.mark.slow
def test_cli_retrieval_and_ablate_json(tmp_path, smollm2):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(Path.home())}
    out = tmp_path / "ret"
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "retrieval", "--lengths", "160", "--depths", "50",
                        "--needles", "1", "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    js = json.loads(r.stdout)
    sweep = js
    assert len(js["heads"]) == 270 and {"layer", "head", "score"} <= set(js["heads"][0])
    assert isinstance(js["retrieval_heads"], list)
    assert (out / "smollm2-135m" / "retrieval" / "retrieval_heads.parquet").exists()  # ROOT/<model>/retrieval
    # ablate reads the scores from the same run folder (never from reports/)
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "ablate", "--heads", "retrieval:top-3", "--kind",
                        "uniform", "--task", "niah", "--lengths", "160", "--depths", "50", "--needles", "1",
                        "--out", str(out), "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    js = json.loads(r.stdout)
    ranked = sorted(sweep["heads"], key=lambda h: -h["score"])
    assert ranked[2]["score"] > ranked[3]["score"]  # no tie at the cut
    top3 = [(h["layer"], h["head"]) for h in ranked[:3]]
    assert [tuple(h) for h in js["heads"]] == top3 and js["n_tests"] == 1
    assert js["grid"]["accuracy"] == [[js["accuracy"]]]
    # exact: the one test recomputed here with its own greedy loop (the prompt but its last token cached without
    # hooks, then decoding steps under the ablation, stopping at a newline or end of turn) and rouge-score
    from rouge_score import rouge_scorer


    tok = smollm2.tokenizer
    p = build_prompt(tok, NEEDLES[0], 160, 50)

    def answer(hooks):
        with torch.no_grad():
            cache = smollm2.model(p.ids[:, :-1], use_cache=True).past_key_values
            inp, toks = p.ids[:, -1:], []
            with attention_hooks(*hooks):
                for _ in range(50):
                    w = int(smollm2.model(input_ids=inp, past_key_values=cache, use_cache=True).logits[0, -1].argmax())
                    toks.append(w)
                    if w == tok.eos_token_id or "\n" in tok.decode([w]):
                        break
                    inp = torch.tensor([[w]])
        return tok.decode(toks, skip_special_tokens=True)

    rouge = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    correct = [rouge.score(NEEDLES[0].answer, answer(h))["rouge1"].recall > 0.5
               for h in ((), (HeadAblation(top3, "uniform", "decode"),))]
    assert (js["baseline_accuracy"], js["accuracy"]) == (float(correct[0]), float(correct[1]))


def test_census_section_runs_its_own_sweep_or_reads_one_of_the_same_weights(tiny_with_tok, tmp_path, monkeypatch):
    from workbench.report.census import CensusContext
    from workbench.io.provenance import ProvenanceError, collect
    from workbench.report import retrieval_section as C
    from workbench.studies.retrieval_sweep import save

    lm = tiny_with_tok
    monkeypatch.setattr(C, "QUICK_LENGTHS", (160,))
    monkeypatch.setattr(C, "QUICK_DEPTHS", (0, 100))
    monkeypatch.setattr(C, "QUICK_MAX_NEW_TOKENS", 3)
    # default: the census computes the scores itself, with the quick sweep, in its run folder
    ctx = CensusContext(lm, torch.zeros(1, 4, dtype=torch.long), False, {}, tmp_path / "census")
    sec = C.retrieval_section(ctx)
    direct = run_sweep(lm, [160], [0, 100], NEEDLES[:2], tmp_path / "direct", progress=False, max_new_tokens=3)
    assert sec.summary["n_tests"] == 4 and sec.summary["lengths"] == [160] and "quick sweep" in sec.summary["source"]
    assert sec.heads.retrieval_score.tolist() == pytest.approx(direct.heads.score.tolist())
    assert (tmp_path / "census" / "census_retrieval" / "retrieval_heads.parquet").exists()
    # --retrieval-from: a saved sweep of the same weights is read, with its provenance
    recs = [{"key": "a", "length": 10, "depth": 0.0, "needle": "x", "correct": True,
             "scores": [[0.5, 0.0, 0.2, 0.0], [0.0, 0.05, 0.0, 0.9]]}]
    save(summarize(recs, 2, 4), tmp_path / "ret", "tiny-llama", prov=collect(lm, {"grid": "hand-made"}))
    ctx.options["retrieval_from"] = str(tmp_path / "ret")
    sec = C.retrieval_section(ctx)
    assert sec.summary["n_retrieval_heads"] == 3 and sec.summary["source"] == str(tmp_path / "ret")
    assert sec.heads.retrieval_score.tolist() == pytest.approx([0.5, 0.0, 0.2, 0.0, 0.0, 0.05, 0.0, 0.9])
    assert sec.summary["top_heads"][0] == {"layer": 1, "head": 3, "score": 0.9}
    # ... and one of other weights is refused
    other = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, seed=5)
    save(summarize(recs, 2, 4), tmp_path / "other", "tiny-llama", prov=collect(other))
    ctx.options["retrieval_from"] = str(tmp_path / "other")
    with pytest.raises(ProvenanceError, match="other weights"):
        C.retrieval_section(ctx)
