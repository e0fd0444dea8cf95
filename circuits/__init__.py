"""Circuits: activation and path patching of head outputs z on clean/corrupted prompt pairs.

* :mod:`workbench.tasks.ioi`: indirect object identification and colored-objects prompt pairs.
* :mod:`.patching`: :class:`ZPatch` (a :class:`~workbench.interventions.HeadIntervention`),
  :func:`activation_patching`, :func:`path_patching`, the normalised logit-difference metric (the patches and the
  metric live in :mod:`.z_patches`).
* :mod:`.circuit`: circuit extraction (top heads per stage) and the overlap of two circuits.
* :mod:`.report`: :func:`patch_circuits`, the whole ``workbench patch`` run as one call (tables, page, summary).
"""
from .circuit import circuit_overlap, extract_circuit, set_overlap, top_k
from .patching import (ReplicaZPatch, ZPatch, activation_patching, logit_diff, normalised, path_patching,
                       run_with_z, task_baseline)
from .report import patch_circuits
from workbench.tasks.ioi import PatchingTask, TaskError, colored_objects_task, ioi_task, make_task

__all__ = ["PatchingTask", "ReplicaZPatch", "TaskError", "ZPatch", "activation_patching", "circuit_overlap",
           "colored_objects_task", "extract_circuit", "ioi_task", "logit_diff", "make_task", "normalised",
           "patch_circuits", "path_patching", "run_with_z", "set_overlap", "task_baseline", "top_k"]
