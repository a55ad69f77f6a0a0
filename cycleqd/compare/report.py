"""A comparison's summary over seeds, its paired differences, ``compare.md`` and ``compare.png``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cycleqd.compare.context import builds_experts
from cycleqd.compare.methods import _once, evaluation_budget, methods_of
from cycleqd.config import RunConfig
from cycleqd.stats import interval, resampled_columns, retention

__all__ = ["REFERENCE"]

#: The method the others are compared with, pairwise on the same requests.
REFERENCE = "cycleqd"


def _summarise(cfg: RunConfig, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    tasks = cfg.task_names
    columns = [*tasks, "average", "retention", *(m.name for m in cfg.final.report)]
    experts = {t: f"expert_{t}" for t in tasks}
    # every seed's results, a method run once standing for every seed (the same experts)
    at: dict[int, dict[str, dict[str, Any]]] = {seed: {} for seed in seeds}
    for r in records:
        for seed in seeds if _once(cfg, r["method"]) else [r["seed"]]:
            if seed in at:
                at[seed][r["method"]] = r
    resampled = {
        seed: resampled_columns(
            {m: r.get("items", {}) for m, r in cells.items()}, tasks, experts, seed=0
        )
        for seed, cells in at.items()
    }

    def value(seed: int, method: str, column: str) -> float:
        cells = at[seed]
        row = cells[method]["test"]
        if column == "average":
            return float(np.mean([row[t] for t in tasks]))
        if column == "retention":
            if not all(experts[t] in cells for t in tasks):
                return float("nan")
            return retention(row, {t: cells[experts[t]]["test"][t] for t in tasks})
        return float(row[column])

    methods: dict[str, Any] = {}
    for method in methods_of(cfg):
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        if not rows:
            continue
        own_seeds = [r["seed"] for r in rows]
        stats: dict[str, Any] = {}
        for column in columns:
            values = [value(seed, method, column) for seed in own_seeds]
            stats[column] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
                # over requests, at each seed: what one seed's figure can resolve
                "intervals": [
                    interval(resampled[seed][method][column])
                    for seed in own_seeds
                    if column in resampled[seed].get(method, {})
                ],
            }
        methods[method] = {
            "seeds": own_seeds,
            "scores": stats,
            "val_evaluations": [r["val_evaluations"] for r in rows],
            "seconds": [r["seconds"] for r in rows],
        }
    differences = _differences(cfg, at, resampled, seeds, value)
    return {
        "config": cfg.name,
        "split": "test",
        "seeds": seeds,
        "experts_vary_with_seed": builds_experts(cfg),
        "objective": cfg.final.objective,
        "tasks": tasks,
        "columns": columns,
        "evaluation_budget": evaluation_budget(cfg),
        "methods": methods,
        "reference": REFERENCE,
        "differences": differences,
    }


def _differences(
    cfg: RunConfig,
    at: dict[int, dict[str, dict[str, Any]]],
    resampled: dict[int, dict[str, dict[str, np.ndarray]]],
    seeds: list[int],
    value: Callable[[int, str, str], float],
) -> dict[str, Any]:
    """``REFERENCE − method`` per column, paired on the same requests and the same seed.

    ``mean``: over the seeds both ran; ``interval``: the 95% bootstrap interval of that mean
    over requests (each seed's requests resampled, the same indices for both methods);
    ``values``: each seed's difference.
    """
    out: dict[str, Any] = {}
    for method in methods_of(cfg):
        if method == REFERENCE:
            continue
        both = [s for s in seeds if REFERENCE in at[s] and method in at[s]]
        if not both:
            continue
        per_column: dict[str, Any] = {}
        for column in [*cfg.task_names, "average", "retention"]:
            values = [value(s, REFERENCE, column) - value(s, method, column) for s in both]
            samples = [
                resampled[s][REFERENCE][column] - resampled[s][method][column]
                for s in both
                if column in resampled[s].get(REFERENCE, {})
                and column in resampled[s].get(method, {})
            ]
            per_column[column] = {
                "mean": float(np.mean(values)),
                "values": values,
                "interval": interval(np.mean(samples, axis=0))
                if len(samples) == len(both)
                else None,
            }
        out[method] = {"seeds": both, "columns": per_column}
    return out


def _fmt_interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f" [{bounds[0]:+.3f}, {bounds[1]:+.3f}]"


def _markdown(summary: dict[str, Any]) -> str:
    columns = summary["columns"]
    seeds = summary["seeds"]
    varied = "evolution and expert build" if summary["experts_vary_with_seed"] else "evolution"
    lines = [
        f"Test split, mean ± sd over seeds {seeds} ({varied} seeds; one value where a method "
        f"ran once); every choice on val by `{summary['objective']}`; budget "
        f"{summary['evaluation_budget']} evaluations. `retention`: the worst task's score as a "
        "fraction of its expert's; ± after a single value: the 95% interval over requests, "
        "half its width.",
        "",
        "| method | " + " | ".join(columns) + " | val evals |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for method, data in summary["methods"].items():
        cells = []
        for column in columns:
            s = data["scores"][column]
            if len(data["seeds"]) > 1:
                text = f"{s['mean']:.3f} ± {s['sd']:.3f}"
            elif s["intervals"]:
                lo, hi = s["intervals"][0]
                text = f"{s['mean']:.3f} ± {(hi - lo) / 2:.3f}"
            else:
                text = f"{s['mean']:.3f}"
            cells.append(f"**{text}**" if column in ("average", "retention") else text)
        evals = int(np.mean(data["val_evaluations"]))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {evals} |")
    tasks = summary["tasks"]
    diff_columns = [*tasks, "average", "retention"]
    lines += [
        "",
        f"Paired differences `{summary['reference']} − method` on the same test requests (and "
        "the same seed), mean over seeds with its 95% bootstrap interval over requests:",
        "",
        "| method | " + " | ".join(diff_columns) + " |",
        "|---|" + "---|" * len(diff_columns),
    ]
    for method, data in summary["differences"].items():
        cells = []
        for column in diff_columns:
            d = data["columns"][column]
            cells.append(f"{d['mean']:+.3f}{_fmt_interval(d['interval'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["methods"])
    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 2]})
    y = np.arange(len(methods))
    avg = [summary["methods"][m]["scores"]["average"] for m in methods]
    axes[0].barh(y, [a["mean"] for a in avg], xerr=[a["sd"] for a in avg], color="tab:blue")
    axes[0].set(yticks=y, yticklabels=methods, xlabel="test average", title="average over tasks")
    axes[0].invert_yaxis()
    width = 0.8 / len(tasks)
    for j, task in enumerate(tasks):
        s = [summary["methods"][m]["scores"][task] for m in methods]
        axes[1].bar(
            np.arange(len(methods)) + j * width,
            [v["mean"] for v in s],
            width,
            yerr=[v["sd"] for v in s],
            label=task,
        )
    axes[1].set_xticks(np.arange(len(methods)) + width * (len(tasks) - 1) / 2)
    axes[1].set_xticklabels(methods, rotation=45, ha="right")
    axes[1].set(ylabel="test score", title="per task (mean ± sd over seeds)")
    axes[1].legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
