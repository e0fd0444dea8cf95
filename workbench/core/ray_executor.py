"""The Ray executor: the cells of a grid on a pool of Ray actors that each load the model once
(see :mod:`workbench.core.executor` for the contract every executor keeps)."""
from __future__ import annotations

import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .executor import Executor, ExecutorError, ModelLoader, _setup


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray, which is not installed: pip install 'attention-workbench[ray]' "
                            "(or pip install ray), or use --executor local") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise ExecutorError(f"cannot reach a Ray cluster at {address} ({type(err).__name__}): start one there with "
                            "`ray start --head` and pass its HOST:PORT as --address, or omit --address for a "
                            "local cluster") from None


@dataclass
class RayExecutor(Executor):
    """Cells on a pool of Ray actors that each load the model once.

    Args:
        loader: the worker model (:class:`ModelLoader`); must give the same model as the driver's.
        workers: number of actors.
        threads: torch threads (and Ray CPUs) per actor.
        gpus_per_worker: GPUs per actor (0 on CPU machines); with GPUs the model is loaded with
            ``device="cuda"`` unless the loader says otherwise.
        address: None starts a local cluster with ``workers * threads`` CPUs; ``"HOST:PORT"`` or
            ``"auto"`` joins a running cluster.
        max_replacements: how many dead actors are replaced before the run gives up.
    Raises:
        ExecutorError: Ray missing, address unreachable, bad sizes, workers keep dying.
    """

    loader: ModelLoader
    workers: int = 2
    threads: int = 1
    gpus_per_worker: float = 0
    address: str | None = None
    max_replacements: int | None = None
    name = "ray"
    actors: list = field(default_factory=list, init=False, repr=False)
    _started_ray: bool = field(default=False, init=False, repr=False)
    _spec: Any = field(default=None, init=False, repr=False)
    _inflight: dict = field(default_factory=dict, init=False, repr=False)
    _jobs: int = field(default=0, init=False, repr=False)
    replacements: int = field(default=0, init=False)

    def __post_init__(self):
        if int(self.workers) < 1 or int(self.threads) < 1 or float(self.gpus_per_worker) < 0:
            raise ExecutorError(f"--workers {self.workers} / threads {self.threads} / --gpus-per-worker "
                                f"{self.gpus_per_worker}: give at least 1 worker, 1 thread and >= 0 GPUs")
        self.ray = _import_ray()
        if self.address:
            _check_reachable(self.address)  # fail before anything loads
        if self.max_replacements is None:
            self.max_replacements = 2 * int(self.workers)

    # --- cluster and actors ------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self.ray
        if self.address:
            _check_reachable(self.address)
        if ray.is_initialized():
            return
        if self.address:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ExecutorError(f"cannot connect to the Ray cluster at {self.address}: "
                                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        else:
            # Ray runs workers at nice 15 by default (the driver first); here the workers do the work, so
            # they get the same priority as a local run
            os.environ.setdefault("RAY_worker_niceness", "0")
            for attempt in (1, 2):  # Ray gives its raylet 30 s to register; a loaded machine can miss that once
                try:
                    ray.init(num_cpus=int(self.workers) * int(self.threads), num_gpus=None,
                             include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 ** 2)
                    break
                except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception on a startup timeout
                    ray.shutdown()
                    if attempt == 2:
                        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                        raise ExecutorError(f"could not start a local Ray cluster ({msg}): retry when the machine is "
                                            "less loaded, or use --executor local") from None
            self._started_ray = True

    def _new_actor(self):
        ray = self.ray
        cls = _worker_class(ray)
        opts = {"num_cpus": int(self.threads), "max_restarts": 0}
        if self.gpus_per_worker:
            opts["num_gpus"] = float(self.gpus_per_worker)
        return cls.options(**opts).remote(self.loader, int(self.threads), float(self.gpus_per_worker))

    def start(self) -> None:
        """Connect (or start a local cluster) and create the actors; waits until every model is loaded.

        Raises:
            ExecutorError: as in the class docstring; a worker that cannot load the model re-raises
            the loader's error.
        """
        if self.actors:
            return
        self._connect()
        free = self.ray.available_resources()
        need = {"CPU": int(self.workers) * int(self.threads), "GPU": int(self.workers) * float(self.gpus_per_worker)}
        short = [f"{need[k]:g} {k}s (free: {free.get(k, 0):g})" for k in need if need[k] and free.get(k, 0) < need[k]]
        if short:
            raise ExecutorError(f"the Ray cluster cannot place {self.workers} workers: they need {', '.join(short)}; "
                                "use fewer --workers, --threads or --gpus-per-worker, or add nodes")
        self.actors = [self._new_actor() for _ in range(int(self.workers))]
        specs = self._get([a.spec.remote() for a in self.actors])
        self._spec = specs[0]

    def _get(self, refs):
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    @property
    def spec(self):
        """ModelSpec of the workers' model (after :meth:`start`)."""
        self.start()
        return self._spec

    def in_flight(self) -> dict:
        """{cell index: actor handle} of the cells running now (for monitoring and tests)."""
        return {i: a for a, i in self._inflight.values()}

    def map(self, job, cells: Sequence, lm=None) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, job.run(worker_lm, cells[i]))`` in completion order, each index exactly once.

        ``lm`` (the driver's model, optional) is only compared with the workers': a different
        :class:`~workbench.core.models.ModelSpec` is an error, so results never mix two models.

        Raises:
            ExecutorError: the workers' model differs from ``lm``, or more than ``max_replacements``
                actors died.
        """
        ray = self.ray
        if not len(cells):
            return
        self.start()
        if lm is not None and lm.spec != self._spec:
            raise ExecutorError(f"the Ray workers loaded {self._spec.name} ({self._spec.n_layers} layers), not the "
                                f"driver's {lm.spec.name}: pass the same model to both")
        self._jobs += 1
        job_id = self._jobs
        job_ref = ray.put(job)
        pending = deque(range(len(cells)))
        idle = list(self.actors)
        done: set[int] = set()
        self._inflight = {}
        try:
            while pending or self._inflight:
                while pending and idle:
                    actor = idle.pop(0)
                    i = pending.popleft()
                    self._inflight[actor.run.remote(job_id, job_ref, cells[i])] = (actor, i)
                ready, _ = ray.wait(list(self._inflight), num_returns=1)
                ref = ready[0]
                actor, i = self._inflight.pop(ref)
                try:
                    result = self._get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    pending.appendleft(i)  # rescheduled, never lost
                    self._replace(actor, idle)
                    continue
                if i in done:  # defensive: a cell is yielded once even if it were returned twice
                    idle.append(actor)
                    continue
                done.add(i)
                idle.append(actor)
                yield i, result
        finally:
            self._inflight = {}

    def _replace(self, dead, idle: list) -> None:
        self.actors = [a for a in self.actors if a is not dead]
        if dead in idle:
            idle.remove(dead)
        try:
            self.ray.kill(dead)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if self.replacements >= self.max_replacements:
            raise ExecutorError(f"{self.replacements + 1} Ray workers died during the run (out of memory, killed?): "
                                "see the Ray logs (/tmp/ray/session_latest/logs), then rerun with --resume")
        self.replacements += 1
        new = self._new_actor()
        self.actors.append(new)
        idle.append(new)

    def close(self) -> None:
        """Kill the actors, and stop the cluster if this executor started it."""
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._started_ray = False

    def describe(self) -> dict:
        return {"executor": "ray", "workers": int(self.workers), "threads": int(self.threads),
                "gpus_per_worker": float(self.gpus_per_worker), "address": self.address or "local"}


_WORKER = {}


def _worker_class(ray):
    """The Ray actor class (defined lazily so importing this module never needs Ray)."""
    if "cls" in _WORKER:
        return _WORKER["cls"]

    class _Worker:
        def __init__(self, loader: ModelLoader, threads: int, gpus: float):
            import inspect

            import torch

            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
            from .models import load_model

            if gpus and "device" not in dict(loader.options):
                if "device" not in inspect.signature(load_model).parameters:
                    raise ExecutorError("--gpus-per-worker needs load_model(device=...), which this workbench lacks: "
                                        "run on CPU (--gpus-per-worker 0)")
                loader = ModelLoader(loader.name, tuple(sorted(loader.options + (("device", "cuda"),))))
            self.lm = loader()
            self.jobs: dict = {}

        def spec(self):
            return self.lm.spec

        def pid(self) -> int:
            return os.getpid()

        def run(self, job_id: int, job, cell):
            if job_id not in self.jobs:  # first cell of this grid here: set the job up once
                _setup(job, self.lm)
                self.jobs = {job_id: job}  # one grid at a time: drop the previous job's state
            return self.jobs[job_id].run(self.lm, cell)

    _WORKER["cls"] = ray.remote(_Worker)
    return _WORKER["cls"]
