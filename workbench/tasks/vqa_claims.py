"""The papers' claims, decided on ``effnet-smollm2-vqa``'s held-out POPE and CHAIR tables.

Each claim comes with the rule that decides it, applied to paired 95% bootstrap intervals (method minus
no intervention, resampling scenes; :func:`workbench.core.intervals.paired_cluster_ci`) and the paired
exact McNemar p-value (:func:`workbench.core.intervals.mcnemar`):

* **VHR lowers CHAIR_S with recall kept** (He et al. 2025, docs/methods.md; they report CHAIR_S 49.7 -> 33.3
  on LLaVA-1.5): holds when the CHAIR_S difference interval lies below 0 and the recall difference interval
  lies above ``-recall_slack`` (0.05).
* **VAR improves POPE F1** (Kang et al. 2025), per split (random / popular / adversarial): holds when the F1
  difference interval lies above 0; "opposite" when it lies below 0.
* **Removing visual sinks does not change answers** (Kang et al. 2025), per split: holds when at most 5% of
  the answers change and the F1 difference interval lies inside [-0.02, 0.02].

Any other outcome is reported as not shown, with the interval.
"""
from __future__ import annotations

RECALL_SLACK = 0.05
CHANGED_MAX = 0.05
F1_MARGIN = 0.02


def interval_verdict(ci: list[float], lower_is_better: bool = False) -> str:
    """``holds`` when the interval ``[low, high]`` lies wholly on the better side of 0, ``opposite`` when wholly
    on the worse side, else ``not shown (interval includes 0)``."""
    lo, hi = ci
    good, bad = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    return "holds" if good else "opposite" if bad else "not shown (interval includes 0)"


def paper_claims(pope: dict, chair: dict, recall_slack: float = RECALL_SLACK) -> list[dict]:
    """The claims (module docstring) decided from the ``paired`` lists of ``pope.json`` and ``chair.json``
    (written by ``scripts/effnet_vlm_report.py``). Returns one dict per claim and split: claim, rule, the
    intervals, p_value, verdict."""
    out = []
    for t in chair["paired"]:
        if t["method"] != "vhr":
            continue
        s_ci, r_ci = t["chair_s_diff_ci"], t["recall_diff_ci"]
        lowers, kept = interval_verdict(s_ci, lower_is_better=True), r_ci[0] >= -recall_slack
        out.append({"claim": "VHR lowers CHAIR_S with recall kept (He et al. 2025: 49.7 -> 33.3 on LLaVA-1.5)",
                    "rule": f"CHAIR_S difference interval below 0 and recall difference interval above -{recall_slack}",
                    "chair_s_diff_ci": s_ci, "recall_diff_ci": r_ci, "p_value": t["mcnemar_hallucinated"]["p_value"],
                    "verdict": "holds" if lowers == "holds" and kept else f"CHAIR_S: {lowers}; recall kept: {kept}"})
    for t in pope["paired"]:
        if t["method"] == "var":
            out.append({"claim": f"VAR improves POPE F1 ({t['split']}; Kang et al. 2025)",
                        "rule": "F1 difference interval above 0", "f1_diff_ci": t["f1_diff_ci"],
                        "p_value": t["mcnemar_correct"]["p_value"], "verdict": interval_verdict(t["f1_diff_ci"])})
        elif t["method"] == "no-visual-sinks":
            lo, hi = t["f1_diff_ci"]
            n, changed = t["n_questions"], t["answers_changed"]
            ok = changed <= CHANGED_MAX * n and -F1_MARGIN <= lo and hi <= F1_MARGIN
            out.append({"claim": f"removing visual sinks does not change answers ({t['split']}; Kang et al. 2025)",
                        "rule": f"answers changed <= {CHANGED_MAX:.0%} and F1 difference interval inside "
                                f"[-{F1_MARGIN}, {F1_MARGIN}]",
                        "answers_changed": changed, "n_questions": n, "f1_diff_ci": [lo, hi],
                        "p_value": t["mcnemar_correct"]["p_value"], "verdict": "holds" if ok else "does not hold"})
    return out
