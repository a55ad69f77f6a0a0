"""The cyclic MAP-Elites loop of CycleQD (Kuroki et al., ICLR 2025, Algorithm 1).

Seed every archive with the experts; in generation ``g`` the active task is ``k = g mod K``:
select parents from archive ``k``, cross them over, mutate the child, evaluate it on every task
and offer it to every archive. After the last generation the best elite of each archive is merged
into the final model, ``θ_base + Σ_k β_k τ*_k``, and reported on the held-out test split beside
the base, the experts and the best task-arithmetic merge.

All randomness comes from one generator whose state is checkpointed with the archives after every
generation, so a run resumed after a crash ends exactly as an uninterrupted one.

Asynchronous MAP-Elites (the default on Ray) is :mod:`cycleqd.engine.steady`; racing (children
scored on prefixes first, ``evolution.racing``) is :mod:`cycleqd.engine.racing`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cycleqd.config import ConfigError, RunConfig
from cycleqd.engine.archive import Archives, derive_ranges
from cycleqd.engine.choice import Chooser
from cycleqd.engine.final import baselines, final_model, score_report
from cycleqd.engine.progress import GenerationReport, progress
from cycleqd.engine.racing import score_children
from cycleqd.engine.state import loop_state, restore_loop
from cycleqd.engine.steady import SteadySchedule
from cycleqd.engine.store import RunStore
from cycleqd.errors import CycleQDError
from cycleqd.evaluation.factory import run_evaluator
from cycleqd.evaluation.protocol import SEARCH, Evaluator
from cycleqd.models.sources import load_models
from cycleqd.operators import CROSSOVERS, MUTATIONS, SELECTIONS, MutationContext
from cycleqd.weights.genome import Genome
from cycleqd.weights.materialize import Materializer

__all__ = ["Evolver", "GenerationReport"]


class Evolver:
    """Runs (or resumes) one CycleQD run in a run folder.

    Args:
        config: the validated run config.
        store: the run folder.
        on_generation: called after every generation (progress display).
        evaluator: an evaluator to use instead of an in-process one.
    """

    def __init__(
        self,
        config: RunConfig,
        store: RunStore,
        *,
        on_generation: Callable[[GenerationReport], None] | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.cfg = config
        self.store = store
        self.tasks = config.task_names
        self.on_generation = on_generation
        config.check_names()
        self.source, self.space = load_models(config)
        self._owns_evaluator = evaluator is None
        self.evaluator = evaluator or run_evaluator(config, self.source, self.space)
        self.materializer: Materializer = self.evaluator.materializer or Materializer(self.space)
        evo = config.evolution
        self.selection = SELECTIONS.build(evo.selection.name, **evo.selection.params)
        self.crossover = CROSSOVERS.build(evo.crossover.name, **evo.crossover.params)
        self.mutation = MUTATIONS.build(evo.mutation.name, **evo.mutation.params)
        self.genomes: dict[str, Genome] = {}
        self.table: list[str] = []
        self.rng = np.random.default_rng(config.seed)
        self.archives: Archives | None = None
        self.generation = 0
        self.evaluations = self.requests = 0
        self.search_sizes: list[int] = []  # requests per task in the search split (racing)
        # the final choice and the baselines' sweeps (on val, by final.objective)
        self.chooser = Chooser(self.evaluator, self.space, config.final.objective)
        self.expert_scores: list[list[float]] = []
        self.steady = config.evaluation.steady
        # the steady schedule (asynchronous MAP-Elites) keeps what is out for evaluation
        self.schedule = SteadySchedule(self) if self.steady else None

    # --- Algorithm 1: seed, then each generation select, cross, mutate, evaluate, insert ---

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Seed (or resume), evolve to the configured generation count, report.

        Returns:
            The summary table (``summary.json``).
        """
        try:
            state = self.evolve(resume=resume)
            summary = self._summary(state)
        finally:
            if self._owns_evaluator:
                self.close()
        return summary

    def evolve(self, *, resume: bool = False) -> dict[str, Any] | None:
        """Seed (or resume from the checkpoint) and evolve to the configured generation count.

        Returns:
            The checkpoint resumed from (``None`` for a new run).

        Raises:
            ConfigError: the run folder holds a run and ``resume`` is false.
        """
        state = self.store.checkpoint()
        if resume:
            self.store.remove_temp_files()  # a kill mid-write leaves its temp file
        if state is not None:
            if not resume:
                raise ConfigError(f"{self.store.root} holds a run already; pass --resume")
            restore_loop(self, state)
        else:
            if resume:  # killed while seeding: what it logged counts for nothing, seed again
                self.store.rewind_logs({})
            self.seed()
        nodes = self.evaluator.nodes
        if nodes is not None:  # where the workers run (Ray): one event per start or resume
            self.store.append("events.jsonl", {"event": "workers", "nodes": nodes})
        if self.schedule:
            self.schedule.run()
        while self.generation < self.cfg.evolution.generations:
            self.step()
        return state

    def seed(self) -> None:
        """Evaluate the experts on every task; derive descriptor ranges; seed every archive."""
        progress(f"seeding: scoring {len(self.tasks)} experts")
        experts = [Genome.expert(self.space, k) for k in range(len(self.tasks))]
        result = self.evaluator.evaluate(experts, SEARCH)
        if np.isnan(result.scores).any():
            bad = next(e for e in result.errors if e)
            raise ConfigError(f"an expert could not be scored ({bad}); fix the scorer or model")
        self.evaluations += len(experts)
        self.requests += sum(len(v) for items in result.items for v in items.values())
        self.search_sizes = [len((result.items or [{}])[0].get(t, ())) for t in self.tasks]
        self.expert_scores = result.scores.tolist()
        derived = derive_ranges(result.scores)
        ranges = [t.bc_range or derived[j] for j, t in enumerate(self.cfg.tasks)]
        self.archives = Archives(tasks=self.tasks, bins=self.cfg.evolution.bins, ranges=ranges)
        for k, genome in enumerate(experts):
            elite = self._register(genome)
            entered = self.archives.insert(elite, result.scores[k])
            record = {"event": "seed", "expert": self.tasks[k], "genome": genome.id}
            self.store.append("events.jsonl", record | self._outcome(result.scores[k], entered))
        self.store.write_checkpoint(loop_state(self))

    def active_task(self, generation: int) -> int:
        """The task whose archive generation ``generation`` works on."""
        return generation % len(self.tasks) if self.cfg.evolution.cycle else 0

    def step(self) -> GenerationReport:
        """Run one generation, log it and checkpoint."""
        assert self.archives is not None
        start = time.perf_counter()
        g, k = self.generation, self.active_task(self.generation)
        children, lineage = [], []
        for _ in range(self.cfg.evolution.batch_size):
            child, parents, reason = self.make_child(k)
            if child is None:
                record = {"event": "failed", "generation": g, "active": self.tasks[k]}
                self.store.append("events.jsonl", record | {"parents": parents, "reason": reason})
                continue
            children.append(child)
            lineage.append(parents)
        result, stopped, requests = score_children(
            self.evaluator, children, self.archives, self.cfg.evolution.racing, self.search_sizes
        )
        self.evaluations, self.requests = self.evaluations + len(children), self.requests + requests
        outcomes = zip(children, result.scores, result.errors, lineage, stopped, strict=True)
        for child, scores, error, parents, stop in outcomes:
            record = {"event": "child", "generation": g, "active": self.tasks[k]}
            record |= {"genome": child.id, "parents": parents}
            if stop:  # raced out: it could not enter any archive, never offered
                self.store.append("events.jsonl", record | self._outcome(scores, [], "stopped"))
            else:
                self.log_and_insert(record, child, scores, error)
        return self.close_generation(k, start)

    def make_child(self, k: int) -> tuple[Genome | None, list[str], str | None]:
        """A child of two parents selected from archive ``k``; ``None`` and why if it failed."""
        assert self.archives is not None
        ctx = MutationContext(self.space, self.materializer, k, self.rng)
        data = self.archives.elites(k)
        picked = self.selection(data["objective"], data["measures"], 2, self.rng)
        parents = [self.genome(int(data["elite"][i])) for i in picked]
        try:
            child = self.mutation(self.crossover(parents, self.rng, self.space), ctx)
        except CycleQDError as exc:  # a bad child (NaN/Inf in svd_child, Σw ≈ 0) is logged
            return None, [p.id for p in parents], f"{type(exc).__name__}: {exc}"
        return child, [p.id for p in parents], None

    def log_and_insert(
        self, record: dict[str, Any], child: Genome, scores: Any, error: str | None
    ) -> None:
        """Offer an evaluated child to every archive and log it (``failed`` with ``error``)."""
        assert self.archives is not None
        if error is not None:
            record.update(event="failed", reason=error)
        else:
            entered = self.archives.insert(len(self.table), scores)
            if entered:
                self._register(child)
            record |= self._outcome(scores, entered)
        self.store.append("events.jsonl", record)

    def _outcome(self, scores: Any, entered: list[int], event: str | None = None) -> dict[str, Any]:
        """A log record's scores by task and the archives a candidate entered (and its event)."""
        named = dict(zip(self.tasks, scores.tolist(), strict=True))
        out = {"scores": named, "entered": [self.tasks[j] for j in entered]}
        return out | ({"event": event} if event else {})

    def close_generation(self, k: int, start: float) -> GenerationReport:
        """Log retries and metrics, advance the generation, checkpoint, report progress."""
        assert self.archives is not None
        g = self.generation
        for reason in self.evaluator.drain_retries():
            self.store.append("events.jsonl", {"event": "retry", "generation": g, "reason": reason})
        stats = self.archives.stats()
        metrics = {
            "generation": g,
            "active": self.tasks[k],
            "evaluations": self.evaluations,
            "requests": self.requests,
            "archives": stats,
        }
        if self.evaluator.bytes_per_candidate is not None:  # what a distributed evaluator sends
            metrics["bytes_per_candidate"] = self.evaluator.bytes_per_candidate
        self.store.append("metrics.jsonl", metrics)
        self.generation += 1
        self.store.write_checkpoint(loop_state(self))
        report = GenerationReport(
            g, self.cfg.evolution.generations, self.tasks[k], stats, time.perf_counter() - start
        )
        if self.on_generation is not None:
            self.on_generation(report)
        return report

    # --- the genome table (archives hold its indices; the run folder, the genomes) ------------

    def genome(self, elite: int) -> Genome:
        """The genome of elite ``elite`` (genome-table index)."""
        genome_id = self.table[elite]
        if genome_id not in self.genomes:
            self.genomes[genome_id] = self.store.load_genome(genome_id)
        return self.genomes[genome_id]

    def _register(self, genome: Genome) -> int:
        self.genomes[genome.id] = genome
        self.table.append(genome.id)
        self.store.save_genome(genome)
        return len(self.table) - 1

    # --- the final model and the report -------------------------------------------------------

    def _summary(self, state: dict[str, Any] | None) -> dict[str, Any]:
        summary = self.store.read_json("summary.json")
        if summary is None or not (state or {}).get("finished"):
            summary = self.finish()
        return summary

    def final_genome(self) -> tuple[Genome, dict[str, Any]]:
        """The final model and how it was chosen (:func:`cycleqd.engine.final.final_model`)."""
        assert self.archives is not None
        chosen, info = final_model(
            self.cfg.final, self.archives, self.tasks, self.genome, self.expert_scores, self.chooser
        )
        # what the CycleQD model cost: seeds, children and this choice (the experts' val scores
        # included; the evolution's own count stays seeds and children)
        info["evaluations"] += self.evaluations
        return chosen, info

    def finish(self) -> dict[str, Any]:
        """Choose the final model and baselines on val; score everything on test; write files."""
        final, info = self.final_genome()
        methods, chosen = baselines(self.space, self.chooser, self.cfg.final)
        info |= chosen
        methods["cycleqd_final"] = final
        summary = score_report(
            methods, self.evaluator, self.space, self.source, self.materializer, self.cfg.final
        )
        self.store.write_final(final, info, summary)
        from cycleqd.engine.plots import write_plots

        write_plots(self.store, self.archives)
        self.store.write_checkpoint(loop_state(self, finished=True))
        return summary

    def close(self) -> None:
        """Release the evaluator's workers (Ray actors)."""
        self.evaluator.close()
