"""Dashboard (Streamlit AppTest), its file handling, and the figures of workbench.report.viz."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dashboards import sources as S
from workbench.report import viz
from workbench.core.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboards" / "app.py")


@pytest.fixture
def tiny_trace_dir(tiny_lm, tmp_path):
    from workbench.core.tracer import Tracer

    ids = torch.randint(3, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    tr = Tracer(tiny_lm, stats=("received", "entropy"), pattern_window=(8, 40)).run(ids)
    return tr.save(tmp_path / "trace"), tr


@pytest.fixture
def census_dir(tmp_path):
    d = tmp_path / "census"
    d.mkdir()
    rng = np.random.default_rng(0)
    heads = pd.DataFrame({"layer": np.repeat(np.arange(3), 4), "head": np.tile(np.arange(4), 3),
                          "first_token_mass": rng.uniform(0, 1, 12), "entropy": rng.uniform(0, 4, 12)})
    heads.to_parquet(d / "heads.parquet")
    (d / "summary.json").write_text(json.dumps({"n_samples": 2}))
    pd.DataFrame({"length": [100, 100, 200, 200], "depth": [0, 50, 0, 50], "accuracy": [1.0, 0.5, 0.0, 1.0]}) \
        .to_parquet(d / "needle.parquet")
    pd.DataFrame({"layer": [2, 3], "pos": [0, 0], "dim": [7, 7], "token": ["<s>", "<s>"], "value": [-300.0, 420.0],
                  "ratio_to_median": [900.0, 1200.0]}).to_csv(d / "massive.csv", index=False)
    return d


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=120)


def _array(v) -> np.ndarray:
    """Decode a plotly JSON array (a list, or plotly 6's {"dtype", "bdata", "shape"} base64 form)."""
    import base64

    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.asarray(v, dtype=np.float32)


def _titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


# --- the app -----------------------------------------------------------------------------------


def test_app_opens_trace_and_switches_heads(tiny_trace_dir):
    d, tr = tiny_trace_dir
    at = _app().run()
    assert not at.exception
    at.text_input(key="trace_path").set_value(str(d)).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="layer").options == ["0", "1"]
    assert at.radio(key="head").options == ["0", "1", "2", "3"]
    at.selectbox(key="layer").set_value(1)
    at.radio(key="head").set_value(3)
    at.run()
    titles = _titles(at)
    assert any(t.startswith("layer 1 head 3") for t in titles), titles
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    # the drawn map is the trace's pattern of that head (32 queries x 40 keys, no pooling)
    z = _array(spec["data"][0]["z"])
    assert np.allclose(z, tr["pattern"][1, 0, 3].numpy(), atol=1e-6)
    # windowing the keys narrows the map and says so
    at.slider(key="key_range").set_value((0, 10)).run()
    assert any("keys 0..9 of 40" in t for t in _titles(at))


def test_app_shows_errors_not_crashes(tmp_path):
    at = _app().run()
    at.text_input(key="trace_path").set_value(str(tmp_path / "missing")).run()
    assert not at.exception
    assert any("is not a trace directory" in e.value for e in at.error)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "trace.json").write_text("{not json")
    (bad / "arrays.safetensors").write_bytes(b"\x80\x04pickle")
    at.text_input(key="trace_path").set_value(str(bad)).run()
    assert not at.exception and any("corrupt trace file" in e.value for e in at.error)
    at.text_input(key="census_path").set_value(str(tmp_path)).run()
    assert not at.exception and any("no heads.parquet" in e.value for e in at.error)


def test_app_census_tab(census_dir):
    at = _app().run()
    at.text_input(key="census_path").set_value(str(census_dir)).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="census_score").options == ["first_token_mass", "entropy"]
    titles = _titles(at)
    assert "attention sinks: first_token_mass" in titles
    assert "needle.parquet" in titles and "massive.csv" in titles
    # the sinks map is the heads table's first_token_mass, layer by head; the needle chart its accuracy grid
    charts = {t: json.loads(c.proto.spec) for t, c in zip(titles, at.get("plotly_chart"))}
    heads = pd.read_parquet(census_dir / "heads.parquet")
    want = heads.pivot(index="layer", columns="head", values="first_token_mass").to_numpy()
    z = _array(charts["attention sinks: first_token_mass"]["data"][0]["z"]).astype(float)
    assert z.shape in (want.shape, want.T.shape) and np.allclose(z if z.shape == want.shape else z.T, want)
    needle = pd.read_parquet(census_dir / "needle.parquet")
    zn = _array(charts["needle.parquet"]["data"][0]["z"]).astype(float)
    grid = needle.pivot(index="depth", columns="length", values="accuracy").to_numpy()
    assert np.allclose(zn if zn.shape == grid.shape else zn.T, grid)


