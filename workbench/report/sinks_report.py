"""The sinks report: sink rates, per-layer profile, hidden sinks, massive activations and the zero-vs-mean
perplexity test on one model, as a JSON object and an HTML page (``reports/<model>/sinks.{json,html}``),
plus the census section ``sinks``."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .census import CensusContext, CensusSection
from ..analyzers.massive import (OUTLIER_SHARE, MassiveCollector, intervention_perplexity, layer_summary, massive_dims,
                                 onset_layer, outlier_features)
from ..core.models import LoadedModel
from ..analyzers.sinks import (SINK_EPS, ReceivedCollector, analyze_sinks, head_table, layer_profile, sink_onset_layer,
                               sink_rate)
from ..tasks.text import token_windows, window_start
from .viz import layer_head_heatmap, write_html


def profile_figure(profile: pd.DataFrame, massive_layers: pd.DataFrame | None = None) -> go.Figure:
    """Per-layer sink profile (first-token sink rate, heads with hidden sinks, % of heads) beside the largest
    massive activation entering each layer (right axis, log scale with ticks at powers of ten)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=profile.layer, y=profile.first_token_sink_rate, name="first-token sinks (s_0 > 0.3)",
                             hovertemplate="layer %{x}: %{y:.1f}% of heads<extra></extra>"))
    fig.add_trace(go.Scatter(x=profile.layer, y=profile.heads_with_hidden_sinks, name="heads with hidden sinks",
                             hovertemplate="layer %{x}: %{y:.1f}% of heads<extra></extra>"))
    if massive_layers is not None:
        fig.add_trace(go.Bar(x=massive_layers.layer, y=massive_layers.max_abs_value, name="largest |activation|",
                             opacity=0.3, hovertemplate="layer %{x}: max |h| = %{y:.3s}<extra></extra>"),
                      secondary_y=True)
        fig.update_yaxes(type="log", dtick=1, exponentformat="power", title_text="largest |activation| (resid_pre)",
                         secondary_y=True, showgrid=False)
    fig.update_layout(title="Sink onset across layers vs massive activations", xaxis_title="layer",
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(dtick=2)
    fig.update_yaxes(title_text="% of heads", range=[0, 100], secondary_y=False)
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
                 n_ppl: int = 8, ppl_len: int = 256, out_dir: str | Path | None = "runs", progress: bool = True) -> dict:
    """Run the sink and massive-activation analyses on real text and write ``sinks.json`` / ``sinks.html``.

    Text: ``train`` prose windows for detection (``n_short`` x ``short_len`` and ``n_long`` x ``long_len``
    tokens), ``heldout`` prose windows (``n_ppl`` x ``ppl_len``) for the perplexity test.

    Every window starts with the start-of-text token when the tokenizer adds one (``window_start`` says which).
    Each window is run once: the massive activations (``massive_activations_short`` on the first half of the
    short windows, ``massive_activations`` on the first half of the long ones) are found by residual hooks in
    the sink pass over the same windows (:func:`workbench.core.passes.run_windows`). The perplexity test
    runs the held-out windows three times, once per intervention (kept, zeroed, mean): three different
    models of the same text.

    Returns: the JSON object (keys ``window_start``, ``sink_rate_first_token`` (percent, ``short_len`` tokens),
    ``sink_rate_first_token_by_length``, ``profile``, ``massive_activations`` (objects with ``layer``,
    ``dim``, ``token``, ``value``, ``ratio_to_median``, ``count``), ``massive_dims``, ``massive_onset_layer``,
    ``massive_rule``, ``outlier_features`` (rows of :func:`workbench.analyzers.massive.outlier_features`), ``outlier_feature_dims``,
    ``massive_by_layer``, ``sink_onset_layer`` (first layer where over half the heads have s_0 > 0.3),
    ``perplexity`` (rows baseline / zero / mean), ``sink_tokens``, ``hidden_sink_heads``).
    """
    # one pass per window: the massive-activation finders ride along the sink pass over the first half of
    # the same train windows (short and long), instead of running those windows again
    short_col, long_col = MassiveCollector(lm, rows=n_short // 2), MassiveCollector(lm, rows=max(1, n_long // 2))
    riders: dict[int, list] = {}
    for n_tok, col in ((short_len, short_col), (long_len, long_col)):
        riders.setdefault(n_tok, []).append(col)
    an = analyze_sinks(lm, {short_len: n_short, long_len: n_long}, split="train", progress=progress, riders=riders)
    mdf_short, mdf = short_col.frame(), long_col.frame()
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
    from ..io.provenance import code_sha256, collect, write_csv

    result["provenance"] = collect(lm, {
        "command": "sinks", "model": lm.spec.name, "n_short": n_short, "short_len": short_len, "n_long": n_long,
        "long_len": long_len, "n_ppl": n_ppl, "ppl_len": ppl_len,
        "code_sha256": code_sha256(["workbench.report.sinks_report", "workbench.analyzers.sinks", "workbench.analyzers.massive",
                                    "workbench.analyzers.massive_tables", "workbench.analyzers.massive_edit",
                                    "workbench.core.stats", "workbench.core.attention", "workbench.core.passes",
                                    "workbench.tasks.text"])})
    if out_dir is not None:
        from ..io.runs import model_dir

        d = model_dir(out_dir, lm.spec.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "sinks.json").write_text(json.dumps(result, indent=1, default=str))
        write_csv(an.heads, d / "sinks_heads.csv", result["provenance"])
        write_sinks_html(result, an.heads, d / "sinks.html")
        result["files"] = {"json": str(d / "sinks.json"), "html": str(d / "sinks.html"), "heads_csv": str(d / "sinks_heads.csv")}
    return result


def write_sinks_html(result: dict, heads: pd.DataFrame, path: str | Path) -> None:
    """Write ``sinks.html`` from a :func:`sinks_report` result and its per-head table (``sinks_heads.csv``).

    Every figure has a definition-and-units line, heatmaps have their top-10 heads beside them, numbers
    are formatted (:func:`workbench.report.viz.format_number`: a perplexity of 7484689.5 reads 7.48e+06) and the
    footer gives the result's provenance (or says it was not recorded).
    """
    from .viz import format_head, format_number, table_html, top_heads, visible_whitespace

    profile = pd.DataFrame(result["profile"])
    mlayers = pd.DataFrame(result.get("massive_by_layer") or [])
    tokens = pd.DataFrame(result.get("sink_tokens") or [])
    eps = result.get("sink_eps", SINK_EPS)
    samples = result.get("samples", {})
    short, long_ = samples.get("short", ["?", "?"]), samples.get("long", ["?", "?"])
    figs = [("Per-layer sink profile", profile_figure(profile, mlayers if len(mlayers) else None),
             f"Left axis: % of the layer's heads whose first token receives mean attention s_0 > {eps} (first-token "
             "sinks), and % with a non-empty ACT sink set (hidden sinks: keys k >= 1 with s_k > 0.1 seen by at least "
             "max(8, T/4) queries). Right axis (log): the largest |activation| of the residual stream entering "
             "the layer (dimensionless units of the hidden state)."),
            ("First-token mass s_0 per head", layer_head_heatmap(heads, "first_token_mass", "s_0 per head"),
             "s_0 = (1/T) sum_i A[i, 0]: mean attention the first token receives, a probability in [0, 1], averaged "
             f"over the detection samples ({short[0]} x {short[1]} and {long_[0]} x {long_[1]} tokens); layer 0 at the top.",
             table_html(top_heads(heads, "first_token_mass"), 3)),
            ("Hidden sinks: share of samples with a non-empty ACT sink set",
             layer_head_heatmap(heads, "hidden_sink_share", "hidden_sink_share per head"),
             "Fraction of samples (0-1) in which the head has at least one hidden sink (key k >= 1 with s_k > 0.1, "
             "ACT's rule with the minimum-queries guard); layer 0 at the top.",
             table_html(top_heads(heads, "hidden_sink_share"), 3))]
    if len(tokens):
        t = tokens.head(25)
        labels = [f"{visible_whitespace(a)} ({k})" for a, k in zip(t.token, t.kind)]
        bar = go.Figure(go.Bar(x=labels, y=t.head_hits, hovertemplate="%{x}: %{y} hits<extra></extra>"))
        bar.update_layout(title="Tokens that hold hidden sinks", xaxis_title="token (kind)",
                          yaxis_title="(sample, position, head) hits", xaxis_tickangle=-45)
        figs.append(("Hidden-sink tokens", bar,
                     "Number of (sample, position, head) triples in which the token is a sink of the head; kind "
                     "'first': at position 0, 'hidden': a later position (ACT's hidden sinks); · marks a space."))
    rates = ", ".join(f"{format_number(v, 3)}% at {k} tokens" for k, v in result["sink_rate_first_token_by_length"].items())
    rows = "".join(f"<tr><td>{r['intervention']}</td><td>{format_number(r['perplexity'], 4)}</td>"
                   f"<td>{format_number(r.get('nll', float('nan')), 4)}</td><td>{r['entries_edited']}</td></tr>"
                   for r in result.get("perplexity", []))
    ppl = result.get("samples", {}).get("perplexity", ["?", "?"])
    onset = result.get("massive_onset_layer")
    hidden = pd.DataFrame(result.get("hidden_sink_heads") or [])
    hidden_list = ", ".join(format_head(a, b) for a, b in zip(hidden.get("layer", []), hidden.get("head", [])))
    intro = (f"Model <b>{result['model']}</b>; text: {result.get('text', '')}. First-token sink rate "
             f"(Gu et al.'s Sink<sub>1</sub><sup>{eps}</sup>, % of heads with s_0 &gt; {eps}): {rates}. Massive "
             f"activation dimensions {result.get('massive_dims')}, appearing entering layer {onset}; first layer where "
             f"over half the heads are first-token sinks: {result.get('sink_onset_layer')}. Heads with the most "
             f"hidden sinks (layer.head): {hidden_list or 'none'}.</p>"
             f"<h2>Perplexity when the massive activations are removed</h2><p>Held-out prose ({ppl[0]} x {ppl[1]} "
             f"tokens); the massive entries entering layer {onset} kept (baseline), set to zero, or set to their mean. "
             "Perplexity = exp(mean negative log-likelihood per token, nats).</p><table><tr><th>intervention</th>"
             f"<th>perplexity</th><th>NLL (nats/token)</th><th>entries edited</th></tr>{rows}</table><p>")
    write_html(figs, path, f"Attention sinks and massive activations: {result['model']}", intro,
               provenance=result.get("provenance"))


def sinks_section(ctx: CensusContext) -> CensusSection:
    """Census section ``sinks``: per-head first-token sink share and ACT hidden sinks on the census windows."""
    rec = ctx.consumers["sinks"].tensor()  # recorded in the census's one pass over the windows
    heads = head_table(rec).drop(columns=["first_token_mass"])  # the attention section has it already
    prof = layer_profile(rec)
    summary = {"sink_rate_first_token": sink_rate(rec), "sink_eps": SINK_EPS,
               "heads_with_hidden_sinks_in_half_the_samples": int((heads.hidden_sink_share >= 0.5).sum()),
               "sink_onset_layer": sink_onset_layer(prof)}
    figs = [("per-layer sink profile", profile_figure(prof)),
            ("hidden_sink_share per head", layer_head_heatmap(heads, "hidden_sink_share"))]
    return CensusSection("sinks", heads, summary, figs)


sinks_section.window_consumer = lambda ctx: ReceivedCollector()  # s_k of every window, from the census pass
