"""Analyzers: turn traces of real text into per-head (or per-dimension) DataFrames.

* :mod:`.sinks`: attention sinks (first-token sink rate, hidden sinks, sink tokens).
* :mod:`.massive`: massive activations and outlier features in the residual stream.
* :mod:`.head_types`: previous-token, duplicate-token and induction heads.
* :mod:`.retrieval`: retrieval scores of heads during greedy decoding.
* :mod:`.vision`: vision-aware heads, visual sinks and image-centric heads of a VLM.
"""