# --- sources -----------------------------------------------------------------------------------


def test_uploads_are_limited_and_never_unpickled(tiny_trace_dir, tmp_path):
    d, tr = tiny_trace_dir
    with pytest.raises(S.UploadError, match="upload limit"):
        S.parse_uploads({"heads.parquet": b"x" * (2 << 20)}, max_mb=1)
    with pytest.raises(S.UploadError, match="never pickle"):
        S.parse_uploads({"trace.pkl": b"\x80\x04."})
    with pytest.raises(S.UploadError, match="together"):
        S.parse_uploads({"arrays.safetensors": (d / "arrays.safetensors").read_bytes()})
    up, table, summary = S.parse_uploads({"trace.json": (d / "trace.json").read_bytes(),
                                          "arrays.safetensors": (d / "arrays.safetensors").read_bytes()})
    assert torch.equal(up["pattern"], tr["pattern"]) and table is None
    with pytest.raises(S.UploadError, match="cannot read"):
        S.parse_uploads({"heads.parquet": b"not parquet"})


def test_trace_head_table_and_heads_parser(tiny_trace_dir):
    _, tr = tiny_trace_dir
    t = S.trace_head_table(tr)
    assert list(t.columns[:3]) == ["layer", "head", "first_token_mass"] and len(t) == 8
    row = t[(t["layer"] == 1) & (t["head"] == 2)].iloc[0]
    assert row.first_token_mass == pytest.approx(float(tr["received"][1, 0, 2, 0]))
    assert row.entropy == pytest.approx(float(tr["entropy"][1, 0, 2].mean()))
    assert S.parse_heads("3.1, 7:4") == [(3, 1), (7, 4)]
    with pytest.raises(WorkbenchError, match="layer.head"):
        S.parse_heads("3-1")


def test_intervention_registry(tiny_lm):
    from workbench.interventions import HeadAblation
    from workbench.interventions.registry import available_interventions, build_intervention

    assert "head ablation" in available_interventions()
    iv = build_intervention("head ablation", tiny_lm, [(1, 2)], kind="uniform", phase="decode")
    assert isinstance(iv, HeadAblation) and iv.kind == "uniform" and iv.phase == "decode"
    with pytest.raises(WorkbenchError, match="unknown intervention"):
        build_intervention("nope", tiny_lm, [(0, 0)])
    with pytest.raises(WorkbenchError, match="out of range"):
        build_intervention("head ablation", tiny_lm, [(5, 0)])


def test_compare_intervention_changes_only_downstream(tiny_lm):
    from workbench.report.comparison import compare_intervention
    from workbench.interventions import HeadAblation

    ids = torch.randint(3, 90, (1, 24), generator=torch.Generator().manual_seed(1))
    c = compare_intervention(tiny_lm, HeadAblation([(1, 0)], "zero"), ids, max_new_tokens=0, layer=1, head=1, window=8)
    # ablating head (1,0)'s output cannot change layer 1's attention maps, only what follows
    assert torch.allclose(c.pattern_before, c.pattern_after) and c.pattern_before.shape == (8, 24)
    assert c.kl > 0
    c2 = compare_intervention(tiny_lm, HeadAblation([(0, 0)], "zero"), ids, max_new_tokens=0, layer=1, head=1, window=8)
    assert not torch.allclose(c2.pattern_before, c2.pattern_after)
    assert [t for t, _ in c2.figures(lambda i: f"t{i}")] == ["next token", "head 1.1"]


class _Capture:
    """Attention hook keeping one layer's q, k, v and (intervened) output of the last call."""

    def __init__(self, layer):
        self.layer, self.call = layer, None

    def on_attention(self, call):
        if call.layer == self.layer:
            self.call = {k: getattr(call, k).detach().clone() for k in ("query", "key", "value", "output")}
            self.call["scale"] = call.scale
        return None


def _eager_rows(c, head):
    """Eager softmax attention of one query head from captured q, k (causal): (N, N) float64."""
    q = c["query"][0, head].double()
    rep = c["query"].shape[1] // c["key"].shape[1]
    k = c["key"][0, head // rep].double()
    s = (q @ k.T) * c["scale"]
    n = s.shape[0]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1)


def _intervened_call(lm, iv, ids, layer):
    from workbench.core.attention import attention_hooks

    cap = _Capture(layer)
    with iv.applied(), attention_hooks(cap), torch.no_grad():
        lm.model(input_ids=ids, use_cache=False)
    return cap.call


