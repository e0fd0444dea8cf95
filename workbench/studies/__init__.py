"""Scripted head-ablation studies: a TOML spec of head sets x ablation kinds x tasks, run with
progress and resume, written as a results table with bootstrap confidence intervals and a report.

* :mod:`.spec`: the spec format (:func:`load_spec`).
* :mod:`.heads`: head sets from the analyzers' tables (sinks, retrieval, classic types), explicit
  lists and seeded random baselines.
* :mod:`.study_tasks`: IOI / colored-objects logit difference, held-out perplexity, needle accuracy.
* :mod:`.runner`: :func:`run_study` (its results table and report: :mod:`.study_results`).
"""
from .runner import StudyResult, StudyStateError, run_study
from .spec import StudySpec, StudySpecError, load_spec, parse_spec
from .study_tasks import TaskUnavailableError

__all__ = ["StudyResult", "StudySpec", "StudySpecError", "StudyStateError", "TaskUnavailableError", "load_spec",
           "parse_spec", "run_study"]
