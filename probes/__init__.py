"""Linear probes on head outputs z and residual streams, with control tasks (Hewitt & Liang 2019).

* :mod:`.probe`: :func:`train_probe` (logistic regression, sequence-level train/test split,
  control task, selectivity).
* :mod:`.datasets`: :func:`sink_dataset` ("is this key position a sink") and :func:`needle_dataset`
  ("is this token inside the needle").
* :mod:`.run`: :func:`run_probe`, the whole ``workbench probe`` run as one call (dataset, probes, result file).
"""
from .datasets import NEEDLES, needle_dataset, sink_dataset
from .probe import ProbeData, ProbeError, ProbeResult, control_labels, train_probe
from .run import run_probe

__all__ = ["NEEDLES", "ProbeData", "ProbeError", "ProbeResult", "control_labels", "needle_dataset", "run_probe",
           "sink_dataset", "train_probe"]
