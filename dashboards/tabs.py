"""The dashboard's three tabs, each a Streamlit fragment (its widgets rerun only that tab): the attention of a
trace's heads, a census folder's tables and figures, and an intervention compared before and after."""
from __future__ import annotations

import time

import streamlit as st

from dashboards import sources as S
from dashboards.state import DEFAULT_PROMPT, PLOT_CONFIG, intervention_results, prompt_trace, shown_errors
from workbench.report import viz


@st.fragment
def attention_tab(trace, lm, trace_mode: str):
    """The Attention tab (a fragment: choosing a layer or head reruns only this tab); ``trace_mode`` is the
    sidebar's trace source (``"run a prompt"`` shows the prompt form)."""
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

# --- vision ------------------------------------------------------------------------------------

@st.fragment
def vision_tab(lm):
    """The Vision tab (a fragment): one image of the loaded VLM's kind (a held-out scene or an upload), a
    question, and the image's vision analysis (:mod:`dashboards.vision_view`)."""
    import hashlib

    from dashboards import vision_view as VV
    from dashboards.state import vision_picture, vision_result
    from workbench.analyzers import vision as A

    if lm is None:
        st.info(f"Load a VLM preset in the sidebar to analyse an image: {VV.VLM_HINT}.")
        return
    try:
        src = VV.image_source(lm)
    except VV.VisionTabError as err:
        st.info(str(err))
        return
    mode = st.radio("Image", ["held-out test scene", "upload an image"], key="vision_mode", horizontal=True)
    pic = up = None
    if mode == "held-out test scene":
        idx = st.number_input(f"Scene index (0..{VV.MAX_SCENE}): {src.description}", 0, VV.MAX_SCENE, 0,
                              key="vision_scene")
        with shown_errors("cannot make the scene"):
            key = f"scene:{int(idx)}"
            pic = vision_picture(src.kind, key, src)
    else:
        up = st.file_uploader(f"PNG or JPEG (at most {S.MAX_IMAGE_MB} MiB); resized to the tower's input",
                              type=["png", "jpg", "jpeg"], key="vision_upload", max_upload_size=S.MAX_IMAGE_MB)
        if up is not None:
            with shown_errors("cannot read the image", clear="vision_view"):
                data = up.getvalue()
                key = "upload:" + hashlib.sha256(data).hexdigest()
                pic = vision_picture(src.kind, key, src, (up.name, data))
    if pic is None:
        st.session_state.pop("vision_view", None)
        if mode != "held-out test scene" and up is None:
            st.info("Upload a PNG or JPEG image.")
        return
    c_img, c_form = st.columns([1, 2])
    c_img.image(pic.view, caption=pic.label, width=224)
    with c_form.form("vision_form"):
        question = st.text_input("Question", src.question, key="vision_question")
        c1, c2, c3 = st.columns(3)
        max_new = c1.number_input("new tokens", 1, 64, VV.MAX_NEW_TOKENS, key="vision_new")
        tau = c2.number_input("sink threshold tau (phi)", 0.0, 1000.0, float(A.TAU), 1.0, key="vision_tau")
        rho = c3.number_input("image-centric rho", 0.0, 1.0, float(A.RHO), 0.05, key="vision_rho")
        go_run = st.form_submit_button("Run")
    mkey = (st.session_state["model_name"], *st.session_state.get("model_place", ("auto", "auto")))
    if go_run:
        with shown_errors("vision analysis failed", clear="vision_view"), st.spinner("running the image..."):
            t0 = time.perf_counter()
            st.session_state.pop("vision_view", None)
            st.session_state["vision_view"] = vision_result(mkey, key, question, int(max_new), float(tau), float(rho),
                                                            lm, src, pic.pixels)
            st.session_state["vision_for"] = (mkey, key)
            st.session_state["vision_label"] = f"{pic.label} · {question.strip()!r}"
            st.session_state["vision_seconds"] = time.perf_counter() - t0
    res = st.session_state.get("vision_view")
    if res is None or st.session_state.get("vision_for") != (mkey, key):  # a result of another image or model
        return
    st.markdown(f"**{st.session_state.get('vision_label', '')}** · ran in "
                f"{st.session_state.get('vision_seconds', 0):.1f} s")
    st.markdown(f"**Answer** (greedy, {len(res.answer_ids)} tokens; generation stops after a newline)")
    st.code(res.answer.strip() or "(no tokens)", language=None)
    a, b = st.columns([3, 2])
    with a:
        st.plotly_chart(res.vhd_figure(), key="vision_vhd", config=PLOT_CONFIG)
        st.caption("VHD(l, h) = ||z_image - z_text||_2 (He et al. 2025): distance between the head's output at the "
                   "first generated token with the image and in the matched pass without the image tokens.")
    with b:
        st.markdown("**Top vision-aware heads** (VHD above their layer's median)")
        va = res.vision_aware
        st.dataframe(va.assign(head=[viz.format_head(l, h) for l, h in zip(va["layer"], va["head"])])
                     [["head", "vhd", "rank"]], key="vision_top", hide_index=True)
    a, b = st.columns([3, 2])
    with a:
        st.plotly_chart(res.image_attention_figure(), key="vision_attention", config=PLOT_CONFIG)
        st.caption("A_I: attention of the last prompt query on the image tokens (a probability).")
    with b:
        st.markdown(f"**Image-centric heads** (A_I >= 0.2, at least rho = {res.rho:g} of it on non-sink image tokens; "
                    "Kang et al. 2025)")
        ic = res.image_centric
        st.dataframe(ic.assign(head=[viz.format_head(l, h) for l, h in zip(ic["layer"], ic["head"])])
                     [["head", "image_attention", "nonsink_ratio"]], key="vision_centric", hide_index=True)
    st.plotly_chart(res.sink_figure(), key="vision_sinks", config=PLOT_CONFIG)
    st.caption(f"Visual sink tokens (Kang et al. 2025): phi = max over the sink dimensions {res.sink_dims} of "
               f"|x_d| / rms(x) on the residual stream entering a layer; a token is a sink at a layer when "
               f"phi >= tau = {res.tau:g}, and a visual sink (outlined) when that holds at >= "
               f"{VV.SINK_MIN_LAYERS} layers. The {res.side} x {res.side} image tokens in reading order.")
