"""The head census: per-head attention statistics over real text, as tables and a report page.

``run_census`` runs the model over windows of real English text (:mod:`workbench.tasks.text`) with the
kernel-backed :class:`~workbench.core.tracer.Tracer` and builds one row per (layer, head). The core
``attention`` section gives

* ``first_token_mass``: mean received attention of the first token, s_0 = (1/T) sum_i A[i,0]
  (Gu et al. 2024's sink statistic for k = 0), averaged over samples;
* ``entropy``: mean attention entropy over queries, in nats;
* ``mean_distance``: mean attention distance sum_j A[i,j] (i - j) over queries, in tokens.

Other analyzers add columns, summary entries and figures as further sections, listed in :data:`SECTIONS`
(in the order they run); every section receives the same :class:`CensusContext`.

**One pass per window.** A section that reads the census windows declares it with a ``window_consumer``
attribute: ``fn.window_consumer(ctx)`` returns a :class:`~workbench.core.passes.WindowConsumer` that names
the tracer statistics it needs and may bring hooks of its own. :func:`run_census` gathers them, runs every
window exactly once with one tracer for the union of their needs (:func:`workbench.core.passes.run_windows`),
and then calls each section, which reads its consumer from ``ctx.consumers[name]``. Inputs that are not
the census windows (the head-type section's repeated random tokens, the retrieval section's needle
haystacks, the vision section's images) are each run by their own section.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import torch

from ..core.models import LoadedModel
from ..core.registry import Registry
from ..tasks.text import token_windows, window_start
from .viz import layer_head_heatmap, write_html


@dataclass
class CensusContext:
    """What every census section gets: the model, the text windows (n_samples, seq_len) and options."""

    lm: LoadedModel
    samples: torch.Tensor
    progress: bool = True
    options: dict = field(default_factory=dict)
    out: Path | None = None  # the model's run folder (None: the census writes nothing)
    # section name -> its window consumer, fed by the census's one pass over ``samples`` (module docstring)
    consumers: dict = field(default_factory=dict)
    passes: int = 0  # forward passes of that pass


@dataclass
class CensusSection:
    """A section's contribution: per-head columns (with ``layer``, ``head``), summary and figures."""

    name: str
    heads: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)


class AttentionStats:
    """The ``attention`` section's window consumer: per-head sums over windows of s_0, mean entropy and mean
    distance (``needs`` received, entropy, distance)."""

    needs = ("received", "entropy", "distance")

    def __init__(self):
        self.first, self.ent, self.dist, self.n = 0.0, 0.0, 0.0, 0

    def hooks(self, ids, rows) -> None:
        return None

    def consume(self, tr, ids, rows) -> None:
        self.first = self.first + tr["received"][..., 0].sum(1)  # (L, B, H, N) -> (L, H)
        self.ent = self.ent + tr["entropy"].mean(-1).sum(1)
        self.dist = self.dist + tr["distance"].mean(-1).sum(1)
        self.n += ids.shape[0]


def attention_section(ctx: CensusContext) -> CensusSection:
    """First-token mass, entropy and mean distance of every head (see module docstring)."""
    spec = ctx.lm.spec
    st, n = ctx.consumers["attention"], len(ctx.samples)
    L, H = spec.n_layers, spec.n_heads
    df = pd.DataFrame({
        "layer": torch.arange(L).repeat_interleave(H).numpy(),
        "head": torch.arange(H).repeat(L).numpy(),
        "first_token_mass": (st.first / n).reshape(-1).numpy(),
        "entropy": (st.ent / n).reshape(-1).numpy(),
        "mean_distance": (st.dist / n).reshape(-1).numpy(),
    })
    summary = {
        "mean_first_token_mass": float(df.first_token_mass.mean()),
        "heads_first_token_mass_over_0.3": int((df.first_token_mass > 0.3).sum()),
        "mean_entropy_nats": float(df.entropy.mean()),
        "mean_distance_tokens": float(df.mean_distance.mean()),
    }
    figs = [(c, layer_head_heatmap(df, c, title=f"{c} per head")) for c in ("first_token_mass", "entropy", "mean_distance")]
    return CensusSection("attention", df, summary, figs)


attention_section.window_consumer = lambda ctx: AttentionStats()


