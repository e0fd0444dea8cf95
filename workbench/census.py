"""The head census: per-head attention statistics over real text, as tables and a report page.

``run_census`` runs the model over windows of real English text (:mod:`workbench.text`) with the
kernel-backed :class:`~workbench.tracer.Tracer` and builds one row per (layer, head). The core
``attention`` section gives

* ``first_token_mass``: mean received attention of the first token, s_0 = (1/T) sum_i A[i,0]
  (Gu et al. 2024's sink statistic for k = 0), averaged over samples;
* ``entropy``: mean attention entropy over queries, in nats;
* ``mean_distance``: mean attention distance sum_j A[i,j] (i - j) over queries, in tokens.

Other analyzers add columns, summary entries and figures by registering a section with
:func:`register_section`; every section receives the same :class:`CensusContext`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from .models import LoadedModel
from .text import token_windows
from .tracer import Tracer
from .viz import layer_head_heatmap, write_html


@dataclass
class CensusContext:
    """What every census section gets: the model, the text windows (n_samples, seq_len) and options."""

    lm: LoadedModel
    samples: torch.Tensor
    progress: bool = True
    options: dict = field(default_factory=dict)
    out: Path | None = None  # the model's run folder (None: the census writes nothing)


@dataclass
class CensusSection:
    """A section's contribution: per-head columns (with ``layer``, ``head``), summary and figures."""

    name: str
    heads: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)


SECTIONS: dict[str, Callable[[CensusContext], CensusSection]] = {}


def register_section(name: str, fn: Callable[[CensusContext], CensusSection]) -> None:
    """Register a census section (called in registration order; ``attention`` is first)."""
    SECTIONS[name] = fn


def attention_section(ctx: CensusContext) -> CensusSection:
    """First-token mass, entropy and mean distance of every head (see module docstring)."""
    spec = ctx.lm.spec
    tracer = Tracer(ctx.lm, stats=("received", "entropy", "distance"))
    first, ent, dist = 0.0, 0.0, 0.0
    for row in tqdm(ctx.samples, desc="census: attention", disable=not ctx.progress):
        tr = tracer.run(row[None])
        first = first + tr["received"][:, 0, :, 0]
        ent = ent + tr["entropy"][:, 0].mean(-1)
        dist = dist + tr["distance"][:, 0].mean(-1)
    n = len(ctx.samples)
    L, H = spec.n_layers, spec.n_heads
    df = pd.DataFrame({
        "layer": torch.arange(L).repeat_interleave(H).numpy(),
        "head": torch.arange(H).repeat(L).numpy(),
        "first_token_mass": (first / n).reshape(-1).numpy(),
        "entropy": (ent / n).reshape(-1).numpy(),
        "mean_distance": (dist / n).reshape(-1).numpy(),
    })
    summary = {
        "mean_first_token_mass": float(df.first_token_mass.mean()),
        "heads_first_token_mass_over_0.3": int((df.first_token_mass > 0.3).sum()),
        "mean_entropy_nats": float(df.entropy.mean()),
        "mean_distance_tokens": float(df.mean_distance.mean()),
    }
    figs = [(c, layer_head_heatmap(df, c, title=f"{c} per head")) for c in ("first_token_mass", "entropy", "mean_distance")]
    return CensusSection("attention", df, summary, figs)


register_section("attention", attention_section)

# Modules that register further sections when imported (each analyzer appends its own).
SECTION_MODULES: list[str] = [
    "workbench.sinks_report",
    "workbench.retrieval.census_section",
    "workbench.head_types",
    "workbench.vision_report",
]


def load_sections() -> None:
    """Import the analyzer modules of :data:`SECTION_MODULES` so their sections register."""
    import importlib

    for mod in SECTION_MODULES:
        importlib.import_module(mod)


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
    from .provenance import code_sha256

    return {"command": "census", "model": lm.spec.name, "n_samples": n_samples, "seq_len": seq_len,
            "sections": list(sections), "options": {k: v for k, v in options.items()},
            "code_sha256": code_sha256(["workbench.census", "workbench.stats", "workbench.tracer",
                                        "workbench.attention", "workbench.text", *SECTION_MODULES])}


def run_census(lm: LoadedModel, n_samples: int = 8, seq_len: int = 512, out_dir: str | Path | None = "runs",
               sections: list[str] | None = None, progress: bool = True, options: dict | None = None) -> CensusResult:
    """Run the census sections over ``n_samples`` windows of ``seq_len`` tokens of real text.

    Writes, under ``out_dir/<model-slug>/`` (:func:`workbench.runs.model_dir`): ``heads.parquet``,
    ``heads.csv``, ``heads.json``, ``summary.json`` and ``census.html`` (plotly figures), each with the
    run's provenance (:mod:`workbench.provenance`; ``summary["provenance"]``). ``out_dir=None`` writes nothing.

    Raises:
        ContextTooLongError: ``seq_len`` exceeds the context window.
        ValueError: unknown section name.
    """
    lm.spec.check_length(seq_len)
    load_sections()
    names = list(SECTIONS) if sections is None else sections
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown census sections {unknown}; available: {list(SECTIONS)}")
    samples = token_windows(lm.tokenizer, seq_len, n_samples)
    from .runs import model_dir

    ctx = CensusContext(lm, samples, progress, options or {}, None if out_dir is None else model_dir(out_dir, lm.spec.name))
    heads = None
    summary: dict = {"n_samples": n_samples, "seq_len": seq_len, "text": "pydoc_data.topics prose"}
    figures: list[tuple[str, go.Figure]] = []
    for name in names:
        sec = SECTIONS[name](ctx)
        if sec.heads is not None:
            heads = sec.heads if heads is None else heads.merge(sec.heads, on=["layer", "head"], how="left")
        summary[name] = sec.summary
        figures += [(f"{name}: {t}", f) for t, f in sec.figures]
    from .provenance import collect, write_json, write_parquet

    prov = collect(lm, census_config(lm, n_samples, seq_len, names, ctx.options))
    summary = {"model": lm.spec.name, **summary, "provenance": prov}
    files: dict = {}
    if out_dir is not None:
        d = model_dir(out_dir, lm.spec.name)
        d.mkdir(parents=True, exist_ok=True)
        write_parquet(heads, d / "heads.parquet", prov)
        heads.to_csv(d / "heads.csv", index=False)
        write_json({"model": lm.spec.name, "heads": json.loads(heads.to_json(orient="records"))}, d / "heads.json", prov)
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
        write_html(figures, d / "census.html", f"Head census: {lm.spec.name}",
                   f"{n_samples} windows of {seq_len} tokens of pydoc_data.topics prose; kernel-backed statistics.",
                   prov=prov)
        files = {k: str(d / v) for k, v in [("parquet", "heads.parquet"), ("csv", "heads.csv"), ("json", "heads.json"),
                                              ("summary", "summary.json"), ("html", "census.html")]}
    return CensusResult(lm.spec.name, heads, summary, files)
