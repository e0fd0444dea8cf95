"""Streamlit dashboard of the attention-head workbench.

Start it with ``workbench dashboard`` (or ``streamlit run dashboards/app.py -- [--trace DIR]
[--census DIR] [--model NAME]``). The sidebar chooses a model (a preset, the text LM first and VLMs
labelled, or a local checkpoint path; loaded once per server with ``st.cache_resource``), a trace
(a saved trace directory, an upload, or a prompt run through the loaded model) and a census
directory (``reports/<model>/``). Inputs that start a model call sit in forms, so the page reruns
when the form is submitted, not at every keystroke; traces, census tables and intervention runs are
cached by their inputs. Tabs:

* **Attention**: pick a layer and a head; the head's attention map over the trace's query window
  (readable tokens on the axes, position and id on hover; max-pooled for long contexts, said in the
  title), its mean received attention per key (sinks), and a layer x head grid of any per-head
  score of the trace.
* **Census**: the per-head table, a layer x head heatmap of any column, the sink chart, the summary,
  and charts of further tables in the directory (needle-in-a-haystack grid, massive activations).
* **Intervention**: choose a registered intervention (:mod:`workbench.interventions.registry`), the
  heads and its parameters; compare generated text, next-token distributions, what changed, and the
  compared head's attention before and after (for an intervened head, the attention it actually
  used; :mod:`workbench.report.comparison`). The compared head defaults to the first intervened head.

Every error is shown with ``st.error`` in the page and replaces the previous result; uploads are
size-limited and parsed as safetensors / JSON / Parquet / CSV only. Layer 0 is at the top of every
heatmap; heads are written ``layer.head`` as the CLI flags take them.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import streamlit as st

# ``streamlit run`` puts only this file's folder on sys.path: make the checkout's packages importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboards import sources as S  # noqa: E402
from dashboards import views as V  # noqa: E402
from workbench.report import viz  # noqa: E402

st.set_page_config(page_title="Attention-head workbench", layout="wide")

DEFAULT_PROMPT = "The capital of France is Paris. The capital of Italy is"
PLOT_CONFIG = {"displaylogo": False}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    p.add_argument("--trace", default="")
    p.add_argument("--census", default="")
    p.add_argument("--model", default="")
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


ARGS = _args()


@contextlib.contextmanager
def shown_errors(what: str, clear: str | None = None):
    """Show any error inside as an ``st.error`` line instead of crashing the page; drop the stale
    result ``st.session_state[clear]`` so the error replaces it."""
    try:
        yield
    except Exception as err:  # the page must survive any bad input; Streamlit's control flow is BaseException
        if clear:
            st.session_state.pop(clear, None)
        st.error(f"{what}: {err}" if str(err) else f"{what}: {type(err).__name__}")


@st.cache_resource(show_spinner="loading the model (once per server)...")
def get_model(name: str, device: str = "auto", dtype: str = "auto"):
    from workbench import load_model

    return load_model(name, device=device, dtype=dtype)


@st.cache_resource(show_spinner=False, max_entries=4)
def get_trace(path: str, mtime: float):
    return S.open_trace_dir(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def prompt_trace(model_name: str, prompt: str, chat: bool, window: int):
    """A traced prompt (all statistics, maps of the last ``window`` queries), cached by its inputs."""
    from workbench.core.tracer import ALL_STATS, Tracer

    lm = get_model(model_name)
    ids = lm.encode(prompt, chat=chat)
    n = ids.shape[1]
    return Tracer(lm, stats=ALL_STATS, pattern_window=(max(0, n - int(window)), n)).run(ids)


@st.cache_data(show_spinner=False, max_entries=8)
def get_census(path: str, mtime: float):
    c = S.open_census_dir(path)
    return c, V.census_extras(path, c.tables, c.heads, c.summary)


@st.cache_resource(show_spinner=False)
def intervention_results() -> dict:
    """Per-server cache of intervention comparisons by their inputs (a run takes seconds)."""
    return {}


def _mtime(path: str, name: str) -> float:
    f = Path(path).expanduser() / name
    return f.stat().st_mtime if f.exists() else 0.0


# --- sidebar -----------------------------------------------------------------------------------

st.sidebar.title("Attention-head workbench")
from workbench.core.devices import DEVICE_CHOICES, DTYPE_CHOICES  # noqa: E402  (after set_page_config)
from workbench.core.presets import PRESETS  # noqa: E402
from workbench.io.runs import model_dir  # noqa: E402

options = V.preset_options(PRESETS)
labels = dict(options)
LOCAL = "local checkpoint path"
choices = [n for n, _ in options] + [LOCAL]
with st.sidebar.form("model_form"):
    st.header("Model")
    default = ARGS.model if ARGS.model in labels else (LOCAL if ARGS.model else choices[0])
    choice = st.selectbox("Model", choices, index=choices.index(default), key="model_choice",
                          format_func=lambda n: labels.get(n, n),
                          help="presets: the text LM first; VLM presets take an image and text")
    model_path = st.text_input("Checkpoint directory (for a local path)", value="" if ARGS.model in labels else ARGS.model,
                               key="model_path")
    dev_col, dtype_col = st.columns(2)
    model_device = dev_col.selectbox("Device", DEVICE_CHOICES, key="model_device")
    model_dtype = dtype_col.selectbox("Dtype", DTYPE_CHOICES, key="model_dtype")
    if st.form_submit_button("Load model"):
        st.session_state["model_name"] = model_path.strip() if choice == LOCAL else choice
        st.session_state["model_place"] = (model_device, model_dtype)
lm = None
if st.session_state.get("model_name"):
    with shown_errors("cannot load the model"):
        lm = get_model(st.session_state["model_name"], *st.session_state.get("model_place", ("auto", "auto")))
        kind = "VLM" if V.is_vlm_preset(lm.spec.name) else "text LM"
        st.sidebar.success(f"{lm.spec.name} ({kind}): {lm.spec.n_layers} layers x {lm.spec.n_heads} heads")

st.sidebar.header("Trace")
trace_modes = ["saved trace directory", "upload", "run a prompt"]
trace_mode = st.sidebar.radio("Trace source", trace_modes, key="trace_mode",
                              index=0 if ARGS.trace or not st.session_state.get("model_name") else 2)
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
default_census = ARGS.census or next((str(d) for d in (model_dir(None, "smollm2-135m"), model_dir("reports", "smollm2-135m"))
                                      if (d / "heads.parquet").exists()), "")
cpath = st.sidebar.text_input("Census directory", value=default_census, key="census_path",
                              help="reports/<model>/ with heads.parquet and summary.json")
census_upload = st.sidebar.file_uploader("or upload a per-head table", key="census_upload",
                                         type=["parquet", "csv", "json"], max_upload_size=S.MAX_UPLOAD_MB)
census, extras = None, []
if census_upload is not None:
    with shown_errors("cannot read the uploaded table"):
        _, table, summary = S.parse_uploads({census_upload.name: census_upload.getvalue()})
        census = S.Census(Path(census_upload.name), table if table is not None else S.pd.DataFrame(), summary)
elif cpath.strip():
    with shown_errors("cannot open the census"):
        census, extras = get_census(cpath.strip(), _mtime(cpath.strip(), "heads.parquet"))

tab_attn, tab_census, tab_iv = st.tabs(["Attention", "Census", "Intervention"])

# --- attention ---------------------------------------------------------------------------------

@st.fragment
def attention_tab(trace, lm):
    """The Attention tab (a fragment: choosing a layer or head reruns only this tab)."""
    if trace_mode == "run a prompt":
        trace = st.session_state.get("prompt_trace")
        if lm is None:
            st.info("Load a model in the sidebar to trace a prompt.")
        else:
            with st.form("prompt_form"):
                prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="prompt")
                c1, c2 = st.columns(2)
                chat = c1.checkbox("wrap in the chat template", key="chat")
                window = c2.number_input("attention-map window (last queries)", 1, 4096, 128, key="window")
                go_run = st.form_submit_button("Trace")
            if go_run:
                with shown_errors("tracing failed", clear="prompt_trace"), st.spinner("tracing..."):
                    t0 = time.perf_counter()
                    st.session_state.pop("prompt_trace", None)
                    trace = None
                    trace = prompt_trace(st.session_state["model_name"], prompt, bool(chat), int(window))
                    st.session_state["prompt_trace"] = trace
                    st.session_state["trace_seconds"] = time.perf_counter() - t0
    if trace is None:
        st.info("Open a saved trace directory, upload a trace, or load a model and trace a prompt.")
    else:
        info = S.trace_summary(trace)
        took = st.session_state.get("trace_seconds") if trace_mode == "run a prompt" else None
        st.caption(f"model {info['model']} · {info['tokens']} tokens · layers {len(info['layers'])} · "
                   f"heads {len(info['heads'])}" + (f" · attention maps for queries {info['pattern_window'][0]}.."
                                                    f"{info['pattern_window'][1] - 1}" if "pattern_window" in info else "")
                   + (f" · traced in {took:.1f} s" if took else ""))
        c1, c2 = st.columns([1, 3])
        layer = c1.selectbox("Layer", trace.layers, key="layer")
        head = c2.radio("Head", trace.heads, key="head", horizontal=True)
        tokens = viz.trace_tokens(trace)
        if "pattern" in trace:
            nk = int(trace["pattern"].shape[-1])
            kr = st.slider("Keys shown", 0, nk, (0, nk), key="key_range",
                           help="window the map to these keys; larger maps are max-pooled for display")
            with shown_errors("cannot draw the attention map"):
                fig = viz.trace_attention_map(trace, layer, head, key_range=kr if kr != (0, nk) else None,
                                              tokens=tokens)
                fig.update_layout(height=560)
                st.plotly_chart(fig, key="attn_map", config=PLOT_CONFIG)
                st.caption("A[i, j]: probability that query i attends to key j (rows sum to 1); "
                           "axes show tokens (· = space, ⏎ = newline), hover adds position and id.")
        else:
            st.info("This trace has no attention maps (trace with a pattern window to see them).")
        if "received" in trace:
            with shown_errors("cannot draw received attention"):
                r = trace["received"][trace.layer_index(layer), 0, trace.head_index(head)]
                st.plotly_chart(viz.received_attention_chart(
                    r, tokens, title=f"head {viz.format_head(layer, head)}: mean received attention s_k per key"),
                    key="received", config=PLOT_CONFIG)
        table = S.trace_head_table(trace)
        scores = [c for c in table.columns if c not in ("layer", "head", "max_received_key")]
        if scores:
            score = st.selectbox("Per-head score of this trace", scores, key="trace_score")
            st.plotly_chart(viz.layer_head_heatmap(table, score, title=f"{score} per head (this trace)"),
                            key="trace_grid", config=PLOT_CONFIG)
            if score == "max_received":
                st.caption("max_received: the largest s_k over keys k >= 1 seen by at least max(8, T/4) queries "
                           "(the sinks analyzer's rule: a late key's mean over a few queries is noise).")

# --- census ------------------------------------------------------------------------------------

@st.fragment
def census_tab(census, extras):
    """The Census tab (a fragment: its widgets rerun only this tab)."""
    if census is None:
        st.info("Enter a census directory (reports/<model>/) or upload a per-head table in the sidebar.")
    else:
        st.subheader(f"Census: {census.path}")
        s = census.summary or {}
        if s.get("n_samples"):
            st.caption(f"per-head scores over {s['n_samples']} windows x {s.get('seq_len', '?')} tokens of "
                       f"{s.get('text', 'text')}; heads are written layer.head")
        from workbench.io.provenance import describe

        st.caption("Provenance: " + describe(census.provenance))
        cols = census.score_columns()
        if cols:
            col = st.selectbox("Score", cols, key="census_score")
            with shown_errors("cannot draw the census figure"):
                st.plotly_chart(viz.layer_head_heatmap(census.heads, col), key="census_grid", config=PLOT_CONFIG)
                if col in ("first_token_mass",) or "sink" in col:
                    thr = st.number_input("sink threshold eps", 0.0, 1.0, 0.3, 0.05, key="sink_eps")
                    st.plotly_chart(viz.sink_chart(census.heads, col, thr), key="sink_chart", config=PLOT_CONFIG)
        st.dataframe(census.heads, key="census_table", height=300)
        if census.summary:
            with st.expander("summary.json"):
                st.json(census.summary)
        for ex in extras:
            st.markdown(f"**{ex.name}** ({ex.kind})")
            st.caption(ex.caption)
            with shown_errors(f"cannot draw {ex.name}"):
                if ex.kind == "needle":
                    st.plotly_chart(viz.needle_heatmap(ex.df, title=ex.name), key=f"needle_{ex.name}",
                                    config=PLOT_CONFIG)
                elif ex.kind == "massive":
                    st.plotly_chart(viz.massive_activation_chart(ex.df, title=ex.name), key=f"massive_{ex.name}",
                                    config=PLOT_CONFIG)
                else:
                    st.dataframe(ex.df, height=200, key=f"table_{ex.name}")

# --- intervention ------------------------------------------------------------------------------

@st.fragment
def intervention_tab(lm):
    """The Intervention tab (a fragment: its widgets rerun only this tab)."""
    from workbench.interventions.registry import available_interventions, build_intervention

    # every registered intervention that runs on a text prompt (VHR / VAR need an image input: `workbench hallucination`)
    specs = {k: v for k, v in available_interventions().items() if v.scope != "vlm-input"}
    if lm is None:
        st.info("Load a model in the sidebar to run an intervention.")
    else:
        name = st.selectbox("Intervention", sorted(specs), key="iv_name")
        spec = specs[name]
        st.caption(spec.description)
        with st.form(f"iv_form_{name}"):
            heads_text = st.text_input("Heads to intervene on (layer.head, comma-separated)", "10.0, 7.6", key="iv_heads")
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
            iv_prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="iv_prompt")
            c1, c2, c3 = st.columns(3)
            max_new = c1.number_input("new tokens", 0, 200, 10, key="iv_new")
            compared = c2.text_input("compare the attention of head (layer.head)", "",
                                     key="iv_compare", help="blank: the first intervened head")
            vw = c3.number_input("last queries", 1, 2048, 64, key="iv_window")
            chat = st.checkbox("wrap in the chat template", key="iv_chat")
            go_iv = st.form_submit_button("Run intervention")
        if go_iv:
            with shown_errors("intervention failed", clear="iv_result"):
                heads = S.parse_heads(heads_text)
                ch = S.parse_heads(compared)[0] if compared.strip() else (heads[0] if heads else None)
                if ch is None:
                    raise ValueError("choose at least one head to intervene on, e.g. 10.0")
                key = (st.session_state["model_name"], name, tuple(heads), tuple(sorted(params.items())), iv_prompt,
                       bool(chat), int(max_new), ch, int(vw))
                cache = intervention_results()
                t0 = time.perf_counter()
                if key not in cache:
                    from workbench.report.comparison import compare_intervention

                    bar = st.progress(0.0, text="preparing the intervention...")
                    iv = build_intervention(name, lm, heads, **params)
                    ids = lm.encode(iv_prompt, chat=chat)
                    cache[key] = compare_intervention(lm, iv, ids, int(max_new), ch[0], ch[1], int(vw),
                                                      progress=lambda f, m: bar.progress(f, text=m))
                    bar.empty()
                st.session_state["iv_result"] = cache[key]
                st.session_state["iv_label"] = f"{name} on {', '.join(viz.format_head(*h) for h in heads)} {params}"
                st.session_state["iv_seconds"] = time.perf_counter() - t0
        res = st.session_state.get("iv_result")
        if res is not None:
            st.markdown(f"**{st.session_state.get('iv_label', '')}** · KL(before‖after) of the next token = "
                        f"{res.kl:.4f} nats · ran in {st.session_state.get('iv_seconds', 0):.1f} s")
            if res.pattern_note:
                st.info(res.pattern_note)
            a, b = st.columns(2)
            a.markdown("**before**")
            a.code(res.text_before or "(no tokens)", language=None)
            b.markdown("**after**")
            b.code(res.text_after or "(no tokens)", language=None)
            st.dataframe(res.changes(lm.tokenizer).astype({"before": str, "after": str}), key="iv_changes",
                         hide_index=True)
            for i, (title, fig) in enumerate(res.figures(lm.tokenizer)):
                if title.startswith("head "):
                    fig.update_layout(height=520)
                st.plotly_chart(fig, key=f"iv_fig_{i}", config=PLOT_CONFIG)
            st.caption("after, for an intervened head: the attention it used (ACT: calibrated rows; uniform: "
                       "1/|visible keys|); for a later head, its attention in the intervened run.")


with tab_attn:
    attention_tab(trace, lm)
with tab_census:
    census_tab(census, extras)
with tab_iv:
    intervention_tab(lm)
