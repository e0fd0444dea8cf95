"""The probe run behind ``workbench probe``, as one Python call: dataset, probe and control probe, a result file
with provenance."""
from __future__ import annotations

from pathlib import Path

from workbench.core.errors import WorkbenchError
from workbench.core.models import LoadedModel
from .datasets import needle_dataset, sink_dataset
from .probe import train_probe

TASKS = ("needle", "sink")
SITES = ("resid_pre", "z")


def run_probe(lm: LoadedModel, task: str = "needle", layer: int = 10, site: str = "resid_pre", head: int | None = None,
              n: int = 24, seq_len: int = 128, threshold: float = 0.1, seed: int = 0,
              out: str | Path | None = "runs", config: dict | None = None) -> dict:
    """Train a linear probe at ``layer``'s ``site`` and its control probe (Hewitt & Liang 2019).

    ``task="needle"``: is this token inside the needle (:func:`~probes.datasets.needle_dataset`); ``"sink"``: is
    this key a sink, head-mean received attention above ``threshold`` (:func:`~probes.datasets.sink_dataset`);
    ``n`` sequences of ``seq_len`` tokens, split and control labels seeded by ``seed``
    (:func:`~probes.probe.train_probe`).

    Writes, unless ``out`` is None, ``out/<model>/probes/<task>_L<layer>_<site>[_H<head>].json`` with provenance
    (``config`` recorded in it, by default the arguments).

    Returns:
        :meth:`~probes.probe.ProbeResult.to_dict` (accuracies, selectivity, description) plus ``model``,
        ``task``, ``layer``, ``site``, ``head``, ``n_sequences``, ``seq_len`` and, when written, ``file``.

    Raises:
        WorkbenchError: an unknown task or site, or ``site="z"`` without ``head``.
        HeadIndexError: ``layer`` or ``head`` outside the model.
    """
    from workbench.io.provenance import collect, write_json
    from workbench.io.runs import run_dir

    check_probe(task, site, head)
    lm.spec.check_head(layer, head)
    if task == "needle":
        data = needle_dataset(lm, layer, n_seqs=n, seq_len=seq_len, site=site, head=head, seed=seed)
    else:
        data = sink_dataset(lm, layer, n_seqs=n, seq_len=seq_len, site=site, head=head, threshold=threshold)
    res = train_probe(data, seed=seed).to_dict()
    res.update(model=lm.spec.name, task=task, layer=layer, site=site, head=head, n_sequences=n, seq_len=seq_len)
    if out is not None:
        cfg = config if config is not None else {"command": "probe", "model": lm.spec.name, "task": task,
                                                 "layer": layer, "site": site, "head": head, "n": n,
                                                 "seq_len": seq_len, "threshold": threshold}
        path = run_dir(out, lm.spec.name, "probes") / f"{task}_L{layer}_{site}{'' if head is None else f'_H{head}'}.json"
        write_json(res, path, collect(lm, cfg, seed))
        res["file"] = str(path)
    return res


def check_probe(task: str, site: str, head: int | None) -> None:
    """The arguments :func:`run_probe` refuses, checked before any model loads.

    Raises:
        WorkbenchError: an unknown task or site, or ``site="z"`` without ``head``.
    """
    if task not in TASKS:
        raise WorkbenchError(f"unknown probe task {task!r}: use needle or sink")
    if site not in SITES:
        raise WorkbenchError(f"unknown site {site!r}: use resid_pre or z")
    if site == "z" and head is None:
        raise WorkbenchError("--site z needs --head")