# Every census section, in the order the census runs them; each ``fn(ctx: CensusContext) -> CensusSection``.
SECTIONS: Registry[Callable[[CensusContext], CensusSection]] = Registry("census section")
SECTIONS.register("attention", attention_section)
SECTIONS.register("sinks", lazy="workbench.report.sinks_report:sinks_section")
SECTIONS.register("retrieval", lazy="workbench.report.retrieval_section:retrieval_section")
SECTIONS.register("head_types", lazy="workbench.report.head_types_report:head_types_section")
SECTIONS.register("vision", lazy="workbench.report.vision_report:census_section")


# What each census column means, with its units: the line under its figure in census.html.
DEFINITIONS = {
    "first_token_mass": "s_0 = (1/T) sum_i A[i, 0]: mean attention on the first token, a probability in [0, 1]",
    "entropy": "mean over queries of -sum_j A[i, j] ln A[i, j], in nats (0 = one key, ln(i+1) = uniform)",
    "mean_distance": "mean over queries of sum_j A[i, j] (i - j): how far back the head looks, in tokens",
    "first_token_sink_share": "share of samples (0-1) in which s_0 > 0.3 (a first-token sink, Gu et al. 2024)",
    "hidden_sink_share": "share of samples (0-1) with a hidden sink: a key k >= 1 with s_k > 0.1 seen by at least "
                         "max(8, T/4) queries (ACT's rule, Yu et al. 2024, with the minimum-queries guard)",
    "mean_hidden_sinks": "mean number of hidden-sink keys per sample (count)",
    "hidden_sink_mass": "mean attention on the hidden sinks, a probability in [0, 1]",
    "retrieval_score": "retrieval score (Wu et al. 2024): share of the needle's answer tokens the head copies "
                       "(its top-attended key is the token being generated), 0-1",
    "previous_token_score": "share of the head's attention on key i-1 (TransformerLens head_detector score), 0-1",
    "duplicate_token_score": "share of the head's attention on earlier copies of the current token "
                             "(TransformerLens head_detector score on repeated random tokens), 0-1",
    "induction_score": "share of the head's attention on the tokens after earlier copies of the current token "
                       "(induction; TransformerLens head_detector score on repeated random tokens), 0-1",
    "vhd": "VHD = ||z_image - z_text||_2 at the first generated token (He et al. 2025), units of the head output z",
    "image_centric_share": "share of images (0-1) for which the head is image-centric (Kang et al. 2025)",
}


def figure_items(figures: list, heads: pd.DataFrame | None) -> list[tuple]:
    """(title, figure, definition, top-10 table) for :func:`workbench.report.viz.write_html`: the definition of the
    column a figure shows (:data:`DEFINITIONS`, "layer 0 at the top" for heatmaps) and, for a per-head
    column, its ten largest heads written ``layer.head``."""
    from .viz import table_html, top_heads

    out = []
    for title, fig in figures:
        col = next((c for c in sorted(DEFINITIONS, key=len, reverse=True) if c in title), None)
        if col is None:
            out.append((title, fig))
            continue
        side = ""
        if heads is not None and col in heads.columns and pd.api.types.is_numeric_dtype(heads[col]):
            side = f"<b>top 10 heads by {col}</b>" + table_html(top_heads(heads, col), 3)
        out.append((title, fig, DEFINITIONS[col] + "; layer 0 at the top.", side))
    return out


def write_census_html(heads: pd.DataFrame, summary: dict, path, model: str, figures: list | None = None) -> None:
    """Write ``census.html``: the sections' figures (default: a layer x head heatmap of every column of
    ``heads`` that :data:`DEFINITIONS` knows, e.g. when re-rendering from ``heads.parquet``), each with its
    definition and top-10 heads, and the provenance footer (``summary["provenance"]`` when recorded)."""
    if figures is None:
        figures = [(f"{c} per head", layer_head_heatmap(heads, c, title=f"{c} per head"))
                   for c in DEFINITIONS if c in heads.columns and pd.api.types.is_numeric_dtype(heads[c])]
    write_html(figure_items(figures, heads), path, f"Head census: {model}",
               f"{summary.get('n_samples')} windows of {summary.get('seq_len')} tokens of "
               f"{summary.get('text', 'pydoc_data.topics prose')}"
               + (f" ({summary['window_start']})" if summary.get("window_start") else "")
               + "; kernel-backed statistics. Heads are written "
               "layer.head, as the CLI flags take them.", provenance=summary.get("provenance"))


