"""The sinks report: sink rates, per-layer profile, hidden sinks, massive activations and the zero-vs-mean
perplexity test on one model, as a JSON object and an HTML page (``reports/<model>/sinks.{json,html}``),
plus the census section ``sinks``."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .census import CensusContext, CensusSection, register_section
from .massive import (OUTLIER_SHARE, intervention_perplexity, layer_summary, massive_activations, massive_dims,
                      onset_layer, outlier_features)
from .models import LoadedModel
from .sinks import SINK_EPS, analyze_sinks, head_table, layer_profile, received_attention, sink_onset_layer, sink_rate
from .text import token_windows, window_start
from .viz import layer_head_heatmap, write_html


def profile_figure(profile: pd.DataFrame, massive_layers: pd.DataFrame | None = None) -> go.Figure:
    """Per-layer sink profile (first-token sink rate, heads with hidden sinks) beside the share of samples
    with massive activations entering each layer."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=profile.layer, y=profile.first_token_sink_rate, name="first-token sink rate (% heads, s_0>0.3)"))
    fig.add_trace(go.Scatter(x=profile.layer, y=profile.heads_with_hidden_sinks, name="heads with hidden sinks (%)"))
    if massive_layers is not None:
        fig.add_trace(go.Bar(x=massive_layers.layer, y=massive_layers.max_abs_value, name="largest massive |activation|",
                             opacity=0.3), secondary_y=True)
        fig.update_yaxes(type="log", title_text="|activation| (resid_pre)", secondary_y=True)
    fig.update_layout(title="Sink onset across layers vs massive activations", xaxis_title="layer")
    fig.update_yaxes(title_text="% of heads", secondary_y=False)
    return fig


def massive_records(df: pd.DataFrame) -> list[dict]:
    """Massive activations grouped by (layer, dim, token): mean value, mean ratio to median, count of hits
    (entries labelled ``massive`` only; outlier features are reported apart)."""
    if "kind" in df.columns:
        df = df[df["kind"] == "massive"]
    if df.empty:
        return []
    g = df.groupby(["layer", "dim", "token"]).agg(value=("value", "mean"), ratio_to_median=("ratio_to_median", "mean"),
                                                  count=("sample", "size"), positions=("pos", lambda p: sorted(set(map(int, p)))[:8]))
    return g.reset_index().sort_values(["layer", "count"], ascending=[True, False]).to_dict(orient="records")