def test_act_after_map_is_the_calibrated_attention(tiny_lm):
    """For an ACT-calibrated head, "after" is the attention the head used: equal to eager calibrated
    attention built from the model's own q and k (sink set recomputed from the eager map), and
    after @ V reproduces the head's intervened output."""
    from workbench.report.comparison import compare_intervention
    from workbench.interventions.act import ACTCalibration

    ids = torch.randint(3, 90, (1, 24), generator=torch.Generator().manual_seed(2))
    heads = [(0, 1), (1, 2)]
    c = compare_intervention(tiny_lm, ACTCalibration(heads, beta=0.4, threshold=0.05), ids, max_new_tokens=0,
                             layer=1, head=2, window=24)
    assert c.intervened and c.pattern_note == ""
    call = _intervened_call(tiny_lm, ACTCalibration(heads, beta=0.4, threshold=0.05), ids, 1)
    a = _eager_rows(call, 2)
    n = a.shape[0]
    s = a.sum(0) / torch.arange(n, 0, -1, dtype=torch.float64)  # s_k: mean over the queries i >= k
    hit = s > 0.05
    sinks = hit.clone()
    sinks[int(hit.nonzero()[0])] = False  # ACT drops the first detected sink
    assert sinks.any(), "the planted low threshold must leave a hidden sink"
    a_s = a[:, sinks].sum(-1, keepdim=True)
    ref = torch.where(sinks, 0.4 * a, a * (1 - 0.4 * a_s) / (1 - a_s))
    assert torch.allclose(c.pattern_after.double(), ref, atol=1e-5)
    assert c.max_pattern_change() > 1e-3
    v = call["value"][0, 2 // (call["query"].shape[1] // call["key"].shape[1])].double()
    assert torch.allclose(c.pattern_after.double() @ v, call["output"][0, 2].double(), atol=1e-5)


def test_uniform_and_zero_ablation_maps(tiny_lm):
    from workbench.report.comparison import compare_intervention
    from workbench.interventions import HeadAblation

    ids = torch.randint(3, 90, (1, 20), generator=torch.Generator().manual_seed(3))
    c = compare_intervention(tiny_lm, HeadAblation([(1, 3)], "uniform"), ids, max_new_tokens=0, layer=1, head=3,
                             window=6)
    call = _intervened_call(tiny_lm, HeadAblation([(1, 3)], "uniform"), ids, 1)
    ref = torch.tril(torch.ones(20, 20, dtype=torch.float64))
    ref = (ref / ref.sum(-1, keepdim=True))[14:]
    assert torch.allclose(c.pattern_after.double(), ref, atol=1e-6) and c.max_pattern_change() > 1e-3
    v = call["value"][0, 3 // 2].double()
    assert torch.allclose(c.pattern_after.double() @ v, call["output"][0, 3, 14:].double(), atol=1e-5)
    z = compare_intervention(tiny_lm, HeadAblation([(1, 3)], "zero"), ids, max_new_tokens=0, layer=1, head=3, window=6)
    assert torch.equal(z.pattern_after, z.pattern_before) and "not its attention" in z.pattern_note
    ch = z.changes().set_index("quantity")
    assert ch.loc["head 1.3 output norm ||z||, mean over the window", "after"] == 0.0
    assert ch.loc["head 1.3 output norm ||z||, mean over the window", "before"] > 0
    assert ch.loc["max |Δ logit|, next token", "after"] > 0


def test_var_rows_reproduce_eager_var():
    """var_rows (the map shown for VAR) times V equals the eager VAR output of the same call."""
    from workbench.core.attention import AttentionCall, attention_with_lse
    from workbench.report.comparison import var_rows
    from workbench.interventions.var import var_eager

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))
    k[:, :, 0] *= 4  # a strong first key
    out, lse = attention_with_lse(q, k, v, None, 8 ** -0.5)
    call = AttentionCall(0, q, k, v, None, out, lse, 8 ** -0.5)
    sinks = torch.zeros(12, dtype=torch.bool)
    sinks[0] = True
    image = torch.zeros(12, dtype=torch.bool)
    image[1:7] = True
    ref, sel = var_eager(call, sinks, image, 0.6, 0.2, 0.5)
    a = torch.softmax(call.scores(), -1)
    rows = var_rows(a, sinks, image, 0.6, 0.2, 0.5)
    assert sel.any() and torch.allclose(rows.sum(-1), torch.ones(1, 2, 12), atol=1e-6)
    assert torch.allclose(rows @ v, ref, atol=1e-5)


# --- figures -----------------------------------------------------------------------------------


