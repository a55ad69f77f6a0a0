"""A run folder for notebooks: archives as DataFrames, heatmaps, lineage, weights and export."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from cycleqd.config import ConfigError, RunConfig
from cycleqd.engine.archive import Archives
from cycleqd.engine.store import RunStore
from cycleqd.weights.genome import Genome

__all__ = ["Run", "load_run"]


def load_run(path: str | Path) -> Run:
    """Open a run folder written by ``cycleqd evolve``.

    Raises:
        ConfigError: the folder is not a run, or has no checkpoint yet.
    """
    return Run(RunStore.open(path))


class Run:
    """A run folder. Elites are referred to by genome id (or a unique prefix of one).

    Attributes:
        store: the run folder.
        config: the run's resolved config.
        tasks: task names.
        archives: the K archives as of the last checkpoint.
        generation: generations completed at the last checkpoint.
        summary: the test-split table (``None`` until the run finishes).
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.config: RunConfig = store.config()
        self.tasks = self.config.task_names
        state = store.checkpoint()
        if state is None:
            raise ConfigError(f"{store.root} has no checkpoint yet: the run has not seeded")
        self.generation: int = state["generation"]
        self.archives = Archives.from_state(state["archives"])
        self.table: list[str] = state["table"]
        self.summary: dict[str, Any] | None = store.read_json("summary.json")
        self.final_info: dict[str, Any] | None = store.read_json("final.json")

    @property
    def root(self) -> Path:
        """The run folder."""
        return self.store.root

    def archive(self, task: str) -> Any:
        """Archive ``task`` as a pandas DataFrame: one row per elite, best first.

        Columns: ``genome``, ``quality`` (this task's score), one column per task's score,
        ``cell``.
        """
        import pandas as pd

        k = self._task_index(task)
        data = self.archives.elites(k)
        rows = []
        for objective, measures, elite, cell in zip(
            data["objective"], data["measures"], data["elite"], data["index"], strict=True
        ):
            scores = list(measures)
            scores.insert(k, objective)
            rows.append(
                {
                    "genome": self.table[int(elite)],
                    "quality": float(objective),
                    **{t: float(s) for t, s in zip(self.tasks, scores, strict=True)},
                    "cell": int(cell),
                }
            )
        frame = pd.DataFrame(rows, columns=["genome", "quality", *self.tasks, "cell"])
        return frame.sort_values("quality", ascending=False, ignore_index=True)

    @property
    def archive_frames(self) -> dict[str, Any]:
        """Every archive as a DataFrame, by task."""
        return {t: self.archive(t) for t in self.tasks}

    def results(self) -> Any:
        """The test report as a pandas DataFrame, one row per method and column.

        Columns: ``method``, ``column`` (each task, ``average``, ``retention``, report
        metrics), ``score``, ``low`` / ``high`` (its 95% bootstrap interval over requests) and
        ``difference``, ``difference_low`` / ``difference_high``: the final model minus this
        method on the same requests, with its interval (NaN where not known).

        Raises:
            ConfigError: the run has not finished (no ``summary.json``).
        """
        import pandas as pd

        if self.summary is None:
            raise ConfigError(f"{self.root} has no report yet: the run has not finished")
        intervals = self.summary.get("intervals", {})
        nan = [float("nan")] * 3
        rows = []
        for method, scores in self.summary["methods"].items():
            for column, value in scores.items():
                low, high = intervals.get("methods", {}).get(method, {}).get(column, nan[:2])
                diff = intervals.get("differences", {}).get(method, {}).get(column, nan)
                rows.append(
                    {
                        "method": method,
                        "column": column,
                        "score": value,
                        "low": low,
                        "high": high,
                        "difference": diff[0],
                        "difference_low": diff[1],
                        "difference_high": diff[2],
                    }
                )
        return pd.DataFrame(rows)

    def heatmap(self, task: str, ax: Any = None) -> Any:
        """Archive ``task`` drawn as a heatmap (matplotlib axes)."""
        from cycleqd.engine.plots import heatmap

        return heatmap(self.archives, self._task_index(task), ax)

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise ConfigError(f"unknown task {task!r}; this run's tasks: {', '.join(self.tasks)}")
        return self.tasks.index(task)

    # --- genomes -------------------------------------------------------------------------------

    def resolve(self, elite: str) -> str:
        """The full genome id of ``elite`` (an id, a unique id prefix, or ``final``).

        Raises:
            ConfigError: no stored genome, or several, match.
        """
        if elite == "final":
            if self.final_info is None:
                raise ConfigError("the run has not finished: it has no final model yet")
            return self.final_info["final_genome"]
        stored = [p.stem for p in (self.root / "genomes").glob(f"{elite}*.genome")]
        if len(stored) != 1:
            what = "no genome" if not stored else f"{len(stored)} genomes"
            raise ConfigError(
                f"{what} of this run match {elite!r}; use an id from `cycleqd "
                "show` (a unique prefix is enough)"
            )
        return stored[0]

    def genome(self, elite: str) -> Genome:
        """The genome of ``elite``."""
        return self.store.load_genome(self.resolve(elite))

    def best(self, task: str) -> str:
        """Genome id of archive ``task``'s best elite."""
        elite, _ = self.archives.best(self._task_index(task))
        return self.table[elite]

    def lineage(self, elite: str) -> list[dict[str, Any]]:
        """``elite`` and its ancestors, breadth first: id, operator, mutation, parents."""
        events = {
            e["genome"]: e
            for e in self.store.read_log("events.jsonl")
            if e["event"] in ("seed", "child") and e.get("entered")
        }
        out, queue, seen = [], [self.resolve(elite)], set()
        while queue:
            gid = queue.pop(0)
            if gid in seen:
                continue
            seen.add(gid)
            meta = (
                dict(self.store.load_genome(gid).meta)
                if self.store.genome_path(gid).is_file()
                else {}
            )
            parents = list(meta.get("parent_ids", []))
            out.append(
                {
                    "genome": gid,
                    "op": meta.get("op", meta.get("origin")),
                    "mutation": meta.get("mutation"),
                    "parents": parents,
                    "generation": events.get(gid, {}).get("generation"),
                    "scores": events.get(gid, {}).get("scores"),
                }
            )
            queue.extend(parents)
        return out

    @cached_property
    def _evaluator_parts(self) -> tuple[Any, Any]:
        from cycleqd.models.sources import load_models
        from cycleqd.weights.materialize import Materializer

        source, space = load_models(self.config)
        return source, Materializer(space)

    def materialize(self, elite: str) -> dict[str, Any]:
        """A fresh copy of ``elite``'s weights (a state dict)."""
        _, materializer = self._evaluator_parts
        return materializer.weights(self.genome(elite))

    def model(self, elite: str) -> Any:
        """``elite`` as a torch module of the run's architecture."""
        from cycleqd.models.sources import load_into

        source, _ = self._evaluator_parts
        return load_into(source.make_model(), self.materialize(elite))

    def to_hf(self, elite: str, out_dir: str | Path) -> Path:
        """Export ``elite`` as a loadable checkpoint.

        A Hugging Face directory with the base's tokenizer for transformers models;
        ``model.safetensors`` otherwise.
        """
        source, _ = self._evaluator_parts
        return source.export(self.materialize(elite), Path(out_dir))