def sinks_report(lm: LoadedModel, n_short: int = 32, short_len: int = 64, n_long: int = 8, long_len: int = 512,
                 n_ppl: int = 8, ppl_len: int = 256, out_dir: str | Path | None = "reports", progress: bool = True) -> dict:
    """Run the sink and massive-activation analyses on real text and write ``sinks.json`` / ``sinks.html``.

    Text: ``train`` prose windows for detection (``n_short`` x ``short_len`` and ``n_long`` x ``long_len``
    tokens), ``heldout`` prose windows (``n_ppl`` x ``ppl_len``) for the perplexity test.

    Every window starts with the start-of-text token when the tokenizer adds one (``window_start`` says which).

    Returns: the JSON object (keys ``window_start``, ``sink_rate_first_token`` (percent, ``short_len`` tokens),
    ``sink_rate_first_token_by_length``, ``profile``, ``massive_activations`` (objects with ``layer``,
    ``dim``, ``token``, ``value``, ``ratio_to_median``, ``count``), ``massive_dims``, ``massive_onset_layer``,
    ``massive_rule``, ``outlier_features`` (rows of :func:`workbench.massive.outlier_features`), ``outlier_feature_dims``,
    ``massive_by_layer``, ``sink_onset_layer`` (first layer where over half the heads have s_0 > 0.3),
    ``perplexity`` (rows baseline / zero / mean), ``sink_tokens``, ``hidden_sink_heads``).
    """
    an = analyze_sinks(lm, {short_len: n_short, long_len: n_long}, split="train", progress=progress)
    mass_samples = token_windows(lm.tokenizer, long_len, max(1, n_long // 2), split="train")
    mdf_short = massive_activations(lm, token_windows(lm.tokenizer, short_len, n_short // 2, split="train"),
                                    progress=progress)
    mdf = massive_activations(lm, mass_samples, progress=progress, batch_size=1)
    dims = massive_dims(mdf)
    onset = onset_layer(mdf, dims)
    mlayers = layer_summary(mdf, lm.spec.n_layers)
    heldout = token_windows(lm.tokenizer, ppl_len, n_ppl, split="heldout")
    ppl = intervention_perplexity(lm, mdf, heldout, progress=progress) if dims else pd.DataFrame()
    hidden_heads = an.heads.sort_values("hidden_sink_share", ascending=False).head(20)
    result = {
        "model": lm.spec.name,
        "text": "pydoc_data.topics prose (train split for detection, heldout for perplexity)",
        "window_start": window_start(lm.tokenizer)["rule"],
        "sink_eps": SINK_EPS,
        "sink_rate_first_token": an.sink_rate_first_token[short_len],
        "sink_rate_first_token_by_length": {str(k): v for k, v in an.sink_rate_first_token.items()},
        "samples": {"short": [n_short, short_len], "long": [n_long, long_len], "perplexity": [n_ppl, ppl_len]},
        "profile": an.profile.to_dict(orient="records"),
        "massive_activations": massive_records(mdf),
        "massive_activations_short": massive_records(mdf_short),
        "massive_dims": dims,
        "massive_onset_layer": onset,
        "massive_rule": (f"a (layer, dim) whose entries pass |x| > 100 and |x| > 1000 x median on at least "
                         f"{OUTLIER_SHARE:.0%} of the tokens is an outlier feature (large on most tokens, Dettmers et al. "
                         "2022), otherwise its entries are massive activations (Sun et al. 2024)"),
        "outlier_features": outlier_features(mdf).to_dict(orient="records"),
        "outlier_feature_dims": sorted({int(d) for d in outlier_features(mdf)["dim"]}),
        "sink_onset_layer": sink_onset_layer(an.profile),
        "massive_by_layer": mlayers.to_dict(orient="records"),
        "perplexity": ppl.to_dict(orient="records"),
        "sink_tokens": an.tokens.head(30).to_dict(orient="records"),
        "hidden_sink_heads": hidden_heads.to_dict(orient="records"),
    }
    if out_dir is not None:
        d = Path(out_dir) / lm.spec.name.replace("/", "--")
        d.mkdir(parents=True, exist_ok=True)
        (d / "sinks.json").write_text(json.dumps(result, indent=1, default=str))
        an.heads.to_csv(d / "sinks_heads.csv", index=False)
        figs = [("Per-layer sink profile", profile_figure(an.profile, mlayers)),
                ("First-token mass s_0 per head", layer_head_heatmap(an.heads, "first_token_mass")),
                ("Share of samples with hidden sinks (ACT sink set non-empty)", layer_head_heatmap(an.heads, "hidden_sink_share")),
                ("Hidden-sink tokens", go.Figure(go.Bar(x=an.tokens.head(25).token.map(repr) + " (" + an.tokens.head(25).kind + ")",
                                                        y=an.tokens.head(25).head_hits)).update_layout(
                    xaxis_title="token", yaxis_title="(sample, position, head) hits"))]
        rates = ", ".join(f"{v:.1f}% at {k} tokens" for k, v in an.sink_rate_first_token.items())
        ptab = "".join(f"<tr><td>{r['intervention']}</td><td>{r['perplexity']:.3f}</td><td>{r['entries_edited']}</td></tr>"
                       for r in result["perplexity"])
        outl = ", ".join(f"dim {r['dim']} at layer {r['layer']} ({r['token_share']:.0%} of tokens)"
                         for r in result["outlier_features"]) or "none"
        intro = (f"Windows of pydoc_data.topics prose; {result['window_start']}. "
                 f"Sink_1^0.3 (first-token sink rate): {rates}. Massive dims {dims}, appearing entering layer {onset}; "
                 f"outlier features (rule: {result['massive_rule']}): {outl}; "
                 f"first layer where over half the heads are first-token sinks: {result['sink_onset_layer']}. "
                 f"Perplexity on held-out prose ({n_ppl} x {ppl_len} tokens) with the massive entries entering layer {onset} "
                 f"kept / zeroed / set to their mean:</p><table border=1><tr><th>intervention</th><th>perplexity</th>"
                 f"<th>entries edited</th></tr>{ptab}</table><p>")
        write_html(figs, d / "sinks.html", f"Attention sinks and massive activations: {lm.spec.name}", intro)
        result["files"] = {"json": str(d / "sinks.json"), "html": str(d / "sinks.html"), "heads_csv": str(d / "sinks_heads.csv")}
    return result


def sinks_section(ctx: CensusContext) -> CensusSection:
    """Census section ``sinks``: per-head first-token sink share and ACT hidden sinks on the census windows."""
    rec = received_attention(ctx.lm, ctx.samples, progress=ctx.progress, desc="census: sinks")
    heads = head_table(rec).drop(columns=["first_token_mass"])  # the attention section has it already
    prof = layer_profile(rec)
    summary = {"sink_rate_first_token": sink_rate(rec), "sink_eps": SINK_EPS,
               "heads_with_hidden_sinks_in_half_the_samples": int((heads.hidden_sink_share >= 0.5).sum()),
               "sink_onset_layer": sink_onset_layer(prof)}
    figs = [("per-layer sink profile", profile_figure(prof)),
            ("hidden_sink_share per head", layer_head_heatmap(heads, "hidden_sink_share"))]
    return CensusSection("sinks", heads, summary, figs)


register_section("sinks", sinks_section)
