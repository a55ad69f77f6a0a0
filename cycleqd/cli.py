"""The ``cycleqd`` command line: evolve, compare, plan, experts build, show, export.

Heavy libraries (torch, transformers, ribs, mergekit) are imported inside the commands, so that
``cycleqd --help`` answers at once.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Evolve language-model experts into one model that holds all their skills (CycleQD).",
)
#: The ``--set key.sub=value`` option every command that reads a config takes.
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: key.sub=value (repeatable)."),
]

console = Console()
errors = Console(stderr=True)


def _fail(exc: Exception) -> None:
    errors.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def evolve(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML run config (omit with --resume: the run folder holds it)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in the run folder.")
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run folder (default: archives/<name>).")
    ] = None,
    overrides: Overrides = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Score candidates on Ray workers of this cluster: 'auto' (the one `ray start` "
            "started here), 'ray://host:port' or the head's host:port.",
        ),
    ] = None,
) -> None:
    """Run CycleQD: seed the archives with the experts, evolve, report on the test split."""
    from cycleqd.config import ConfigError, load_config
    from cycleqd.engine.store import RunStore
    from cycleqd.engine.summary_table import summary_table
    from cycleqd.errors import CycleQDError

    try:
        existed = True
        if config is None and not resume:
            raise ConfigError("give a CONFIG file, or --resume --run-dir RUN to continue a run")
        if resume:
            if run_dir is None:
                if config is None:
                    raise ConfigError("--resume needs --run-dir RUN (or the CONFIG it came from)")
                run_dir = Path("archives") / load_config(config).name
            store = RunStore.open(run_dir)
            cfg = store.config()
            if overrides and config is None:
                raise ConfigError(
                    "--set changes a config: a resumed run keeps the config it was "
                    "started with (give the same CONFIG with --set to check it)"
                )
            if config is not None:
                wanted = load_config(config, overrides or [])
                if wanted != cfg:
                    raise ConfigError(
                        f"{config} differs from the config of the run in {run_dir}; "
                        "resume without CONFIG, or start a new run"
                    )
            if ray_address:  # where it runs may change, not how: the schedule stays
                cfg = _on_ray(cfg, ray_address, keep_schedule=True)
        else:
            cfg = load_config(config, overrides or [])
            if ray_address:
                cfg = _on_ray(cfg, ray_address, keep_schedule=False)
            cfg.check_names()
            root = run_dir or Path("archives") / cfg.name
            existed = root.exists()
            store = RunStore.create(root, cfg)
        try:
            summary = _evolve(cfg, store, resume)
        except BaseException:
            if not resume and store.checkpoint() is None:
                # failed before the first checkpoint (a missing model, say): leave nothing that
                # would block running the fixed config again
                for path in list(store.root.iterdir()) if existed else [store.root]:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            raise
    except CycleQDError as exc:
        _fail(exc)
    console.print(summary_table(summary))
    console.print(f"run folder: {store.root}")


def _on_ray(cfg: Any, address: str, *, keep_schedule: bool) -> Any:
    """``cfg`` scored on the Ray cluster at ``address``."""
    e = cfg.evaluation
    update: dict[str, Any] = {"backend": "ray", "address": address}
    if keep_schedule and e.schedule == "auto":
        update["schedule"] = "steady" if e.steady else "generations"
    return cfg.model_copy(update={"evaluation": e.model_copy(update=update)})


def _evolve(cfg: Any, store: Any, resume: bool) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from cycleqd.engine.evolver import Evolver
    from cycleqd.engine.progress import progress as stage

    progress = Progress(
        TextColumn("[bold]gen {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
        disable=not console.is_terminal,
    )
    with progress:
        bar = progress.add_task("evolve", total=cfg.evolution.generations, status="building")

        def show(report: Any) -> None:
            best = " ".join(f"{t}={s['best']:.3f}" for t, s in report.stats.items())
            coverage = sum(s["coverage"] for s in report.stats.values()) / len(report.stats)
            status = f"active={report.active_task} coverage={coverage:.2f} best: {best}"
            progress.update(bar, completed=report.generation + 1, status=status)
            stage(f"generation {report.generation + 1}/{report.generations} {status}")

        evolver = Evolver(cfg, store, on_generation=show)
        progress.update(bar, completed=evolver.generation, status="seeding")
        summary = evolver.run(resume=resume)
        if not console.is_terminal:
            console.print(
                f"finished {cfg.evolution.generations} generations, "
                f"{evolver.evaluations} evaluations"
            )
    return summary


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per method.")] = 3,
    jobs: Annotated[int, typer.Option("--jobs", help="Processes running methods at once.")] = 1,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Comparison folder (default: archives/<name>-compare)."),
    ] = None,
    overrides: Overrides = None,
    methods: Annotated[
        str | None,
        typer.Option("--methods", help="Comma-separated methods to run (default: all)."),
    ] = None,
) -> None:
    """Compare CycleQD, its ablations and the usual merges on the test split, over seeds.

    Every method picks its model on the val split with the same experts: base, experts, task
    arithmetic, TIES and DARE-TIES, CMA-ES with CycleQD's evaluation budget, a multi-task
    fine-tune (tinylm), and the ablation chain fixed axes → cycling → SVD mutation → elite
    sampling (CycleQD). Writes compare.md, compare.json and compare.png; rerun to resume.
    """
    import time

    from cycleqd.compare.study import compare as run_compare
    from cycleqd.config import load_config
    from cycleqd.errors import CycleQDError

    start = time.perf_counter()
    try:
        cfg = load_config(config, overrides or [])
        root = run_dir or Path("archives") / f"{cfg.name}-compare"

        def show(record: dict[str, Any]) -> None:
            test = record["test"]
            average = sum(test[t] for t in cfg.task_names) / len(cfg.task_names)
            console.print(
                f"{record['method']:>20} seed {record['seed']}: average {average:.3f} "
                f"({record['val_evaluations']} val evaluations, {record['seconds']:.0f} s)"
            )

        only = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        summary = run_compare(cfg, root, seeds=seeds, jobs=jobs, methods=only, on_cell=show)
    except CycleQDError as exc:
        _fail(exc)
    console.print((root / "compare.md").read_text(), markup=False, highlight=False)
    console.print(
        f"{len(summary['methods'])} methods, {seeds} seed(s) in "
        f"{(time.perf_counter() - start) / 60:.1f} min; written to {root}/compare.md, "
        "compare.json, compare.png"
    )


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    device: Annotated[
        str, typer.Option("--device", help="h200, h100, a100-80gb, a100-40gb, l40s.")
    ] = "h200",
    memory_gb: Annotated[
        float | None,
        typer.Option("--memory-gb", help="A worker's memory, instead of the device's."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    overrides: Overrides = None,
) -> None:
    """Print a worker's memory and a child's cost; exit 1 if a worker cannot fit.

    Nothing is loaded or started: shapes come from config.json / safetensors headers (or the
    built-in table of the paper's models).
    """
    from cycleqd.config import load_config
    from cycleqd.errors import CycleQDError
    from cycleqd.planning.plan import make_plan
    from cycleqd.planning.render import print_plan

    try:
        cfg = load_config(config, overrides)
        result = make_plan(cfg, device=device, memory_gb=memory_gb)
    except CycleQDError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        if not result.fits:
            raise typer.Exit(1)
        return
    print_plan(result, cfg, console, errors)
    if not result.fits:
        raise typer.Exit(1)


experts_app = typer.Typer(
    no_args_is_help=True, help="The run's base and expert models: build them, or check them."
)
app.add_typer(experts_app, name="experts")


@experts_app.command("build")
def experts_build(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Overrides = None,
) -> None:
    """Build (or find in the cache) the base and experts a run config uses; print their paths.

    Sources that train their models (``tinylm``, ``digits``) train them here once and cache them;
    ``cycleqd evolve`` builds them the same way when they are missing.
    """
    import time

    from cycleqd.config import load_config
    from cycleqd.errors import CycleQDError
    from cycleqd.models.sources import build_source

    try:
        cfg = load_config(config, overrides or [])
        source = build_source(cfg.models)
        start = time.perf_counter()
        base, experts = source.prepare(Path(cfg.cache_dir).expanduser())
        missing = [p for p in [base, *experts.values()] if not Path(p).exists()]
        if missing:
            raise CycleQDError(f"model path(s) do not exist: {', '.join(map(str, missing))}")
    except CycleQDError as exc:
        _fail(exc)
    console.print(f"models of {cfg.name!r} ready ({time.perf_counter() - start:.0f} s):")
    for name, path in [("base", base), *((f"expert {t}", p) for t, p in experts.items())]:
        console.print(f"  {name}: {path}", soft_wrap=True, highlight=False)
    if cfg.models.source == "tinylm":
        from cycleqd.suite.tinylm import build_info

        info = build_info(base)
        console.print(
            f"  weights sha256 {info['weights_sha256']} (built in {info['build_s']:.0f} s)",
            highlight=False,
        )


@app.command()
def show(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    top: Annotated[int, typer.Option(help="Elites listed per archive.")] = 5,
) -> None:
    """Print each archive's best elites and the final results."""
    from cycleqd.engine.run import load_run
    from cycleqd.engine.summary_table import summary_table
    from cycleqd.errors import CycleQDError

    try:
        loaded = load_run(run)
    except CycleQDError as exc:
        _fail(exc)
    for task in loaded.tasks:
        frame = loaded.archive(task)
        stats = loaded.archives.stats()[task]
        table = Table(
            title=f"archive {task!r}: {stats['elites']} elites, coverage "
            f"{stats['coverage']:.2f}, QD score {stats['qd_score']:.2f}"
        )
        table.add_column("genome")
        for t in loaded.tasks:
            table.add_column(t + (" (quality)" if t == task else ""), justify="right")
        for _, row in frame.head(top).iterrows():
            table.add_row(row["genome"][:12], *(f"{row[t]:.3f}" for t in loaded.tasks))
        console.print(table)
    if loaded.summary is not None:
        console.print(summary_table(loaded.summary))
    else:
        console.print(
            f"no final results yet (generation {loaded.generation} of "
            f"{loaded.config.evolution.generations})"
        )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    out: Annotated[Path, typer.Argument(help="Output folder (must not exist).")],
    final: Annotated[bool, typer.Option("--final", help="The final merged model.")] = False,
    best: Annotated[
        str | None, typer.Option("--best", help="The best elite of archive TASK.")
    ] = None,
    elite: Annotated[
        str | None, typer.Option("--elite", help="An elite by genome id (prefix).")
    ] = None,
) -> None:
    """Write a model as a Hugging Face checkpoint (or a safetensors state dict)."""
    from cycleqd.config import ConfigError
    from cycleqd.engine.run import load_run
    from cycleqd.errors import CycleQDError
    from cycleqd.weights._io import public_mkdtemp

    try:
        if sum([final, best is not None, elite is not None]) != 1:
            raise ConfigError("choose exactly one of --final, --best TASK, --elite ID")
        if out.exists():
            raise ConfigError(f"{out} already exists; choose a new output folder")
        loaded = load_run(run)
        which = "final" if final else (loaded.best(best) if best is not None else elite)
        genome_id = loaded.resolve(which)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = public_mkdtemp(out.parent, f".{out.name}.")
        try:
            loaded.to_hf(genome_id, tmp)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except CycleQDError as exc:
        _fail(exc)
    console.print(f"exported {genome_id} to {out}")


def main() -> None:
    """Entry point for ``python -m cycleqd``."""
    app()


if __name__ == "__main__":
    sys.exit(main())
