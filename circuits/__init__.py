"""Circuits: activation and path patching of head outputs z on clean/corrupted prompt pairs.

* :mod:`.tasks`: indirect object identification and colored-objects prompt pairs.
* :mod:`.patching`: :class:`ZPatch` (a :class:`~workbench.interventions.HeadIntervention`),
  :func:`activation_patching`, :func:`path_patching`, the normalised logit-difference metric.
* :mod:`.circuit`: circuit extraction (top heads per stage) and the overlap of two circuits.
"""
from .circuit import circuit_overlap, extract_circuit, set_overlap, top_k
from .patching import (ReplicaZPatch, ZPatch, activation_patching, logit_diff, normalised, path_patching,
                       run_with_z, task_baseline)
from workbench.tasks.ioi import PatchingTask, TaskError, colored_objects_task, ioi_task, make_task

__all__ = ["PatchingTask", "ReplicaZPatch", "TaskError", "ZPatch", "activation_patching", "circuit_overlap",
           "colored_objects_task", "extract_circuit", "ioi_task", "logit_diff", "make_task", "normalised",
           "path_patching", "run_with_z", "set_overlap", "task_baseline", "top_k"]
