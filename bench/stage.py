"""The quickstart's stage measured: distinct requests, specialist experts, a meaningful merge.

Builds (or reads from the cache) the models of a config (default: the quickstart) and its
splits, then scores the base, each expert and the plain mean of the three task vectors
(``θ_base + Σ_k τ_k / K``) on the full test split (and val, printed above it). Last line:

    RESULT distinct_val_min=N distinct_test_min=N overlap=N own_skill_min=X above_base_min=X
           mean_merge_retention_min=X build_s=S weights_hash=H

* ``distinct_*_min``: the fewest distinct (prompt, gold) requests of any skill's split;
* ``overlap``: requests that two of train, val and test share (over every skill);
* ``own_skill_min``: the weakest expert's score on its own skill (test);
* ``above_base_min``: the smallest margin of an expert over the base on its skill (test);
* ``mean_merge_retention_min``: the mean merge's score on each skill as a fraction of that
  skill's expert's, the worst skill (test);
* ``build_s``: seconds the base and experts took to build (recorded by the build, so a cached
  build reports its own time); ``weights_hash``: SHA-256 of every weight, its first 16 hex digits.

    python bench/stage.py                                   # the quickstart
    python bench/stage.py --recipe '{"expert_lr": 3e-3}'   # a variant of its recipe
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cycleqd import Genome, load_config
from cycleqd.evaluation.local import LocalEvaluator
from cycleqd.models.sources import load_models
from cycleqd.scorers import SCORERS
from cycleqd.stats import interval, resampled_columns
from cycleqd.suite.skills import generate
from cycleqd.suite.tinylm import TinyLMRecipe, build_info

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "quickstart.yaml"))
    parser.add_argument("--recipe", default="{}", help="TinyLMRecipe fields to change, as JSON")
    parser.add_argument("--cache", default=None, help="default: the config's cache_dir")
    parser.add_argument("--small", action="store_true", help="a micro recipe (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="(accepted for symmetry)")
    args = parser.parse_args()
    overrides = [f"models.params.{k}={json.dumps(v)}" for k, v in json.loads(args.recipe).items()]
    if args.small:
        overrides = [f"models.params={json.dumps(vars(TinyLMRecipe.micro()))}"]
        for k in range(3):
            overrides += [f"tasks.{k}.params.problems=4", f"tasks.{k}.params.test_problems=6"]
            overrides.append(f"tasks.{k}.params.search_problems=2")
    cache = tempfile.mkdtemp() if args.small else args.cache
    if cache:
        overrides.append(f"cache_dir={cache}")
    cfg = load_config(args.config, overrides)
    tasks = cfg.task_names
    start = time.perf_counter()
    source, space = load_models(cfg)
    info = build_info(source.base)
    print(f"models ready in {time.perf_counter() - start:.0f} s ({source.base.parent})", flush=True)
    scorers = {t.name: SCORERS.build(t.scorer, **t.params) for t in cfg.tasks}
    recipe = source.recipe
    distinct, overlap = {"val": [], "test": []}, 0
    for task in cfg.tasks:
        skill = task.params["skill"]
        train = generate(skill, "train", recipe.train_problems, seed=recipe.seed)
        splits = {"train": {(p.prompt, p.gold) for p in train}}
        for split in ("val", "test"):
            requests = [(p.prompt, p.gold) for p in scorers[task.name].problems[split]]
            distinct[split].append(len(set(requests)))
            splits[split] = set(requests)
        overlap += sum(
            len(splits[a] & splits[b])
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
        )
    evaluator = LocalEvaluator(space, source, scorers)
    K = len(tasks)
    models = {"base": Genome.base(space)}
    models |= {f"expert_{t}": Genome.expert(space, k) for k, t in enumerate(tasks)}
    models["mean_merge"] = Genome.linear(space, torch.full((K,), 1 / K))
    experts = {t: f"expert_{t}" for t in tasks}
    figures = {}
    for split in ("val", "test"):
        result = evaluator.evaluate(list(models.values()), split)
        items = dict(zip(models, result.items, strict=True))
        columns = resampled_columns(items, tasks, experts)
        print(f"{split} split (95% intervals over requests):")
        for name, row in zip(models, result.scores, strict=True):
            cells = " ".join(
                f"{t}={v:.3f} [{lo:.3f}, {hi:.3f}]"
                for t, v, (lo, hi) in (
                    (t, v, interval(columns[name][t])) for t, v in zip(tasks, row, strict=True)
                )
            )
            print(f"  {name:12s} {cells}")
        scores = {
            name: dict(zip(tasks, row, strict=True))
            for name, row in zip(models, result.scores, strict=True)
        }
        own = [scores[experts[t]][t] for t in tasks]
        above = [scores[experts[t]][t] - scores["base"][t] for t in tasks]
        kept = [scores["mean_merge"][t] / max(scores[experts[t]][t], 1e-9) for t in tasks]
        lo, hi = interval(columns["mean_merge"]["retention"])
        print(
            f"  own skill {np.round(own, 3).tolist()}, above base {np.round(above, 3).tolist()}, "
            f"mean merge keeps {np.round(kept, 3).tolist()} (worst [{lo:.3f}, {hi:.3f}])"
        )
        figures = {"own": min(own), "above": min(above), "kept": min(kept)}
    print(
        f"RESULT distinct_val_min={min(distinct['val'])} distinct_test_min={min(distinct['test'])} "
        f"overlap={overlap} own_skill_min={figures['own']:.3f} "
        f"above_base_min={figures['above']:.3f} mean_merge_retention_min={figures['kept']:.3f} "
        f"build_s={info['build_s']:.0f} weights_hash={info['weights_sha256'][:16]}"
    )


if __name__ == "__main__":
    main()