def test_attention_map_pools_long_contexts_and_says_so():
    a = np.zeros((128, 2048), dtype=np.float32)
    a[5, 1999] = 0.9  # a single strong key must survive pooling
    fig = viz.attention_map(a, query_start=1920, title="h")
    z = np.asarray(fig.data[0].z)
    assert z.shape == (128, 512) and z.max() == pytest.approx(0.9)
    assert z[5, 1999 // 4] == pytest.approx(0.9)
    assert "max-pooled 1x4" in fig.layout.title.text
    small = viz.attention_map(np.eye(3), tokens=["a", "b", "c"], title="s")
    assert list(small.data[0].x) == [0, 1, 2] and small.layout.title.text == "s"
    # repeated tokens stay separate positions; tick labels are the readable tokens, hover adds position and id
    rep = viz.attention_map(np.eye(3), tokens=["·a", "·a", "⏎"], ids=[7, 7, 9], title="r")
    assert list(rep.layout.xaxis.ticktext) == ["·a", "·a", "⏎"] and list(rep.layout.xaxis.tickvals) == [0, 1, 2]
    assert list(rep.data[0].customdata[2][1]) == ["2 ⏎ (id 9)", "1 ·a (id 7)"]
    assert rep.layout.yaxis.autorange == "reversed"


def test_layer_zero_is_at_the_top_everywhere(census_dir):
    heads = pd.read_parquet(census_dir / "heads.parquet")
    assert viz.layer_head_heatmap(heads, "entropy").layout.yaxis.autorange == "reversed"
    sink = viz.sink_chart(heads, "first_token_mass")
    assert sink.layout.yaxis.autorange == "reversed" and sink.layout.yaxis2.autorange == "reversed"


def test_received_maxima_use_the_min_queries_rule():
    # T = 40: keys seen by fewer than max(8, 40 // 4) = 10 queries (k > 30) never count
    r = np.full((2, 40), 0.01, dtype=np.float32)
    r[0, 35] = 0.9  # a late key seen by 5 queries
    r[0, 12] = 0.2
    vals, keys = viz.received_maxima(r)
    assert keys.tolist() == [12, 1] and vals[0] == pytest.approx(0.2)
    assert viz.received_maxima(r, min_queries=1)[1][0] == 35


def test_numbers_and_heads_are_formatted():
    assert viz.format_number(7484689.545) == "7.48e+06" and viz.format_number(0.01432) == "0.01432"
    assert viz.format_number(12) == "12" and viz.format_head(16, 0) == "16.0"
    assert "provenance not recorded" in viz.provenance_footer(None)
    foot = viz.provenance_footer({"git_commit": "abc<1>", "model": "smollm2-135m", "seed": 0})
    assert "abc&lt;1&gt;" in foot and "smollm2-135m" in foot


@pytest.mark.slow
def test_display_tokens_on_the_smollm2_tokenizer(smollm2):
    text = "The capital of France is Paris.\n\tNa\u00efve caf\u00e9"
    ids = smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]
    raw = smollm2.tokenizer.convert_ids_to_tokens(ids)
    assert any("\u0120" in t for t in raw) and any("\u010a" in t for t in raw)  # the BPE markers Ġ and Ċ are there
    shown = viz.display_tokens(smollm2.tokenizer, ids)
    assert not any("\u0120" in t or "\u010a" in t for t in shown)
    assert "·capital" in shown and "⏎" in shown and "·café" in shown
    # read back without the markers, the tokens are the text
    assert "".join(shown).replace("·", " ").replace("⏎", "\n").replace("⇥", "\t") == text
    assert viz.display_token_strings(raw) == shown


def test_needle_sink_and_massive_figures(census_dir):
    needle = pd.read_parquet(census_dir / "needle.parquet")
    fig = viz.needle_heatmap(needle)
    assert np.allclose(np.asarray(fig.data[0].z, dtype=float), [[1.0, 0.0], [0.5, 1.0]])
    heads = pd.read_parquet(census_dir / "heads.parquet")
    sink = viz.sink_chart(heads, "first_token_mass", threshold=0.5)
    rate = heads.assign(s=heads.first_token_mass > 0.5).groupby("layer").s.mean().values * 100
    assert np.allclose(sink.data[1].x, rate)
    m = viz.massive_activation_chart(pd.read_csv(census_dir / "massive.csv"))
    assert [t.name for t in m.data] == ["dim 7"] and list(m.data[0].y) == [300.0, 420.0]
    with pytest.raises(KeyError, match="ratio_to_median"):
        viz.massive_activation_chart(pd.DataFrame({"layer": [1]}))
    before, after = np.full(5, 0.2), np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    bars = viz.next_token_chart(before, after, [f"w{i}" for i in range(5)], k=2)
    assert bars.data[0].x[0].startswith("w0") and bars.data[1].y[0] == pytest.approx(0.6)


