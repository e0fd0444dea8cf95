"""Retrieval heads per length band: counts and top-10 overlaps equal hand counts on planted records."""
from __future__ import annotations

import numpy as np

from workbench.studies.retrieval_bands import band_table, top_heads
from workbench.studies.retrieval_sweep import summarize


def _rec(length, scores, correct=True):
    return {"key": f"L{length}-{len(scores)}-{np.random.rand()}", "length": length, "depth": 50.0, "needle": "n",
            "correct": correct, "scores": scores.tolist()}


def test_band_counts_and_overlaps_match_hand_counts():
    L, H = 3, 4
    short = np.full((L, H), 0.3)  # every head "copies" at the short length
    short[0, 0] = 0.05
    long = np.zeros((L, H))
    long[2, 1], long[1, 3], long[0, 2] = 0.9, 0.5, 0.2  # three real retrieval heads at the long length
    wrong = np.ones((L, H))  # an incorrect test: must not count
    # the longest band is never answered: no scores, so the reference is the longest answered band (4096)
    recs = [_rec(256, short), _rec(256, short), _rec(256, wrong, correct=False), _rec(4096, long),
            _rec(8192, wrong, correct=False)]
    t = band_table(recs, L, H, k=3)
    assert t.length.tolist() == [256, 4096, 8192] and t.attrs["reference_length"] == 4096
    assert t.n_retrieval.tolist() == [11, 3, 0]
    np.testing.assert_allclose(t.fraction, [11 / 12, 3 / 12, 0])
    assert t.n_tests.tolist() == [3, 1, 1] and t.accuracy.tolist() == [2 / 3, 1.0, 0.0]
    assert t.top.iloc[1] == "2.1,1.3,0.2"
    # short band's top-3 among ties: lowest layer, then head, excluding (0, 0): 0.1, 0.2, 0.3
    assert t.top.iloc[0] == "0.1,0.2,0.3"
    assert t.overlap_longest.tolist()[:2] == [1, 3]  # only 0.2 is shared
    assert t.overlap_next.iloc[0] == 1 and np.isnan(t.overlap_next.iloc[2])
    # the band's scores are the whole-grid summary restricted to that length
    sub = summarize([r for r in recs if r["length"] == 4096], L, H)
    assert top_heads(sub.heads, 3) == [(2, 1), (1, 3), (0, 2)]