@dataclass
class CensusResult:
    """The census: ``heads`` (one row per layer and head), ``summary`` per section, files written."""

    model: str
    heads: pd.DataFrame
    summary: dict
    files: dict

    def to_json(self) -> dict:
        return {"model": self.model, "summary": self.summary, "files": self.files,
                "heads": json.loads(self.heads.to_json(orient="records"))}


def census_config(lm: LoadedModel, n_samples: int, seq_len: int, sections: list[str], options: dict) -> dict:
    """The census's full configuration (its provenance ``config``): settings, sections, options, code hash."""
    from ..io.provenance import code_sha256

    return {"command": "census", "model": lm.spec.name, "n_samples": n_samples, "seq_len": seq_len,
            "sections": list(sections), "options": {k: v for k, v in options.items()},
            "code_sha256": code_sha256(["workbench.report.census", "workbench.core.passes", "workbench.core.stats",
                                        "workbench.core.tracer", "workbench.core.attention", "workbench.tasks.text",
                                        *sorted({SECTIONS.module_of(n) for n in sections})])}


def run_census(lm: LoadedModel, n_samples: int = 8, seq_len: int = 512, out_dir: str | Path | None = "runs",
               sections: list[str] | None = None, progress: bool = True, options: dict | None = None) -> CensusResult:
    """Run the census sections over ``n_samples`` windows of ``seq_len`` tokens of real text.

    Every window starts with the model's start-of-text token when its tokenizer adds one
    (:func:`workbench.tasks.text.token_windows`); ``summary["window_start"]`` says which.

    Writes, under ``out_dir/<model-slug>/`` (:func:`workbench.io.runs.model_dir`): ``heads.parquet``,
    ``heads.csv``, ``heads.json``, ``summary.json`` and ``census.html`` (plotly figures), each with the
    run's provenance (:mod:`workbench.io.provenance`; ``summary["provenance"]``). ``out_dir=None`` writes nothing.

    Raises:
        ContextTooLongError: ``seq_len`` exceeds the context window.
        WorkbenchError: unknown section name.
    """
    lm.spec.check_length(seq_len)
    names = list(SECTIONS) if sections is None else sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        from ..core.errors import WorkbenchError

        raise WorkbenchError(f"unknown census sections {unknown}: choose from {', '.join(SECTIONS)}")
    samples = token_windows(lm.tokenizer, seq_len, n_samples)
    from ..io.runs import model_dir

    ctx = CensusContext(lm, samples, progress, options or {}, None if out_dir is None else model_dir(out_dir, lm.spec.name))
    heads = None
    start = window_start(lm.tokenizer)
    summary: dict = {"n_samples": n_samples, "seq_len": seq_len, "text": "pydoc_data.topics prose",
                     "window_start": start["rule"]}
    figures: list[tuple[str, go.Figure]] = []
    fns = {name: SECTIONS[name] for name in names}
    ctx.consumers = {name: fn.window_consumer(ctx) for name, fn in fns.items() if hasattr(fn, "window_consumer")}
    if ctx.consumers:  # every window once, one tracer for the union of the sections' needs
        from ..core.passes import run_windows

        ctx.passes = run_windows(lm, samples, ctx.consumers.values(), batch_size=1, progress=progress,
                                 desc="census: windows")
    for name in names:
        sec = fns[name](ctx)
        if sec.heads is not None:
            heads = sec.heads if heads is None else heads.merge(sec.heads, on=["layer", "head"], how="left")
        summary[name] = sec.summary
        figures += [(f"{name}: {t}", f) for t, f in sec.figures]
    from ..io.provenance import collect, write_csv, write_json, write_parquet

    prov = collect(lm, census_config(lm, n_samples, seq_len, names, ctx.options))
    summary = {"model": lm.spec.name, **summary, "provenance": prov}
    files: dict = {}
    if out_dir is not None:
        d = model_dir(out_dir, lm.spec.name)
        d.mkdir(parents=True, exist_ok=True)
        write_parquet(heads, d / "heads.parquet", prov)
        write_csv(heads, d / "heads.csv", prov)
        write_json({"model": lm.spec.name, "heads": json.loads(heads.to_json(orient="records"))}, d / "heads.json", prov)
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
        write_census_html(heads, summary, d / "census.html", lm.spec.name, figures)
        files = {k: str(d / v) for k, v in [("parquet", "heads.parquet"), ("csv", "heads.csv"), ("json", "heads.json"),
                                              ("summary", "summary.json"), ("html", "census.html")]}
    return CensusResult(lm.spec.name, heads, summary, files)
