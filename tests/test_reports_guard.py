"""CI guards the committed reports: the committed census summary is what the code computes now."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# --- the committed census summary is what the code computes now -------------------------------------------

REL, ABS = 1e-3, 1e-4  # floats: |now - committed| <= ABS + REL * |committed|; integers and strings: equal


def _close(a, b) -> bool:
    return abs(a - b) <= ABS + REL * abs(b)


def _compare(now, ref, where: str, errors: list[str]) -> None:
    if isinstance(ref, dict):
        for k, v in ref.items():
            if k in ("provenance", "source"):
                continue
            if k not in now:
                errors.append(f"{where}.{k} missing")
            else:
                _compare(now[k], v, f"{where}.{k}", errors)
    elif isinstance(ref, list) and ref and isinstance(ref[0], dict) and {"layer", "head", "score"} <= set(ref[0]):
        # a top-k head list: the same scores; the same heads wherever the score is not tied at the cut
        s_now, s_ref = [h["score"] for h in now], [h["score"] for h in ref]
        if len(s_now) != len(s_ref) or not all(_close(x, y) for x, y in zip(s_now, s_ref)):
            errors.append(f"{where}: scores {s_now} != {s_ref}")
            return
        cut = s_ref[-1]
        keep = lambda hs: {(h["layer"], h["head"]) for h in hs if h["score"] > cut + ABS + REL * cut}  # noqa: E731
        if keep(now) != keep(ref):
            errors.append(f"{where}: heads {sorted(keep(now))} != {sorted(keep(ref))}")
    elif isinstance(ref, list):
        if len(now) != len(ref):
            errors.append(f"{where}: {now} != {ref}")
        for i, (x, y) in enumerate(zip(now, ref)):
            _compare(x, y, f"{where}[{i}]", errors)
    elif isinstance(ref, float) or isinstance(now, float):
        if not (isinstance(now, (int, float)) and (_close(float(now), float(ref)) or
                                                   (math.isnan(float(now)) and math.isnan(float(ref))))):
            errors.append(f"{where}: {now} != {ref}")
    elif now != ref:
        errors.append(f"{where}: {now!r} != {ref!r}")


@pytest.mark.slow
def test_committed_census_summary_is_reproduced(smollm2):
    """Rerun the census with the committed summary's own configuration and compare every number.

    A change that moves a committed number fails here until the reports are regenerated
    (`workbench reproduce --only census`)."""
    from workbench.report.census import run_census

    ref = json.loads((ROOT / "reports" / "smollm2-135m" / "summary.json").read_text())
    assert ref["model"] == "smollm2-135m" and ref["provenance"]["model"]["id"] == "smollm2-135m"
    cfg = ref["provenance"]["config"]
    from workbench.io.provenance import weights_sha256

    assert ref["provenance"]["weights_sha256"] == weights_sha256(smollm2)
    res = run_census(smollm2, n_samples=cfg["n_samples"], seq_len=cfg["seq_len"], out_dir=None,
                     sections=cfg["sections"], progress=False, options=cfg["options"])
    errors: list[str] = []
    _compare(res.summary, ref, "summary", errors)
    assert not errors, "; ".join(errors[:8])


def test_comparison_catches_a_moved_number_and_ignores_ties_at_the_cut():
    ref = {"a": {"x": 0.5, "n": 3, "s": "text"}, "provenance": {"date": "then"},
           "top": [{"layer": 1, "head": 2, "score": 0.9}, {"layer": 0, "head": 1, "score": 0.4},
                   {"layer": 3, "head": 3, "score": 0.4}]}
    same = {"a": {"x": 0.5 + 1e-5, "n": 3, "s": "text"}, "provenance": {"date": "now"},
            "top": [{"layer": 1, "head": 2, "score": 0.9}, {"layer": 5, "head": 5, "score": 0.4},
                    {"layer": 0, "head": 1, "score": 0.4}]}  # another head tied at the cut
    errors: list[str] = []
    _compare(same, ref, "s", errors)
    assert errors == []
    for moved, where in (({**same, "a": {**same["a"], "x": 0.502}}, "s.a.x"),
                         ({**same, "a": {**same["a"], "n": 4}}, "s.a.n"),
                         ({**same, "top": [{"layer": 2, "head": 2, "score": 0.9}] + same["top"][1:]}, "s.top")):
        errors = []
        _compare(moved, ref, "s", errors)
        assert len(errors) == 1 and errors[0].startswith(where), errors
