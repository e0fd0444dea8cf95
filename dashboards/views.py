"""Page-independent pieces of the dashboard's views (testable without Streamlit).

* :func:`preset_options`: model presets in the order a new user wants them (text LMs first, the
  default first; then the VLMs, ``effnet-smollm2-vqa`` first), each with a label that says whether it is a VLM.
* :func:`census_extras`: the further tables of a census directory to show, one per quantity
  (``head_types.csv`` and ``head_types.parquet`` are one table), plus the needle-in-a-haystack grid
  (``retrieval/tests.csv``) and the massive activations (``sinks.json``) that the committed reports hold.
* :func:`label_shared_columns`: a column that also appears in the census table under the same name
  but was measured on other samples gets the source in its name, so one name means one number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

DEFAULT_PRESET = "smollm2-135m"
DEFAULT_VLM = "effnet-smollm2-vqa"  # the VLM with a pretrained vision tower; digits-vlm is the small test fixture
TABLE_PREFERENCE = (".parquet", ".csv", ".json")


def is_vlm_preset(name: str, description: str = "") -> bool:
    """Whether a preset is a vision-language model (its name or description says so)."""
    text = f"{name} {description}".lower()
    return "vlm" in text or "image" in text or "vision" in text or "clip" in text


def preset_options(presets: dict) -> list[tuple[str, str]]:
    """(name, label) pairs: the default text LM first, then other text LMs, then VLMs (labelled ``VLM``),
    :data:`DEFAULT_VLM` first among them."""
    def desc(p) -> str:
        return getattr(p, "description", "") or ""

    names = sorted(presets, key=lambda n: (is_vlm_preset(n, desc(presets[n])), n != DEFAULT_PRESET, n != DEFAULT_VLM, n))
    out = []
    for n in names:
        kind = "VLM (image + text)" if is_vlm_preset(n, desc(presets[n])) else "text LM"
        out.append((n, f"{n} · {kind}"))
    return out


@dataclass
class Extra:
    """A further table of a census directory: display name, kind (``needle``, ``massive``,
    ``per-head``, ``table``), the data and a caption saying where it comes from."""

    name: str
    kind: str
    df: pd.DataFrame
    caption: str = ""


def dedupe_tables(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """One entry per table stem: ``x.parquet`` wins over ``x.csv`` over ``x.json`` (same data, two formats)."""
    best: dict[str, str] = {}
    for name in tables:
        p = Path(name)
        rank = TABLE_PREFERENCE.index(p.suffix) if p.suffix in TABLE_PREFERENCE else len(TABLE_PREFERENCE)
        cur = best.get(p.stem)
        if cur is None or rank < TABLE_PREFERENCE.index(Path(cur).suffix):
            best[p.stem] = name
    return {best[s]: tables[best[s]] for s in sorted(best)}


def label_shared_columns(df: pd.DataFrame, heads: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rename score columns that ``heads`` also has (other samples, other numbers) to ``col [source]``."""
    shared = [c for c in df.columns if c in heads.columns and c not in ("layer", "head")]
    return df.rename(columns={c: f"{c} [{source}]" for c in shared})


def needle_table(path: Path) -> pd.DataFrame | None:
    """Needle-in-a-haystack grid from a retrieval ``tests.csv``: ``length``, ``depth`` (percent), ``accuracy``."""
    if not path.exists():
        return None
    t = pd.read_csv(path)
    if not {"length", "depth", "correct"} <= set(t.columns):
        return None
    depth = t["depth"] * (100.0 if t["depth"].max() <= 1.0 else 1.0)
    return (t.assign(depth=depth.round(1), accuracy=t["correct"].astype(float))
            .groupby(["length", "depth"], as_index=False)["accuracy"].mean())


def massive_table(path: Path) -> pd.DataFrame | None:
    """Massive activations from ``sinks.json``: one row per (layer, dim, token) with the first position."""
    if not path.exists():
        return None
    recs = json.loads(path.read_text()).get("massive_activations") or []
    if not recs:
        return None
    df = pd.DataFrame(recs)
    df["pos"] = [int(p[0]) if isinstance(p, list) and p else -1 for p in df.get("positions", [[]] * len(df))]
    return df[["layer", "pos", "dim", "token", "value", "ratio_to_median"] + (["count"] if "count" in df else [])]


def census_extras(path: str | Path, tables: dict[str, pd.DataFrame], heads: pd.DataFrame,
                  summary: dict | None = None) -> list[Extra]:
    """The further tables of a census directory to show (see module docstring)."""
    from dashboards.sources import table_kind

    d = Path(str(path)).expanduser()
    out: list[Extra] = []
    n = (summary or {}).get("n_samples"), (summary or {}).get("seq_len")
    for name, df in dedupe_tables(tables).items():
        kind = table_kind(df)
        cap = f"{name} ({len(df)} rows)"
        if kind == "per-head" and Path(name).stem != "heads":
            shown = label_shared_columns(df, heads, Path(name).stem)
            if list(shown.columns) != list(df.columns):
                cap += (f"; columns marked [{Path(name).stem}] were measured on that report's own samples, "
                        f"not the census windows ({n[0]} x {n[1]} tokens), so their values differ")
            df = shown
        out.append(Extra(name, kind, df, cap))
    nd = needle_table(d / "retrieval" / "tests.csv")
    if nd is not None:
        out.append(Extra("needle in a haystack (retrieval/tests.csv)", "needle", nd,
                         "share of needle tests answered correctly, by context length and needle depth"))
    ma = massive_table(d / "sinks.json")
    if ma is not None:
        out.append(Extra("massive activations (sinks.json)", "massive", ma,
                         "|activation| of residual-stream entries over 100x the median, entering each layer"))
    return out
