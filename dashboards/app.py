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
* **Vision** (VLM presets with images here: ``effnet-smollm2-vqa``, ``digits-vlm``): a held-out test
  scene by index or an uploaded PNG / JPEG, a question; the greedy answer, VHD per head at the first
  generated token, the top vision-aware heads, attention on image tokens and image-centric heads,
  and the visual sink tokens on the image's token grid (:mod:`dashboards.vision_view`).

Every error is shown with ``st.error`` in the page and replaces the previous result; uploads are
size-limited and parsed as safetensors / JSON / Parquet / CSV only. Layer 0 is at the top of every
heatmap; heads are written ``layer.head`` as the CLI flags take them.

This script lays out the sidebar; the tabs are in :mod:`dashboards.tabs`, the caches and the in-page
errors in :mod:`dashboards.state`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

# ``streamlit run`` puts only this file's folder on sys.path: make the checkout's packages importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboards import sources as S  # noqa: E402
from dashboards import views as V  # noqa: E402

st.set_page_config(page_title="Attention-head workbench", layout="wide")

from dashboards.state import _mtime, get_census, get_model, get_trace, shown_errors  # noqa: E402  (after set_page_config)
from dashboards.tabs import attention_tab, census_tab, intervention_tab, vision_tab  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    p.add_argument("--trace", default="")
    p.add_argument("--census", default="")
    p.add_argument("--model", default="")
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


ARGS = _args()


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
                          help="presets: the text LM first; VLM presets take an image and text (Vision tab)")
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
        from workbench.core.vlm import is_vlm

        kind = "VLM: see the Vision tab" if is_vlm(lm.model) else "text LM"
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

tab_attn, tab_census, tab_iv, tab_vision = st.tabs(["Attention", "Census", "Intervention", "Vision"])


with tab_attn:
    attention_tab(trace, lm, trace_mode)
with tab_census:
    census_tab(census, extras)
with tab_iv:
    intervention_tab(lm)
with tab_vision:
    vision_tab(lm)
