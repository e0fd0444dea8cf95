"""Streamlit dashboard of the attention-head workbench.

Start it with ``workbench dashboard`` (or ``streamlit run dashboards/app.py -- [--trace DIR]
[--census DIR] [--model NAME]``). The sidebar chooses a model (a preset or a local checkpoint
path, loaded once per server with ``st.cache_resource``), a trace (a saved trace directory, an
upload, or a prompt run through the loaded model) and a census directory (``reports/<model>/``).
Tabs:

* **Attention**: pick a layer and a head; the head's attention map over the trace's query window
  (max-pooled for long contexts, said in the title), its mean received attention per key
  (sinks), and a layer x head grid of any per-head score of the trace.
* **Census**: the per-head table, a layer x head heatmap of any column, the sink chart,
  the summary, and charts of further tables in the directory (needle-in-a-haystack grids,
  massive activations).
* **Intervention**: choose a registered intervention (:mod:`workbench.interventions.registry`),
  the heads and its parameters; compare generated text, next-token distributions and one head's
  attention before and after, side by side.

Every error is shown with ``st.error`` in the page; uploads are size-limited and parsed as
safetensors / JSON / Parquet / CSV only.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import streamlit as st

# ``streamlit run`` puts only this file's folder on sys.path: make the checkout's packages importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboards import sources as S  # noqa: E402
from workbench import viz  # noqa: E402

st.set_page_config(page_title="Attention-head workbench", layout="wide")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    p.add_argument("--trace", default="")
    p.add_argument("--census", default="")
    p.add_argument("--model", default="")
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


ARGS = _args()


@contextlib.contextmanager
def shown_errors(what: str):
    """Show any error inside as an ``st.error`` line instead of crashing the page."""
    try:
        yield
    except Exception as err:  # the page must survive any bad input; Streamlit's control flow is BaseException
        st.error(f"{what}: {err}" if str(err) else f"{what}: {type(err).__name__}")


@st.cache_resource(show_spinner="loading the model (once per server)...")
def get_model(name: str):
    from workbench import load_model

    return load_model(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def get_trace(path: str, mtime: float):
    return S.open_trace_dir(path)


@st.cache_data(show_spinner=False, max_entries=8)
def get_census(path: str, mtime: float):
    return S.open_census_dir(path)


def _mtime(path: str, name: str) -> float:
    f = Path(path).expanduser() / name
    return f.stat().st_mtime if f.exists() else 0.0


# --- sidebar -----------------------------------------------------------------------------------

st.sidebar.title("Attention-head workbench")
st.sidebar.header("Model")
from workbench.models import PRESETS  # noqa: E402  (after set_page_config)

model_modes = ["none", "preset", "local path"]
mode = st.sidebar.radio("Model source", model_modes, key="model_mode",
                        index=1 if ARGS.model and ARGS.model in PRESETS else 2 if ARGS.model else 0)
model_name = ""
if mode == "preset":
    names = sorted(PRESETS)
    model_name = st.sidebar.selectbox("Preset", names, key="preset",
                                      index=names.index(ARGS.model) if ARGS.model in names else 0)
elif mode == "local path":
    model_name = st.sidebar.text_input("Checkpoint directory", value=ARGS.model, key="model_path")
if mode != "none" and st.sidebar.button("Load model", key="load_model"):
    st.session_state["model_name"] = model_name.strip()
lm = None
if st.session_state.get("model_name") and mode != "none":
    with shown_errors("cannot load the model"):
        lm = get_model(st.session_state["model_name"])
        st.sidebar.success(f"{lm.spec.name}: {lm.spec.n_layers} layers x {lm.spec.n_heads} heads")

st.sidebar.header("Trace")
trace_modes = ["saved trace directory", "upload", "run a prompt"]
trace_mode = st.sidebar.radio("Trace source", trace_modes, key="trace_mode")
trace = None
if trace_mode == "saved trace directory":
    tpath = st.sidebar.text_input("Trace directory", value=ARGS.trace, key="trace_path",
                                  help="a directory written by `workbench trace --out DIR`")
    if tpath.strip():
        with shown_errors("cannot open the trace"):
            trace = get_trace(tpath.strip(), _mtime(tpath.strip(), "arrays.safetensors"))
elif trace_mode == "upload":
    ups = st.sidebar.file_uploader("trace.json + arrays.safetensors", accept_multiple_files=True, key="trace_upload",
                                   type=["json", "safetensors"], max_upload_size=S.MAX_UPLOAD_MB)
    if ups:
        with shown_errors("cannot read the upload"):
            trace, _, _ = S.parse_uploads({u.name: u.getvalue() for u in ups})
else:
    trace = st.session_state.get("prompt_trace")

st.sidebar.header("Census")
# your own run folder first, else the committed reference results (shown with their provenance either way)
default_census = ARGS.census or next((d for d in ("runs/smollm2-135m", "reports/smollm2-135m")
                                      if (Path(d) / "heads.parquet").exists()), "")
cpath = st.sidebar.text_input("Census directory", value=default_census, key="census_path",
                              help="reports/<model>/ with heads.parquet and summary.json")
census_upload = st.sidebar.file_uploader("or upload a per-head table", key="census_upload",
                                         type=["parquet", "csv", "json"], max_upload_size=S.MAX_UPLOAD_MB)
census = None
if census_upload is not None:
    with shown_errors("cannot read the uploaded table"):
        _, table, summary = S.parse_uploads({census_upload.name: census_upload.getvalue()})
        census = S.Census(Path(census_upload.name), table if table is not None else S.pd.DataFrame(), summary)
elif cpath.strip():
    with shown_errors("cannot open the census"):
        census = get_census(cpath.strip(), _mtime(cpath.strip(), "heads.parquet"))

tab_attn, tab_census, tab_iv = st.tabs(["Attention", "Census", "Intervention"])

# --- attention ---------------------------------------------------------------------------------

with tab_attn:
    if trace_mode == "run a prompt":
        if lm is None:
            st.info("Load a model in the sidebar to trace a prompt.")
        else:
            with st.form("prompt_form"):
                prompt = st.text_area("Prompt", "The capital of France is Paris. The capital of Italy is", key="prompt")
                c1, c2 = st.columns(2)
                chat = c1.checkbox("wrap in the chat template", key="chat")
                window = c2.number_input("attention-map window (last queries)", 1, 4096, 128, key="window")
                go_run = st.form_submit_button("Trace")
            if go_run:
                with shown_errors("tracing failed"), st.spinner("tracing..."):
                    from workbench.tracer import ALL_STATS, Tracer

                    ids = lm.encode(prompt, chat=chat)
                    n = ids.shape[1]
                    tracer = Tracer(lm, stats=ALL_STATS, pattern_window=(max(0, n - int(window)), n))
                    st.session_state["prompt_trace"] = trace = tracer.run(ids)
    if trace is None:
        st.info("Open a saved trace directory, upload a trace, or load a model and trace a prompt.")
    else:
        info = S.trace_summary(trace)
        st.caption(f"model {info['model']} · {info['tokens']} tokens · layers {len(info['layers'])} · "
                   f"heads {len(info['heads'])}" + (f" · attention maps for queries {info['pattern_window'][0]}.."
                                                    f"{info['pattern_window'][1] - 1}" if "pattern_window" in info else ""))
        c1, c2 = st.columns([1, 3])
        layer = c1.selectbox("Layer", trace.layers, key="layer")
        head = c2.radio("Head", trace.heads, key="head", horizontal=True)
        tokens = (trace.meta.get("token_strings") or [None])[0]
        if "pattern" in trace:
            nk = int(trace["pattern"].shape[-1])
            kr = st.slider("Keys shown", 0, nk, (0, nk), key="key_range",
                           help="window the map to these keys; larger maps are max-pooled for display")
            with shown_errors("cannot draw the attention map"):
                fig = viz.trace_attention_map(trace, layer, head, key_range=kr if kr != (0, nk) else None)
                fig.update_layout(height=520)
                st.plotly_chart(fig, key="attn_map", config={"displaylogo": False})
        else:
            st.info("This trace has no attention maps (trace with a pattern window to see them).")
        if "received" in trace:
            with shown_errors("cannot draw received attention"):
                r = trace["received"][trace.layer_index(layer), 0, trace.head_index(head)]
                st.plotly_chart(viz.received_attention_chart(r, tokens, title=f"layer {layer} head {head}: mean "
                                                             "received attention per key (sinks)"), key="received")
        table = S.trace_head_table(trace)
        scores = [c for c in table.columns if c not in ("layer", "head")]
        if scores:
            score = st.selectbox("Per-head score of this trace", scores, key="trace_score")
            st.plotly_chart(viz.layer_head_heatmap(table, score, title=f"{score} per head (this trace)"),
                            key="trace_grid")

# --- census ------------------------------------------------------------------------------------

with tab_census:
    if census is None:
        st.info("Enter a census directory (reports/<model>/) or upload a per-head table in the sidebar.")
    else:
        st.subheader(f"Census: {census.path}")
        from workbench.provenance import describe

        st.caption("Provenance: " + describe(census.provenance))
        cols = census.score_columns()
        if cols:
            col = st.selectbox("Score", cols, key="census_score")
            with shown_errors("cannot draw the census figure"):
                st.plotly_chart(viz.layer_head_heatmap(census.heads, col), key="census_grid")
                if col in ("first_token_mass",) or "sink" in col:
                    thr = st.number_input("sink threshold eps", 0.0, 1.0, 0.3, 0.05, key="sink_eps")
                    st.plotly_chart(viz.sink_chart(census.heads, col, thr), key="sink_chart")
        st.dataframe(census.heads, key="census_table", height=300)
        if census.summary:
            with st.expander("summary.json"):
                st.json(census.summary)
        for name, df in census.tables.items():
            kind = S.table_kind(df)
            st.markdown(f"**{name}** ({kind}, {len(df)} rows)")
            with shown_errors(f"cannot draw {name}"):
                if kind == "needle":
                    st.plotly_chart(viz.needle_heatmap(df, title=name), key=f"needle_{name}")
                elif kind == "massive":
                    st.plotly_chart(viz.massive_activation_chart(df, title=name), key=f"massive_{name}")
                else:
                    st.dataframe(df, height=200, key=f"table_{name}")

# --- intervention ------------------------------------------------------------------------------

with tab_iv:
    from workbench.interventions.registry import available_interventions, build_intervention

    specs = available_interventions()
    if lm is None:
        st.info("Load a model in the sidebar to run an intervention.")
    else:
        name = st.selectbox("Intervention", sorted(specs), key="iv_name")
        spec = specs[name]
        st.caption(spec.description)
        heads_text = st.text_input("Heads to intervene on (layer.head, comma-separated)", "3.1, 7.4", key="iv_heads")
        params = {}
        pcols = st.columns(max(1, len(spec.params)))
        for col, p in zip(pcols, spec.params):
            k = f"iv_{name}_{p.name}"
            if p.kind == "choice":
                params[p.name] = col.selectbox(p.name, list(p.choices), index=list(p.choices).index(p.default),
                                               key=k, help=p.help)
            elif p.kind == "bool":
                params[p.name] = col.checkbox(p.name, p.default, key=k, help=p.help)
            elif p.kind == "int":
                params[p.name] = int(col.number_input(p.name, value=int(p.default), step=1, key=k, help=p.help,
                                                      min_value=None if p.low is None else int(p.low),
                                                      max_value=None if p.high is None else int(p.high)))
            else:
                params[p.name] = float(col.number_input(p.name, value=float(p.default), key=k, help=p.help,
                                                        min_value=p.low, max_value=p.high))
        iv_prompt = st.text_area("Prompt", "The capital of France is Paris. The capital of Italy is", key="iv_prompt")
        c1, c2, c3, c4 = st.columns(4)
        max_new = c1.number_input("new tokens", 0, 200, 20, key="iv_new")
        vl = c2.number_input("compare attention of layer", 0, lm.spec.n_layers - 1, min(8, lm.spec.n_layers - 1),
                             key="iv_layer")
        vh = c3.number_input("head", 0, lm.spec.n_heads - 1, 0, key="iv_head")
        vw = c4.number_input("last queries", 1, 2048, 64, key="iv_window")
        chat = st.checkbox("wrap in the chat template", key="iv_chat")
        if st.button("Run intervention", key="iv_run"):
            with shown_errors("intervention failed"), st.spinner("running without and with the intervention..."):
                from workbench.comparison import compare_intervention

                iv = build_intervention(name, lm, S.parse_heads(heads_text), **params)
                ids = lm.encode(iv_prompt, chat=chat)
                st.session_state["iv_result"] = compare_intervention(lm, iv, ids, int(max_new), int(vl), int(vh), int(vw))
                st.session_state["iv_label"] = f"{name} on {heads_text} {params}"
        res = st.session_state.get("iv_result")
        if res is not None:
            st.markdown(f"**{st.session_state.get('iv_label', '')}** · KL(before‖after) of the next token = {res.kl:.4f} nats")
            a, b = st.columns(2)
            a.markdown("**before**")
            a.code(res.text_before or "(no tokens)", language=None)
            b.markdown("**after**")
            b.code(res.text_after or "(no tokens)", language=None)
            for title, fig in res.figures(lm.tokenizer.convert_ids_to_tokens):
                st.plotly_chart(fig, key=f"iv_fig_{title}")
