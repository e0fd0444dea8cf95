"""Confidence intervals and paired tests: the one place the workbench computes them, all through scipy.

* :func:`bootstrap_ci`: percentile bootstrap interval of a statistic of resampled units
  (``scipy.stats.bootstrap``, ``method="percentile"``; Efron & Tibshirani 1993), optionally paired
  (the same resampled units for a difference of two statistics);
* :func:`cluster_ci` / :func:`paired_cluster_ci`: the same over clusters of table rows (e.g. all
  questions of one image), for metrics computed from a DataFrame;
* :func:`wilson`: the Wilson score interval of a binomial proportion (``binomtest(...).proportion_ci``);
* :func:`mcnemar`: McNemar's exact test of paired booleans (a binomial test on the discordant pairs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd


def bootstrap_ci(n: int, statistic: Callable[[np.ndarray], float], n_boot: int = 1000, level: float = 0.95,
                 seed: int | np.random.Generator = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(idx)`` over resamples ``idx`` (n,) int64 of the units 0..n-1.

    A paired interval (of ``agg(b) - agg(a)`` on the same units) is ``statistic = lambda i: agg(b[i]) - agg(a[i])``.

    Args:
        n: number of units (examples, images, questions).
        statistic: maps resampled unit indices to a float.
        n_boot: bootstrap resamples.
        level: confidence level in (0, 1).
        seed: seed or numpy Generator of the resampling.
    Returns:
        (low, high); with fewer than 2 units the interval is the point value (nothing to resample).
    """
    from scipy.stats import bootstrap

    if n < 2:
        v = float(statistic(np.arange(n)))
        return v, v
    res = bootstrap((np.arange(n),), lambda i: statistic(np.asarray(i, dtype=np.int64)), vectorized=False,
                    n_resamples=n_boot, confidence_level=level, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _clusters(df: pd.DataFrame, by: str) -> dict:
    """{cluster key: positions (int64) of its rows in ``df``}, clusters in ``groupby`` order."""
    return {k: np.asarray(v, dtype=np.int64) for k, v in df.reset_index(drop=True).groupby(by).indices.items()}


def _take(df: pd.DataFrame, groups: dict, keys: list, idx) -> pd.DataFrame:
    """The rows of the clusters ``keys[i]`` for i in ``idx`` (repeats kept), in that order, as one table."""
    return df.iloc[np.concatenate([groups[keys[i]] for i in idx])].reset_index(drop=True)


def cluster_ci(df: pd.DataFrame, fn: Callable[[pd.DataFrame], dict], by: str = "image", n_boot: int = 1000,
               seed: int = 0, level: float = 0.95) -> dict:
    """``fn(df)`` plus ``<metric>_ci`` = [low, high] for each float metric (not ``n``): a percentile bootstrap
    resampling the clusters ``df[by]`` (all rows of one cluster together)."""
    point = fn(df)
    df = df.reset_index(drop=True)
    groups = _clusters(df, by)
    keys = sorted(groups)
    out = dict(point)
    for name, v in point.items():
        if name == "n" or not isinstance(v, float):
            continue

        def stat(idx, name=name):
            return fn(_take(df, groups, keys, idx))[name]

        out[f"{name}_ci"] = list(bootstrap_ci(len(keys), stat, n_boot, level, seed))
    return out


def paired_cluster_ci(da: pd.DataFrame, db: pd.DataFrame, fn: Callable[[pd.DataFrame], dict], metric: str,
                      by: str = "image", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Paired percentile bootstrap interval of ``fn(db)[metric] - fn(da)[metric]``, resampling the clusters
    ``by`` that both tables hold, jointly."""
    da, db = da.reset_index(drop=True), db.reset_index(drop=True)
    ga, gb = _clusters(da, by), _clusters(db, by)
    keys = sorted(set(ga) & set(gb))

    def stat(idx):
        return fn(_take(db, gb, keys, idx))[metric] - fn(_take(da, ga, keys, idx))[metric]

    return list(bootstrap_ci(len(keys), stat, n_boot, level, seed))


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (``scipy.stats.binomtest(k, n).proportion_ci``)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of paired booleans (e.g. correct under two methods): a two-sided binomial test
    (p = 0.5) on the discordant pairs. Returns ``a_only``, ``b_only`` (counts) and ``p_value`` (1.0 when
    there is no discordant pair)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
    return {"a_only": n01, "b_only": n10, "p_value": float(p)}
