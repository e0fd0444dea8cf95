"""The retrieval sweep's folder: the results file's name, its figures, the score tables, JSON and page written
with provenance (:func:`save`), and saved scores read back checked against the model's weights."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..analyzers.retrieval import RETRIEVAL_THRESHOLD
from ..core.errors import WorkbenchError
from .retrieval_summary import SweepResult

RESULTS_FILE = "results.jsonl"


def figures(res: SweepResult) -> list:
    """Plotly figures: layer x head score heatmap, score distribution, length x depth accuracy heatmap."""
    import plotly.graph_objects as go

    from ..report.viz import layer_head_heatmap

    figs = [("retrieval score per head", layer_head_heatmap(res.heads, "score", title="retrieval score (layer x head)"))]
    h = go.Figure(go.Histogram(x=res.heads.score, nbinsx=40))
    h.add_vline(x=res.summary["threshold"], line_dash="dash", annotation_text="retrieval head threshold")
    h.update_layout(title="distribution of retrieval scores", xaxis_title="retrieval score", yaxis_title="heads",
                    yaxis_type="log")
    figs.append(("score distribution", h))
    if len(res.tests):
        figs.append(("needle accuracy", accuracy_heatmap(res.tests, "needle-in-a-haystack accuracy (ROUGE-1 recall > 0.5)")))
    return figs


def accuracy_heatmap(tests: pd.DataFrame, title: str):
    """Length x depth heatmap of the share of correct tests (over needles)."""
    import plotly.graph_objects as go

    g = tests.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=g.values, x=[str(c) for c in g.columns], y=[f"{d:g}%" for d in g.index],
                               colorscale="RdYlGn", zmin=0, zmax=1,
                               hovertemplate="length %{x}<br>depth %{y}<br>accuracy %{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth")
    return fig


def _csv(df: pd.DataFrame, path: Path, prov: dict | None, write_csv) -> None:
    if prov is not None:
        write_csv(df, path, prov)
    else:
        df.to_csv(path, index=False)


def save(res: SweepResult, out_dir: str | Path, model: str, prov: dict | None = None) -> dict:
    """Write retrieval_heads.parquet/.csv/.json, tests.csv, summary.json and retrieval.html into ``out_dir``.

    ``prov`` (default: the provenance in the header of ``out_dir/results.jsonl``, or none) goes into the
    Parquet metadata, the JSON files and the page footer.
    """
    from ..io.jsonl import read_header
    from ..io.provenance import write_csv, write_json, write_parquet
    from ..report.viz import write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if prov is None:
        prov = (read_header(out / RESULTS_FILE) or {}).get("provenance")
    if prov is not None:
        write_parquet(res.heads, out / "retrieval_heads.parquet", prov)
    else:
        res.heads.to_parquet(out / "retrieval_heads.parquet", index=False)
    _csv(res.heads, out / "retrieval_heads.csv", prov, write_csv)
    write_json({"model": model, **res.to_json()}, out / "retrieval_heads.json", prov)
    if len(res.tests):
        _csv(res.tests, out / "tests.csv", prov, write_csv)
    write_json({"model": model, **res.summary}, out / "summary.json", prov)
    s = res.summary
    write_html(figures(res), out / "retrieval.html", f"Retrieval heads: {model}",
               f"{s['n_tests']} needle tests ({s['n_correct']} correct) over lengths {s['lengths']}, depths "
               f"{s['depths']}, needles {s['needles']}; {s['n_retrieval_heads']} retrieval heads (score > "
               f"{s['threshold']}) of {s['n_heads']}. Retrieval score as in Wu et al. 2024.", provenance=prov)
    res.files = {k: str(out / v) for k, v in [("parquet", "retrieval_heads.parquet"), ("json", "retrieval_heads.json"),
                                              ("csv", "retrieval_heads.csv"), ("html", "retrieval.html"),
                                              ("results", RESULTS_FILE)]}
    return res.files


def load_scores(path: str | Path, lm=None) -> pd.DataFrame:
    """Per-head scores saved by :func:`save` (a directory, or its .parquet/.json file).

    With ``lm`` the file's provenance must name ``lm``'s weights (:func:`workbench.io.provenance.check_model_weights`);
    the provenance is then in ``df.attrs["provenance"]``.

    Raises:
        WorkbenchError: nothing saved there. ProvenanceError: the scores were computed on other weights.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "retrieval_heads.parquet"
    if not p.exists():
        raise WorkbenchError(f"no saved retrieval scores at {p}: run `workbench retrieval --model M` first "
                             "or pass --scores PATH")
    if lm is not None:
        from ..io.provenance import check_model_weights

        prov = check_model_weights(p, lm, f"the retrieval scores {p}")
        df = load_scores(p)
        df.attrs["provenance"] = prov
        return df
    if p.suffix == ".json":
        return pd.DataFrame(json.loads(p.read_text())["heads"]).assign(
            retrieval=lambda d: d.score > RETRIEVAL_THRESHOLD)
    return pd.read_parquet(p)


def default_out(model: str, root: str | Path | None = None) -> Path:
    """Default sweep directory: ``<root>/<model-slug>/retrieval`` (root default ``runs/``, :mod:`workbench.io.runs`)."""
    from ..io.runs import run_dir

    return run_dir(root, model, "retrieval")
