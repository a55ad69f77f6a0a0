"""Evaluation on Ray: one actor per worker slot; genomes go out, scores come back.

Each actor builds the run's weight space once (base, task vectors, SVD cache: from the paths the
config names) and keeps a resident model; a candidate travels as its genome's bytes (kilobytes),
never as weights. Candidates go to whichever actor is idle (:meth:`RayEvaluator.submit`,
:meth:`RayEvaluator.collect`: the steady-state loop), or as a batch whose results come back in
order (:meth:`RayEvaluator.evaluate`), so a run scores exactly as it would in-process.

Failures cost no run:

* a worker that dies (killed, out of memory, node lost) is replaced and its candidate retried on
  another, up to ``max_retries`` times; then the candidate is recorded as failed with the reason;
* a candidate past its time limit has its worker killed and replaced, and is recorded as failed
  (a hang would hang again: it is not retried);
* a scorer that raises makes its candidate fail with the exception's message (the worker lives).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cycleqd.errors import CycleQDError
from cycleqd.evaluation.protocol import Evaluation, Outcome
from cycleqd.weights.genome import Genome

__all__ = ["RayEvaluator"]


class _Worker:
    """The actor: the weight space and a resident model, built once from the run config."""

    def __init__(self, config_json: str, threads: int, build: Callable[..., Any]) -> None:
        import torch

        from cycleqd.config import RunConfig

        _unshadow_kernels()
        torch.set_num_threads(threads)  # the CPUs Ray reserved, for torch and the sandbox pool
        self.local = build(RunConfig.model_validate_json(config_json))

    def ready(self) -> tuple[str, int]:
        """Where this worker runs: its node's id and its process id."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def evaluate(
        self, genome: bytes, split: str
    ) -> tuple[list[float], str | None, dict[str, tuple[float, ...]]]:
        result = self.local.evaluate([Genome.from_bytes(genome)], split)
        return result.scores[0].tolist(), result.errors[0], result.items[0]


@dataclass
class _Job:
    ticket: int
    genome_id: str
    payload: bytes
    split: str
    attempts: int = 0


@dataclass
class _Slot:
    """One worker slot: its actor, and what it is doing."""

    actor: Any
    starting: Any = None  # the ``ready`` call of an actor that is starting
    started_at: float = 0.0
    job: _Job | None = None
    call: Any = None  # the ``evaluate`` call running ``job``
    since: float = 0.0
    node: str = ""
    pid: int = 0


def _checkout() -> str | None:
    """The cycleqd checkout this package runs from (an editable install), else ``None``."""
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
    is_checkout = os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isfile(
        os.path.join(root, "kernels", "__init__.py")
    )
    return root if is_checkout else None


def _unshadow_kernels() -> None:
    """Drop a cycleqd checkout from this worker's path (Ray runs workers in the driver's folder).

    Its top-level ``kernels/`` folder would shadow the Hugging Face ``kernels`` package that
    transformers imports.
    """
    checkout = _checkout()
    if checkout is not None:
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != checkout]


