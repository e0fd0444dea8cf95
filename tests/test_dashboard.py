"""Dashboard (Streamlit AppTest), its file handling, and the figures of workbench.viz."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dashboards import sources as S
from workbench import viz
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboards" / "app.py")


@pytest.fixture
def tiny_trace_dir(tiny_lm, tmp_path):
    from workbench.tracer import Tracer

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
    from workbench.comparison import compare_intervention
    from workbench.interventions import HeadAblation

    ids = torch.randint(3, 90, (1, 24), generator=torch.Generator().manual_seed(1))
    c = compare_intervention(tiny_lm, HeadAblation([(1, 0)], "zero"), ids, max_new_tokens=0, layer=1, head=1, window=8)
    # ablating head (1,0)'s output cannot change layer 1's attention maps, only what follows
    assert torch.allclose(c.pattern_before, c.pattern_after) and c.pattern_before.shape == (8, 24)
    assert c.kl > 0
    c2 = compare_intervention(tiny_lm, HeadAblation([(0, 0)], "zero"), ids, max_new_tokens=0, layer=1, head=1, window=8)
    assert not torch.allclose(c2.pattern_before, c2.pattern_after)
    assert [t for t, _ in c2.figures(lambda i: f"t{i}")] == ["next token", "layer 1 head 1"]


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
    assert list(small.data[0].x) == ["0:a", "1:b", "2:c"] and small.layout.title.text == "s"


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


@pytest.mark.slow
def test_app_runs_intervention_on_smollm2(smollm2):
    at = _app().run()
    at.sidebar.radio(key="model_mode").set_value("preset").run()
    at.sidebar.button(key="load_model").click().run()
    assert not at.error and not at.exception
    at.selectbox(key="iv_name").set_value("head ablation")
    at.text_input(key="iv_heads").set_value("2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8")
    at.number_input(key="iv_new").set_value(3)
    at.number_input(key="iv_layer").set_value(4)
    at.number_input(key="iv_window").set_value(8)
    at.button(key="iv_run").click().run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    assert len(at.code) >= 2
    titles = _titles(at)
    assert any(t.startswith("layer 4 head 0: before / after") for t in titles), titles
    assert any("KL(before" in m.value for m in at.markdown)


@pytest.mark.slow
def test_app_traces_a_prompt_on_smollm2(smollm2):
    at = _app().run()
    at.sidebar.radio(key="model_mode").set_value("preset").run()
    at.sidebar.button(key="load_model").click().run()
    at.sidebar.radio(key="trace_mode").set_value("run a prompt").run()
    at.text_area(key="prompt").set_value("The cat sat on the mat. The dog")
    at.get("form_submit_button")[0].click().run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    assert at.radio(key="head").options == [str(h) for h in range(9)]
    assert len(at.selectbox(key="layer").options) == 30
    assert "layer 0 head 0" in _titles(at)
