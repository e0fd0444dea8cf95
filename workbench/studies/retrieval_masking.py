"""The causal masking test of retrieval heads (Wu et al. 2024, section 4).

Mask the top-K retrieval heads, or K random *non-retrieval* heads (score <= 0.1; several seeds),
and measure needle-in-a-haystack accuracy (ROUGE-1 recall > 0.5). Ablation kinds
(:class:`~workbench.interventions.HeadAblation`):

* ``uniform``: the head attends uniformly to every visible key (its output z becomes the running
  mean of the values); Wu et al.'s masking, computed in closed form.
* ``zero``: z = 0.
* ``mean``: z = the head's mean output over real text (``HeadAblation.fit_means``).

Phases: ``decode`` (as in the paper: only decoding steps are masked; the prompt's KV cache is
computed once without masking and reused by every condition), ``all`` (prefill too) or
``prefill``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..interventions import HeadAblation
from ..tasks.needle import Needle, build_prompt, load_needles
from ..analyzers.retrieval import MAX_NEW_TOKENS, ROUGE_THRESHOLD, greedy_decode, prefill, rouge1_recall
from .retrieval_sweep import RETRIEVAL_THRESHOLD


def select_heads(spec_str: str, n_layers: int, n_heads: int, scores: pd.DataFrame | None = None,
                 seed: int = 0) -> list[tuple[int, int]]:
    """Parse a head set in the grammar of :mod:`workbench.core.headsets`, with the retrieval scores as its source.

    ``retrieval:top-K``: the K heads with the highest retrieval score; ``random:K``: K heads drawn
    (with ``seed``) from the non-retrieval heads (score <= 0.1); ``L.H,L.H,...`` (and ``L.*``,
    ``L.H-L.H``): explicit heads, returned sorted.

    Raises:
        WorkbenchError: malformed selection, scores missing, or too few heads to draw from.
        HeadIndexError: an explicit head is out of range.
    """
    from ..core.headsets import is_selection, parse_head_set

    s = spec_str.strip()
    hint = "retrieval:top-K, random:K or LAYER.HEAD,LAYER.HEAD (L.*, L.H-L.H)"
    if is_selection(s):
        if scores is None:
            raise WorkbenchError(f"--heads {s} needs saved retrieval scores: run `workbench retrieval` first or pass --scores")
        pool = scores[scores.score <= RETRIEVAL_THRESHOLD]
        return parse_head_set(s, n_layers, n_heads, scores={"retrieval": scores}, seed=seed, hint=hint,
                              pool=[(int(a), int(b)) for a, b in zip(pool["layer"], pool["head"])],
                              pool_name="non-retrieval heads")
    empty = [p for p in s.split(",") if not p.strip()]
    if empty:
        raise WorkbenchError(f"cannot read head {empty[0]!r}: use {hint}")
    return sorted(set(parse_head_set(s, n_layers, n_heads, hint=hint)))


@dataclass
class Condition:
    """One masking condition: a name, the heads and the ablation (None for the baseline)."""

    name: str
    selection: str
    k: int
    seed: int | None
    kind: str | None
    ablation: HeadAblation | None


def fit_all_means(lm, n_samples: int = 4, seq_len: int = 256) -> dict:
    """Mean head output z of every head over real-text windows (for mean ablation)."""
    from ..tasks.text import token_windows

    heads = [(a, b) for a in range(lm.spec.n_layers) for b in range(lm.spec.n_heads)]
    return HeadAblation.fit_means(lm, heads, token_windows(lm.tokenizer, seq_len, n_samples, split="train"))


def build_conditions(lm, scores: pd.DataFrame | None, ks: Sequence[int], seeds: Sequence[int], kinds: Sequence[str],
                     phase: str = "decode", means: dict | None = None, include_random: bool = True) -> list[Condition]:
    """Baseline plus top-K and random-K (per seed) conditions for each ablation kind."""
    spec = lm.spec
    conds = [Condition("baseline", "none", 0, None, None, None)]
    for kind in kinds:
        for k in ks:
            sel = select_heads(f"retrieval:top-{k}", spec.n_layers, spec.n_heads, scores)
            conds.append(Condition(f"{kind}/top-{k}", "top", k, None, kind, HeadAblation(sel, kind, phase, means)))
            if include_random:
                for seed in seeds:
                    sel = select_heads(f"random:{k}", spec.n_layers, spec.n_heads, scores, seed)
                    conds.append(Condition(f"{kind}/random-{k}/s{seed}", "random", k, seed, kind,
                                           HeadAblation(sel, kind, phase, means)))
    return conds


@dataclass
class NiahJob:
    """One needle test under every condition per cell ``(length, depth, needle)`` (what a worker runs)."""

    conditions: list
    haystack: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS

    def run(self, lm, cell: tuple) -> list[dict]:
        length, depth, nd = cell
        p = build_prompt(lm.tokenizer, nd, length, depth, self.haystack)
        shared = None
        rows = []
        for c in self.conditions:
            decode_only = c.ablation is None or c.ablation.phase == "decode"
            if decode_only:
                if shared is None:
                    shared = prefill(lm, p.ids)
                cache = shared
            else:
                cache = prefill(lm, p.ids, hooks=(c.ablation,))
            hooks = (c.ablation,) if c.ablation is not None else ()
            dec = greedy_decode(lm, p.ids, self.max_new_tokens, record=False, hooks=hooks, prefill_cache=cache)
            pred = lm.tokenizer.decode(dec.tokens, skip_special_tokens=True)
            r = rouge1_recall(nd.answer, pred)
            rows.append({"condition": c.name, "selection": c.selection, "k": c.k, "seed": c.seed, "kind": c.kind,
                         "length": length, "depth": depth, "needle": nd.name, "prediction": pred,
                         "rouge1_recall": r, "correct": r > ROUGE_THRESHOLD,
                         "heads": ";".join(f"{a}.{b}" for a, b in (c.ablation.heads if c.ablation else []))})
        return rows


def run_niah(lm, conditions: list[Condition], lengths: Sequence[int], depths: Sequence[float],
             needles: Iterable[Needle] | None = None, haystack: str | None = None,
             max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True, executor=None) -> pd.DataFrame:
    """Needle accuracy of every condition on every (length, depth, needle) test.

    With decode-phase ablations the unmasked prompt cache is computed once per test and reused.
    ``executor`` (:mod:`workbench.core.executor`; default the local, serial one) runs the tests; the
    rows come back in grid order whichever executor ran them.
    Returns one row per (condition, test): condition, selection, k, seed, kind, length, depth,
    needle, prediction, rouge1_recall, correct, heads.
    """
    from ..core.executor import LocalExecutor

    needles = tuple(needles) if needles is not None else load_needles()
    plan = [(int(n), float(d), nd) for n in lengths for d in depths for nd in needles]
    for n in lengths:
        lm.spec.check_length(int(n))
    per_test: dict[int, list[dict]] = {}
    with tqdm(total=len(plan) * len(conditions), desc="masking test", disable=not progress) as bar:
        for i, rows in (executor or LocalExecutor()).map(NiahJob(list(conditions), haystack, max_new_tokens), plan, lm):
            per_test[i] = rows
            bar.update(len(rows))
    return pd.DataFrame([r for i in range(len(plan)) for r in per_test[i]])


def masking_table(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per kind and K: baseline, top-K, random-K mean, std and min..max over seeds."""
    per = df.groupby(["condition", "selection", "k", "seed", "kind"], dropna=False).correct.mean().reset_index()
    base = float(per[per.selection == "none"].correct.iloc[0]) if (per.selection == "none").any() else float("nan")
    out = []
    for (kind, k), g in per[per.selection != "none"].groupby(["kind", "k"]):
        top = g[g.selection == "top"].correct
        rnd = g[g.selection == "random"].correct
        out.append({"kind": kind, "k": int(k), "baseline": base,
                    "top_k": float(top.iloc[0]) if len(top) else float("nan"),
                    "random_k_mean": float(rnd.mean()) if len(rnd) else float("nan"),
                    "random_k_std": float(rnd.std(ddof=0)) if len(rnd) else float("nan"),
                    "random_k_min": float(rnd.min()) if len(rnd) else float("nan"),
                    "random_k_max": float(rnd.max()) if len(rnd) else float("nan"), "n_seeds": int(len(rnd))})
    return pd.DataFrame(out)


def accuracy_grids(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Length x depth accuracy grid (mean over needles, and over seeds for random-K) per kind/selection/K."""
    grids = {}
    for (sel, kind, k), g in df.groupby(["selection", "kind", "k"], dropna=False):
        name = "baseline" if sel == "none" else f"{kind}/{sel}-{int(k)}"
        grids[name] = g.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean")
    return grids


def masking_figures(df: pd.DataFrame) -> list:
    """Accuracy heatmaps (length x depth) for baseline, top-K and random-K conditions."""
    from .retrieval_sweep import accuracy_heatmap

    figs = []
    for (sel, kind, k), g in df.groupby(["selection", "kind", "k"], dropna=False):
        name = "baseline" if sel == "none" else f"{kind} ablation, {sel}-{int(k)}"
        figs.append((name, accuracy_heatmap(g, f"needle accuracy: {name}")))
    return figs


def _check_kinds(kinds: Sequence[str]) -> None:
    from ..interventions.ablation import KINDS

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise WorkbenchError(f"unknown ablation kind {bad[0]!r}: use one of {', '.join(KINDS)}")


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """Validate ablation kinds; returns them as a list."""
    _check_kinds(kinds)
    return list(kinds)