def _local_runtime_env() -> dict[str, Any]:
    """Let local workers import what the driver can: its script folder, cwd and added paths.

    Ray gives workers the driver's working directory but not the folders added to ``sys.path``
    (a plug-in scorer's project, the tests' folder); entries under the interpreter's own prefix
    are left out, the workers have them. So is a checkout of cycleqd itself (workers import
    cycleqd from its install): first on a worker's path, its top-level ``kernels/`` folder would
    shadow the Hugging Face ``kernels`` package that transformers imports.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    checkout = _checkout()
    extra = [
        path
        for path in (os.path.realpath(p or os.getcwd()) for p in sys.path)
        if os.path.isdir(path)
        and path != checkout
        and not any(path.startswith(prefix) for prefix in prefixes)
    ]
    inherited = os.environ.get("PYTHONPATH")
    paths = list(dict.fromkeys(extra + ([inherited] if inherited else [])))
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}} if paths else {}


class RayEvaluator:
    """Scores genomes on Ray actors (the :class:`cycleqd.evaluation.local.Evaluator` interface).

    Args:
        config: the run's :class:`cycleqd.config.RunConfig` (each actor rebuilds the weight
            space and the scorers from it).
        build: what each actor calls with the config to build its in-process evaluator
            (:func:`cycleqd.evaluation.factory.local_evaluator`; pickled by reference).
        workers: actors, one per worker slot.
        cpus_per_worker: CPUs Ray reserves per actor (its torch threads and sandbox processes).
        gpus_per_worker: GPUs per actor (fractions share a GPU).
        address: a Ray cluster to attach to (``"auto"``, ``"ray://host:port"``); ``None`` starts
            a local runtime, quietly.
        max_retries: times a candidate is retried on a replacement worker after its worker died.
        timeout_s: a candidate's time limit on a worker; ``None``: none.
        start_timeout: seconds to wait for a worker to start (building the experts included).

    Attributes:
        bytes_sent: genome bytes sent to workers so far.
        candidates_sent: candidates dispatched so far (retries included).
        retries: one message per candidate retried after a worker died.
        nodes: the node id of each worker slot's first actor.
    """

    def __init__(
        self,
        config: Any,
        *,
        build: Callable[..., Any],
        workers: int = 2,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        max_retries: int = 2,
        timeout_s: float | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        import ray

        if workers < 1:
            raise CycleQDError(f"a Ray evaluator needs at least 1 worker, got {workers}")
        if not ray.is_initialized():
            _init_ray(address)
        self.tasks = config.task_names
        self._config_json = config.model_dump_json()
        self._actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self._threads = max(1, math.floor(cpus_per_worker))
        self._build = build
        self._describe = (
            f"{workers} Ray worker(s) of {cpus_per_worker:g} CPU(s) and {gpus_per_worker:g} GPU(s)"
        )
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.start_timeout = start_timeout
        self.slots = [self._spawn() for _ in range(workers)]
        try:
            started = ray.get([slot.starting for slot in self.slots], timeout=start_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise CycleQDError(
                f"{self._describe} did not start within {start_timeout:.0f} s; the cluster has "
                f"{ray.available_resources()} free: lower evaluation.workers or "
                "evaluation.cpus_per_worker"
            ) from None
        except ray.exceptions.RayError as exc:
            self.close()
            raise CycleQDError(f"a Ray worker failed to start: {exc}") from None
        for slot, (node, pid) in zip(self.slots, started, strict=True):
            slot.starting, slot.node, slot.pid = None, node, pid
        self.nodes: list[str] | None = [slot.node for slot in self.slots]
        self.materializer = None  # the weights live in the workers
        self.bytes_sent = 0
        self.candidates_sent = 0
        self.retries: list[str] = []
        self._queue: list[_Job] = []
        self._done: list[Outcome] = []
        self._tickets = itertools.count()

    @property
    def actors(self) -> list[Any]:
        """The current actor of every worker slot."""
        return [slot.actor for slot in self.slots]

    def _spawn(self) -> _Slot:
        actor = self._actor_class.remote(self._config_json, self._threads, self._build)
        return _Slot(actor, starting=actor.ready.remote(), started_at=time.monotonic())

    def _replace(self, slot: _Slot) -> None:
        import ray

        ray.kill(slot.actor, no_restart=True)
        fresh = self._spawn()
        slot.actor, slot.starting, slot.started_at = fresh.actor, fresh.starting, fresh.started_at
        slot.job = slot.call = None

    # --- submitting and collecting -----------------------------------------------------------

    def submit(self, genome: Genome, split: str = "val") -> int:
        """Queue ``genome``; it goes to the first idle worker. Returns its ticket."""
        ticket = next(self._tickets)
        self._queue.append(_Job(ticket, genome.id, genome.to_bytes(), split))
        self._dispatch()
        return ticket

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self._queue:
                return
            if slot.starting is None and slot.job is None:
                job = self._queue.pop(0)
                slot.job, slot.since = job, time.monotonic()
                slot.call = slot.actor.evaluate.remote(job.payload, job.split)
                self.bytes_sent += len(job.payload)
                self.candidates_sent += 1

    def _fail(self, job: _Job, reason: str) -> None:
        self._done.append(Outcome(job.ticket, np.full(len(self.tasks), np.nan), reason))

    def _worker_died(self, slot: _Slot, reason: str) -> None:
        job = slot.job
        self._replace(slot)
        if job is None:
            return
        job.attempts += 1
        if job.attempts > self.max_retries:
            self._fail(job, f"{reason} {job.attempts} times; gave up")
        else:
            self.retries.append(f"candidate {job.genome_id}: {reason}; retried")
            self._queue.insert(0, job)

    def collect(self) -> list[Outcome]:
        """Wait until at least one submitted candidate finished; return every finished one.

        One wait for the first result, then one that returns at once with every other call
        finished by then: a steady loop with many workers gets all of them in one collect.
        """
        import ray
        from ray.exceptions import RayActorError, RayError

        while not self._done:
            waiting = {s.starting: s for s in self.slots if s.starting is not None}
            running = {s.call: s for s in self.slots if s.call is not None}
            if not running and not self._queue:
                return []
            deadlines = [s.since + self.timeout_s for s in running.values() if self.timeout_s]
            deadlines += [s.started_at + self.start_timeout for s in waiting.values()]
            wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            refs = [*waiting, *running]
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
            if ready and len(refs) > 1:  # and every other call finished by now, in one wait
                more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                ready = list(dict.fromkeys([*ready, *more]))
            for ref in ready:
                if ref in waiting:
                    slot = waiting[ref]
                    try:
                        slot.node, slot.pid = ray.get(ref)
                        slot.starting = None
                    except RayError as exc:  # the replacement died while starting: again
                        self.retries.append(f"a replacement worker failed to start: {exc}")
                        self._replace(slot)
                    continue
                slot = running[ref]
                job = slot.job
                assert job is not None
                try:
                    scores, error, items = ray.get(ref)
                except RayActorError as exc:
                    self._worker_died(slot, f"worker died ({type(exc).__name__})")
                    continue
                except RayError as exc:
                    slot.job = slot.call = None
                    self._fail(job, f"{type(exc).__name__}: {exc}")
                    continue
                slot.job = slot.call = None
                scores = np.array(scores, dtype=np.float64)
                self._done.append(Outcome(job.ticket, scores, error, items))
            now = time.monotonic()
            for slot in self.slots:
                if slot.call is not None and self.timeout_s and now - slot.since > self.timeout_s:
                    job = slot.job
                    assert job is not None
                    self._replace(slot)  # the only way to stop a hung call: its worker goes
                    self._fail(job, f"exceeded the time limit of {self.timeout_s:g} s")
                elif slot.starting is not None and now - slot.started_at > self.start_timeout:
                    raise CycleQDError(
                        f"a replacement Ray worker did not start within {self.start_timeout:.0f}"
                        f" s; the cluster has {ray.available_resources()} free"
                    )
            self._dispatch()
        out, self._done = self._done, []
        return out

    def evaluate(self, genomes: Sequence[Genome], split: str = "val") -> Evaluation:
        """Scores of ``genomes`` in order; a failed candidate's row is NaN, its reason recorded."""
        tickets = {self.submit(g, split): i for i, g in enumerate(genomes)}
        rows = np.full((len(genomes), len(self.tasks)), np.nan)
        errors: list[str | None] = [None] * len(genomes)
        items: list[dict[str, tuple[float, ...]]] = [{} for _ in genomes]
        left = len(tickets)
        while left:
            for outcome in self.collect():
                i = tickets[outcome.ticket]
                rows[i], errors[i], items[i] = outcome.scores, outcome.error, outcome.items
                left -= 1
        return Evaluation(rows, errors, items)

    def drain_retries(self) -> list[str]:
        """The retry messages since the last call (the evolver logs them as events)."""
        out, self.retries = self.retries, []
        return out

    @property
    def bytes_per_candidate(self) -> float:
        """Mean genome bytes sent per dispatched candidate."""
        return self.bytes_sent / max(self.candidates_sent, 1)

    def close(self) -> None:
        """Stop the actors (a runtime this evaluator started stays up for reuse)."""
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots = []


def _init_ray(address: str | None) -> None:
    """Attach to ``address``, or start a local runtime; quietly either way."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=True,
    )
    if address is None:
        kwargs["runtime_env"] = _local_runtime_env()
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CycleQDError(
            f"could not attach to the Ray cluster at {address!r}: {exc}. Start one with "
            "`ray start --head` (then --ray-address auto), or leave --ray-address out to run a "
            "local Ray runtime"
        ) from None
