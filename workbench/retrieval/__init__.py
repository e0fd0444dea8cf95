"""Retrieval heads (Wu et al. 2024): needle-in-a-haystack harness, retrieval scores, sweep, masking test.

* :mod:`.needle`: needles, haystacks, prompts and the answer span.
* :mod:`.score`: greedy decoding with per-step top keys and the retrieval score.
* :mod:`.sweep`: the resumable lengths x depths x needles sweep and the per-head score table.
* :mod:`.masking`: the causal masking test (top-K vs random-K heads; uniform, zero, mean ablation).
* :mod:`.census_section`: the census section that reads saved scores.
"""
