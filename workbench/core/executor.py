"""Executors: where the cells of a grid (sweep tests, study conditions, masking tests) run.

A grid is a list of **cells** and a **job**: a picklable object with ``run(lm, cell) -> result``
and, optionally, ``setup(lm)`` (called once per worker before its first cell, e.g. to build task
prompts). :meth:`Executor.map` yields ``(index, result)`` pairs *as cells complete* (any order);
the caller, on the driver, alone writes results (through :mod:`workbench.io.jsonl`), so a run folder,
its provenance and its resume behave the same whichever executor computed the cells.

* :class:`LocalExecutor` (default): the cells run one after another in this process on the
  caller's model (today's behaviour).
* :class:`~workbench.core.ray_executor.RayExecutor`: ``workers`` Ray actors, each loading the model **once** from a
  :class:`ModelLoader` (the same ``load_model`` arguments as the driver), with ``threads`` torch
  threads and ``gpus_per_worker`` GPUs each. Every actor holds at most one cell; an actor that dies
  has its cell put back in the queue and is replaced, so every cell is yielded exactly once.
  ``address=None`` starts a local Ray cluster (stopped again by ``RayExecutor.close``);
  ``address="HOST:PORT"`` (or ``"auto"``) joins a running one (``ray start --head`` there).

Errors: :class:`ExecutorError` (one line) when Ray is not installed, the address cannot be
reached, or workers keep dying. An exception a cell raises on a worker is re-raised on the driver
as itself (a :class:`~workbench.core.errors.WorkbenchError` stays a one-line CLI error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from .errors import WorkbenchError

EXECUTORS = ("local", "ray")


class ExecutorError(WorkbenchError):
    """Ray is missing or unreachable, or its workers keep dying."""


class Job(Protocol):
    """What runs on a worker: ``run(lm, cell)`` per cell, ``setup(lm)`` (optional) once per worker."""

    def run(self, lm, cell) -> Any: ...


@dataclass(frozen=True)
class ModelLoader:
    """Picklable recipe for a worker's model: ``load_model(name, **options)``.

    ``options`` (e.g. ``device``, ``dtype`` where :func:`~workbench.core.models.load_model` accepts them)
    are given as a dict and stored as sorted pairs.
    """

    name: str
    options: tuple = ()

    @classmethod
    def of(cls, name: str, **options) -> "ModelLoader":
        return cls(name, tuple(sorted((k, v) for k, v in options.items() if v is not None)))

    def __call__(self):
        from .models import load_model

        return load_model(self.name, **dict(self.options))


def _setup(job, lm) -> None:
    if hasattr(job, "setup"):
        job.setup(lm)


class Executor:
    """Base class: ``map(job, cells, lm)`` yields ``(index, result)`` as cells complete."""

    name = "executor"

    def map(self, job, cells: Sequence, lm=None) -> Iterator[tuple[int, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (no-op for the local executor)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """JSON-ready description for provenance (kind, workers, threads)."""
        return {"executor": self.name}


@dataclass
class LocalExecutor(Executor):
    """Run every cell in this process on the caller's model, in order (the default).

    Args:
        threads: torch threads for the run (None: leave the process setting unchanged).
    """

    threads: int | None = None
    name = "local"

    def map(self, job, cells: Sequence, lm=None) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, job.run(lm, cells[i]))`` for i = 0, 1, ...

        Raises:
            ExecutorError: no model given.
        """
        import torch

        if lm is None:
            raise ExecutorError("the local executor runs cells on the caller's model: pass lm")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        if not len(cells):
            return
        _setup(job, lm)
        for i, cell in enumerate(cells):
            yield i, job.run(lm, cell)

    def describe(self) -> dict:
        return {"executor": "local", "workers": 1, "threads": self.threads}


def make_executor(kind: str = "local", model: str | None = None, workers: int = 2, threads: int | None = None,
                  gpus_per_worker: float = 0, address: str | None = None, **load_options) -> Executor:
    """The executor the CLI options ``--executor --workers --address --gpus-per-worker`` ask for.

    ``threads`` defaults to 1 per Ray worker and to the process setting for the local executor.

    Raises:
        ExecutorError: unknown kind, Ray missing or options that need Ray given with ``local``.
    """
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}: use local or ray")
    if kind == "local":
        if address or gpus_per_worker:
            raise ExecutorError("--address and --gpus-per-worker need --executor ray")
        return LocalExecutor(threads)
    if model is None:
        raise ExecutorError("the Ray executor needs the model name its workers load")
    from .ray_executor import RayExecutor

    return RayExecutor(ModelLoader.of(model, **load_options), workers=workers, threads=threads or 1,
                       gpus_per_worker=gpus_per_worker, address=address)
