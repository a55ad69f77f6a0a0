"""Run configuration: one validated YAML file is the whole story of a run.

Every field is documented here and checked at load time, before anything starts: unknown keys
(with the nearest valid key suggested), wrong types, fewer than two tasks, unknown operator or
scorer names. The resolved config is saved into the run folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cycleqd.errors import CycleQDError

__all__ = [
    "ConfigError",
    "EvolutionConfig",
    "FinalConfig",
    "ModelsConfig",
    "OperatorConfig",
    "RunConfig",
    "TaskConfig",
    "apply_overrides",
    "load_config",
]


class ConfigError(CycleQDError):
    """A run config that cannot be used as it is; the message says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OperatorConfig(_Strict):
    """An operator looked up by name, with its parameters.

    Attributes:
        name: registered name, entry-point name or dotted path ``package.module:Factory``.
        params: keyword arguments of the operator's factory.
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TaskConfig(_Strict):
    """One task: its metric is one archive's quality and a descriptor of the others.

    Attributes:
        name: the task's name (an expert of the same name must exist).
        scorer: the scorer's registered name or dotted path.
        params: keyword arguments of the scorer's factory.
        bc_range: ``[low, high]`` of this task's metric as a behaviour descriptor; ``None`` derives
            it from the experts' scores (85 % of the weakest to 115 % of the strongest).
    """

    name: str
    scorer: str
    params: dict[str, Any] = Field(default_factory=dict)
    bc_range: tuple[float, float] | None = None

    @field_validator("bc_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"bc_range must be [low, high] with low < high, got {list(value)}")
        return value


class ModelsConfig(_Strict):
    """Where the base model and the experts come from.

    Either ``source`` names a builder that makes them (``digits``: the built-in demo), or
    ``base`` and ``experts`` give Hugging Face model directories / ``.safetensors`` files.

    Attributes:
        source: a model-source name (``paths`` when ``base``/``experts`` are given).
        params: keyword arguments of the source.
        base: the base model's path.
        experts: task name → expert path.
        dtype: storage dtype of weights (``float32``, ``bfloat16``, ``float16``; ``None``: as
            stored).
        device: where weights live and children are evaluated.
        allow_pickle: accept ``.bin``/``.pt`` checkpoints (they can run code when loaded).
    """

    source: str = "paths"
    params: dict[str, Any] = Field(default_factory=dict)
    base: str | None = None
    experts: dict[str, str] = Field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: str = "cpu"
    allow_pickle: bool = False

    @model_validator(mode="after")
    def _paths_complete(self) -> ModelsConfig:
        if self.source == "paths" and (self.base is None or not self.experts):
            raise ValueError(
                "give `base` and `experts` paths, or a `source` that builds them "
                "(for example `source: digits`)"
            )
        return self


class RacingConfig(_Strict):
    """Racing (:mod:`cycleqd.engine.racing`): children scored on growing prefixes first.

    Attributes:
        enabled: race children (off by default: a stopped child might have entered after all;
            ``bench/throughput.py`` measures how often).
        stages: prefix sizes (requests per task) scored before the full search split.
        z: the width of the bound that stops a child, in standard errors.
    """

    enabled: bool = False
    stages: list[int] = Field(default_factory=lambda: [20, 40])
    z: float = Field(2.0, gt=0)

    @field_validator("stages")
    @classmethod
    def _increasing(cls, stages: list[int]) -> list[int]:
        if not stages or any(n < 1 for n in stages) or stages != sorted(set(stages)):
            raise ValueError(f"racing.stages must be increasing positive sizes, got {stages}")
        return stages


class EvolutionConfig(_Strict):
    """The cyclic MAP-Elites loop.

    Attributes:
        generations: generations to run; generation ``g`` works on task ``g mod K``.
        batch_size: children per generation.
        bins: bins per behaviour descriptor (the paper: 15).
        selection: parent selection (``elite_sampling``, ``uniform``).
        crossover: crossover (``gaussian_task_arithmetic`` or a mergekit method).
        mutation: mutation (``svd_expert``, ``svd_child``, ``gaussian``, ``none``).
        cycle: cycle the active task (``false``: the ablation with fixed axes, task 0 only).
        racing: score children on prefixes of the search split first (off by default).
    """

    generations: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    bins: int = Field(15, ge=1)
    selection: OperatorConfig = OperatorConfig(name="elite_sampling")
    crossover: OperatorConfig = OperatorConfig(name="gaussian_task_arithmetic")
    mutation: OperatorConfig = OperatorConfig(name="svd_expert")
    cycle: bool = True
    racing: RacingConfig = RacingConfig()


class EvaluationConfig(_Strict):
    """Where candidates are scored, and how the loop waits for them.

    Attributes:
        backend: ``local`` (in this process) or ``ray`` (one Ray actor per worker; each loads
            the weights once, candidates travel as genomes).
        workers: Ray actors.
        cpus_per_worker: CPUs Ray reserves per actor.
        gpus_per_worker: GPUs per actor (fractions share a GPU).
        address: a Ray cluster to attach to (``auto``, ``ray://host:port``); unset: a local
            runtime.
        max_retries: retries of a candidate whose worker died.
        timeout_s: a candidate's time limit; past it the candidate is recorded as failed
            (on Ray its worker is replaced). Unset: no limit.
        schedule: ``generations`` (a batch of ``batch_size`` children, evaluated, then the
            next), ``steady`` (asynchronous MAP-Elites: a new child is made and dispatched as
            soon as one comes back, and the active task advances per child) or ``auto``
            (``steady`` on Ray, ``generations`` in-process).
        in_flight: children out for evaluation at once in the steady schedule; default:
            ``workers + 1`` on Ray (a worker never waits for the driver), 1 in-process.
        ordered: the steady schedule inserts children in the order they were made (waiting for
            a slow one): the run is deterministic, whatever the number of workers, and a
            resumed run ends as an uninterrupted one. Unordered inserts each as it comes back.
    """

    backend: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    address: str | None = None
    max_retries: int = Field(2, ge=0)
    timeout_s: float | None = Field(None, gt=0)
    schedule: Literal["auto", "generations", "steady"] = "auto"
    in_flight: int | None = Field(None, ge=1)
    ordered: bool = False

    @property
    def steady(self) -> bool:
        """Whether the run uses the steady-state schedule."""
        return self.schedule == "steady" or (self.schedule == "auto" and self.backend == "ray")

    @property
    def max_in_flight(self) -> int:
        """Children out at once in the steady schedule."""
        if self.in_flight is not None:
            return self.in_flight
        return self.workers + 1 if self.backend == "ray" else 1


class ReportMetric(_Strict):
    """A metric reported for every model in ``summary.json`` but not evolved on.

    Attributes:
        name: the metric's column name (must differ from the task names).
        scorer: the scorer's registered name or dotted path.
        params: keyword arguments of the scorer's factory.
    """

    name: str
    scorer: str
    params: dict[str, Any] = Field(default_factory=dict)


class FinalConfig(_Strict):
    """The final model and the report.

    Attributes:
        method: ``softmax`` (the paper: ``β = softmax`` of the best elites' qualities) or
            ``validation`` (the final model chosen on val among softmax merges at several
            temperatures and soups of the best elites, by ``objective``).
        objective: what every choice on val maximises: the final model's, the baselines'
            λ and density sweeps, and ``cycleqd compare``'s CMA-ES. ``mean``: the average over
            tasks (the paper's). ``retention``: the worst task's score as a fraction of that
            task's expert's val score, ties broken by the average (one model that keeps every
            skill, rather than one that trades the hardest away).
        lambdas: the λ values swept for the task-arithmetic baseline ``θ_base + λ Σ_k τ_k``.
        ties_densities: the densities swept for the TIES baseline (mergekit's ``ties``, every
            expert weighted 1); an empty list leaves the baseline out.
        report: further metrics scored on the test split for every reported model but never
            evolved on (the paper's language-retention table), each ``{name, scorer, params}``.
    """

    method: Literal["softmax", "validation"] = "softmax"
    objective: Literal["mean", "retention"] = "mean"
    lambdas: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2],
        min_length=1,
    )
    ties_densities: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0]
    )
    report: list[ReportMetric] = Field(default_factory=list)

    @field_validator("report")
    @classmethod
    def _unique_report(cls, report: list[ReportMetric]) -> list[ReportMetric]:
        names = [m.name for m in report]
        if len(set(names)) != len(names):
            raise ValueError(f"report metric names must be unique, got {names}")
        return report


class RunConfig(_Strict):
    """A complete, validated run.

    Attributes:
        name: the run's name (its default folder is ``archives/<name>``).
        seed: seeds every random choice of the run.
        cache_dir: where built experts and SVD factors are cached.
        models: base and experts.
        tasks: two or more tasks, one archive each.
        evolution: the loop.
        evaluation: where candidates are scored (in process, or on Ray).
        final: the final model and report.
    """

    name: str
    seed: int = 0
    cache_dir: str = "~/.cache/cycleqd"
    models: ModelsConfig
    tasks: list[TaskConfig]
    evolution: EvolutionConfig = EvolutionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    final: FinalConfig = FinalConfig()

    @field_validator("tasks")
    @classmethod
    def _two_or_more(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        if len(tasks) < 2:
            raise ValueError(
                f"CycleQD needs at least 2 tasks (one archive each, the others' "
                f"metrics as its descriptors); got {len(tasks)}"
            )
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks

    @model_validator(mode="after")
    def _experts_match_tasks(self) -> RunConfig:
        if self.models.source == "paths":
            tasks = [t.name for t in self.tasks]
            if sorted(self.models.experts) != sorted(tasks):
                raise ValueError(
                    f"models.experts must name one expert per task: tasks {tasks}, "
                    f"experts {sorted(self.models.experts)}"
                )
        return self

    @model_validator(mode="after")
    def _report_names_differ_from_tasks(self) -> RunConfig:
        clash = sorted({m.name for m in self.final.report} & set(self.task_names))
        if clash:
            raise ValueError(f"report metric name(s) {clash} are also task names; rename them")
        return self

    @model_validator(mode="after")
    def _racing_in_generations(self) -> RunConfig:
        if self.evolution.racing.enabled and self.evaluation.steady:
            raise ValueError(
                "evolution.racing needs the generational schedule: set "
                "evaluation.schedule: generations"
            )
        return self

    @property
    def task_names(self) -> list[str]:
        """Task names in config order."""
        return [t.name for t in self.tasks]

    def check_names(self) -> None:
        """Resolve every operator and scorer name now, so that a typo fails before the run.

        Raises:
            UnknownNameError: a name that no registry resolves (the registered ones listed).
        """
        from cycleqd.models.sources import SOURCES
        from cycleqd.operators import CROSSOVERS, MUTATIONS, SELECTIONS
        from cycleqd.scorers import SCORERS

        SELECTIONS.get(self.evolution.selection.name)
        CROSSOVERS.get(self.evolution.crossover.name)
        MUTATIONS.get(self.evolution.mutation.name)
        SOURCES.get(self.models.source)
        for task in [*self.tasks, *self.final.report]:
            SCORERS.get(task.scorer)


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The valid keys of the (sub)model at ``path`` (for suggestions)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            for inner in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    current = inner
                    break
    return list(getattr(current, "model_fields", {}))


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(RunConfig, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown key {where!r}{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "missing":
            lines.append(f"missing key {where!r}")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{where}: {err['msg']}{shown}")
    return ConfigError(f"{source}: invalid config:\n  - " + "\n  - ".join(lines))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config mapping.

    Raises:
        ConfigError: an override without ``=``, or one that indexes into a non-mapping.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r}: write overrides as key=value "
                "(for example evolution.generations=50)"
            )
        value = yaml.safe_load(raw) if raw else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not inside a mapping")
            node = node.setdefault(part, {})
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            raise ConfigError(f"--set {item!r}: {parts[-1]!r} is not inside a mapping")
    return data


def validate_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a config mapping.

    Raises:
        ConfigError: the mapping is not a valid run config (every problem listed).
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a run config is a YAML mapping (key: value lines), "
            f"got {type(data).__name__}"
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML run config.

    Raises:
        ConfigError: a missing file, malformed YAML (with its line), or an invalid config.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    data = apply_overrides(data if isinstance(data, dict) else data, overrides or [])
    return validate_config(data, str(path))
