"""Infrastructure beside the core: files a user hands in, run folders, append-only JSON-lines checkpoints and
the provenance of every result. Same layer as :mod:`workbench.core`.

* :mod:`.files`: reading user files with one-line errors.
* :mod:`.runs`: the run folder (``runs/`` and ``reports/<model>``).
* :mod:`.jsonl`: resumable checkpoints.
* :mod:`.provenance`: code, weights, configuration, seed and machine of a result.
"""