# --- the app with the real model ---------------------------------------------------------------


def _submit(at, label: str):
    """Click the form submit button with this label."""
    for b in at.get("form_submit_button"):
        if b.proto.label == label:
            return b.click().run()
    raise AssertionError(f"no submit button {label!r}")


def _load_smollm2(at):
    assert at.sidebar.selectbox(key="model_choice").value == "smollm2-135m"  # the text LM is the default
    _submit(at, "Load model")
    assert not at.error and not at.exception, [e.value for e in at.error]


def test_presets_text_lm_first_vlm_labelled():
    from dashboards.views import preset_options
    from workbench.core.presets import PRESETS

    opts = preset_options(PRESETS)
    assert opts[0][0] == "smollm2-135m" and "text LM" in opts[0][1]
    names = [n for n, _ in opts]
    kinds = ["VLM" in label for _, label in opts]
    assert kinds == sorted(kinds)  # every text LM before every VLM
    # the VLM with the pretrained vision tower comes first, before the small test fixture
    assert kinds[names.index("effnet-smollm2-vqa")] and names[kinds.index(True)] == "effnet-smollm2-vqa"
    assert names.index("effnet-smollm2-vqa") < names.index("digits-vlm") and "VLM" in dict(opts)["digits-vlm"]


def test_census_extras_dedupe_and_label(census_dir):
    from dashboards.views import census_extras

    heads = pd.read_parquet(census_dir / "heads.parquet")
    heads.to_csv(census_dir / "dup.csv", index=False)
    heads.to_parquet(census_dir / "dup.parquet")
    c = S.open_census_dir(census_dir)
    ex = census_extras(census_dir, c.tables, c.heads, c.summary)
    names = [e.name for e in ex]
    assert "dup.parquet" in names and "dup.csv" not in names
    dup = next(e for e in ex if e.name == "dup.parquet")
    assert "first_token_mass [dup]" in dup.df.columns and "[dup]" in dup.caption


def test_committed_census_shows_needle_and_massive_charts():
    at = _app().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = _titles(at)
    assert "needle in a haystack (retrieval/tests.csv)" in titles and "massive activations (sinks.json)" in titles
    listed = [m.value for m in at.markdown if m.value.startswith("**head_types")]
    assert len(listed) == 1, listed
    # the Vision tab is there without a model and says in one line which presets it takes
    assert [t.label for t in at.tabs] == ["Attention", "Census", "Intervention", "Vision"]
    assert any("effnet-smollm2-vqa" in i.value and "digits-vlm" in i.value for i in at.tabs[3].info)


@pytest.mark.slow
def test_app_runs_intervention_on_smollm2(smollm2):
    at = _app().run()
    _load_smollm2(at)
    at.selectbox(key="iv_name").set_value("head ablation").run()
    at.text_input(key="iv_heads").set_value("2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8")
    at.number_input(key="iv_new").set_value(3)
    at.text_input(key="iv_compare").set_value("4.0")
    at.number_input(key="iv_window").set_value(8)
    _submit(at, "Run intervention")
    assert not at.error and not at.exception, [e.value for e in at.error]
    assert len(at.code) >= 2
    titles = _titles(at)
    assert any(t.startswith("head 4.0 attention: before / after") for t in titles), titles
    assert any("KL(before" in m.value for m in at.markdown)
    # the compared head defaults to the first intervened head; zero ablation says the pattern is unchanged
    at.text_input(key="iv_compare").set_value("")
    _submit(at, "Run intervention")
    assert any(t.startswith("head 2.0 attention") for t in _titles(at))
    assert any("not its attention" in i.value for i in at.info)
    # an error replaces the stale result
    at.text_input(key="iv_heads").set_value("99.0")
    _submit(at, "Run intervention")
    assert at.error and not any(t.startswith("head ") for t in _titles(at))


@pytest.mark.slow
def test_app_traces_a_prompt_on_smollm2(smollm2):
    at = _app().run()
    _load_smollm2(at)
    at.sidebar.radio(key="trace_mode").set_value("run a prompt").run()
    at.text_area(key="prompt").set_value("The cat sat on the mat. The dog")
    _submit(at, "Trace")
    assert not at.error and not at.exception, [e.value for e in at.error]
    assert at.radio(key="head").options == [str(h) for h in range(9)]
    assert len(at.selectbox(key="layer").options) == 30
    assert "layer 0 head 0" in _titles(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    ticks = spec["layout"]["xaxis"]["ticktext"]
    assert "·cat" in ticks and not any("\u0120" in t for t in ticks)
