"""Infrastructure beside the core: files a user hands in, run folders, append-only JSON-lines checkpoints and
the provenance of every result. Same layer as :mod:`workbench.core`.

* :mod:`.files`: reading user files with one-line errors.
* :mod:`.runs`: the run folder (``runs/`` and ``reports/<model>``).
* :mod:`.jsonl`: resumable checkpoints.
* :mod:`.provenance`: code, weights, configuration, seed and machine of a result (one import for
  :mod:`.provenance_collect`, :mod:`.provenance_files`, :mod:`.provenance_show` and :mod:`.provenance_checks`).
"""
