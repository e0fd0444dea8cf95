"""Tables over found massive activations (:mod:`workbench.analyzers.massive`): the massive / outlier-feature
split, fixed dims, onset layer, per-layer and per-token summaries, and the means the edit sets.

Definitions in :mod:`workbench.analyzers.massive` (docs/methods.md, massive activations).
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

OUTLIER_SHARE = 0.06  # token share from which a (layer, dim) counts as an outlier feature (massive module docstring)


def classify(df: pd.DataFrame, n_tokens: int | None = None, outlier_share: float = OUTLIER_SHARE) -> pd.DataFrame:
    """Label every entry ``massive`` or ``outlier_feature`` by the token-share rule (module docstring).

    Args:
        df: entries found by :func:`workbench.analyzers.massive.massive_activations` (columns as :data:`workbench.analyzers.massive.COLUMNS`; ``kind`` is overwritten).
        n_tokens: tokens seen (all samples and positions); default ``df.attrs["n_tokens"]``.
        outlier_share: a (layer, dim) passing the criterion on at least this share of the tokens is an outlier
            feature (default :data:`OUTLIER_SHARE`).
    Returns:
        the same DataFrame with ``kind`` set and ``df.attrs["outlier_share"]``.
    Raises:
        ValueError: no token count to compute shares with.
    """
    n_tokens = n_tokens if n_tokens is not None else df.attrs.get("n_tokens")
    if not n_tokens:
        if df.empty:
            n_tokens = 1
        else:
            raise ValueError("classify needs the number of tokens seen (n_tokens, or df.attrs['n_tokens'])")
    df = df.copy()
    share = df.groupby(["layer", "dim"])["pos"].transform("size") / n_tokens
    df["kind"] = ["outlier_feature" if s >= outlier_share else "massive" for s in share]
    df.attrs.update(n_tokens=n_tokens, outlier_share=outlier_share)
    return df


def _massive_only(df: pd.DataFrame) -> pd.DataFrame:
    """The entries labelled ``massive`` (all entries of a DataFrame without a ``kind`` column)."""
    return df[df["kind"] == "massive"] if "kind" in df.columns else df


def outlier_features(df: pd.DataFrame) -> pd.DataFrame:
    """The outlier feature dimensions (entries labelled ``outlier_feature``), one row per (layer, dim).

    Returns:
        DataFrame (layer, dim, token_share, entries, samples, median_abs_value, max_abs_value, top_tokens),
        ``token_share`` the fraction of all tokens on which the entry passes the criterion, ``top_tokens``
        the five most frequent tokens; sorted by dim, then layer.
    """
    cols = ["layer", "dim", "token_share", "entries", "samples", "median_abs_value", "max_abs_value", "top_tokens"]
    sub = df[df["kind"] == "outlier_feature"] if "kind" in df.columns else df.iloc[:0]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    n_tokens = df.attrs.get("n_tokens") or 1
    out = sub.groupby(["layer", "dim"]).agg(
        entries=("pos", "size"), samples=("sample", "nunique"),
        median_abs_value=("value", lambda v: float(v.abs().median())), max_abs_value=("value", lambda v: float(v.abs().max())),
        top_tokens=("token", lambda t: list(t.value_counts().index[:5]))).reset_index()
    out["token_share"] = out["entries"] / n_tokens
    return out[cols].sort_values(["dim", "layer"]).reset_index(drop=True)


def massive_dims(df: pd.DataFrame, min_fraction: float = 0.5) -> list[int]:
    """The fixed massive dimensions: dims with a massive entry in at least ``min_fraction`` of the samples.

    Args:
        df: output of :func:`workbench.analyzers.massive.massive_activations` (uses ``df.attrs["n_samples"]`` when present).
        min_fraction: share of samples (0..1) in which the dim must carry a massive entry at some layer.
    Returns:
        dims sorted by how many samples carry them (most first).
    """
    n = df.attrs.get("n_samples") or df["sample"].nunique()
    df = _massive_only(df)
    if df.empty:
        return []
    per_dim = df.groupby("dim")["sample"].nunique().sort_values(ascending=False)
    return [int(d) for d, c in per_dim.items() if c / n >= min_fraction]


def onset_layer(df: pd.DataFrame, dims: Iterable[int] | None = None, min_fraction: float = 0.5) -> int | None:
    """First layer whose residual stream carries massive entries (on ``dims``) in >= ``min_fraction`` of samples."""
    n = df.attrs.get("n_samples") or df["sample"].nunique()
    df = _massive_only(df)
    if df.empty:
        return None
    sub = df if dims is None else df[df["dim"].isin(list(dims))]
    per_layer = sub.groupby("layer")["sample"].nunique()
    ok = [int(layer) for layer, c in per_layer.items() if c / n >= min_fraction]
    return min(ok) if ok else None


def layer_summary(df: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Per layer: samples with massive entries (share), entries, largest |value|, median ratio, dims seen
    (massive entries only; outlier features are in :func:`outlier_features`)."""
    n = df.attrs.get("n_samples") or max(1, df["sample"].nunique())
    L = n_layers if n_layers is not None else df.attrs.get("n_layers", int(df["layer"].max()) if len(df) else 0)
    df = _massive_only(df)
    out = []
    for layer in range(L + 1):
        sub = df[df["layer"] == layer]
        out.append({"layer": layer, "sample_share": sub["sample"].nunique() / n, "entries": len(sub),
                    "max_abs_value": float(sub["value"].abs().max()) if len(sub) else 0.0,
                    "median_ratio": float(sub["ratio_to_median"].median()) if len(sub) else 0.0,
                    "dims": sorted({int(d) for d in sub["dim"]})})
    return pd.DataFrame(out)


def token_summary(df: pd.DataFrame, layer: int | None = None) -> pd.DataFrame:
    """Which tokens carry massive entries: per (token, dim) the count of (sample, pos) hits, mean value, positions.

    Args:
        layer: restrict to one layer (default: the layer with the most entries).
    """
    df = _massive_only(df)
    if df.empty:
        return pd.DataFrame(columns=["token", "dim", "count", "mean_value", "mean_ratio", "positions"])
    if layer is None:
        layer = int(df["layer"].value_counts().idxmax())
    sub = df[df["layer"] == layer]
    g = sub.groupby(["token", "dim"])
    out = g.agg(count=("sample", "size"), mean_value=("value", "mean"), mean_ratio=("ratio_to_median", "mean"),
                positions=("pos", lambda p: sorted(set(int(x) for x in p))[:10])).reset_index()
    return out.sort_values("count", ascending=False).reset_index(drop=True)


def massive_means(df: pd.DataFrame, layer: int) -> dict[int, float]:
    """Mean signed value of the massive entries of each dim at ``layer`` (Sun et al.'s "set to mean").

    A dim found massive only at other layers gets its mean over all layers. Massive entries only.
    """
    df = _massive_only(df)
    means = {int(d): float(v) for d, v in df.groupby("dim")["value"].mean().items()}
    sub = df[df["layer"] == layer]
    means.update({int(d): float(v) for d, v in sub.groupby("dim")["value"].mean().items()})
    return means
