"""The embedded experts against issue 4's targets: specialists, and a merge that is not trivial.

Builds (or reuses from the cache) the ``tinylm`` base and experts for a recipe and scores, on each
skill's test split, the base, every expert and the plain mean task-arithmetic merge
(``θ_base + Σ_k τ_k / K``). Last line:
``RESULT own_skill_min=<x> above_base_min=<y> mean_merge_loss=<z>``: the weakest expert's score on
its own skill, the smallest margin of an expert over the base on its skill, and how much average
own-skill score the mean merge loses against the experts.

    python bench/experts.py --recipe '{"hidden": 128, "base_steps": 800, "expert_steps": 300}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cycleqd import Genome, Materializer, WeightSpace
from cycleqd.models import TinyLMSource, load_into
from cycleqd.skills import SKILLS, SkillAccuracy
from cycleqd.tinylm import TinyLMRecipe

MICRO = asdict(TinyLMRecipe.micro())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="{}", help="TinyLMRecipe fields as JSON")
    parser.add_argument("--problems", type=int, default=60, help="test problems per skill")
    parser.add_argument("--cache", default="~/.cache/cycleqd")
    parser.add_argument("--small", action="store_true", help="a micro recipe (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="(accepted for symmetry)")
    args = parser.parse_args()
    recipe = MICRO if args.small else json.loads(args.recipe)
    source = TinyLMSource(**recipe)
    start = time.perf_counter()
    cache = Path(tempfile.mkdtemp()) if args.small else Path(args.cache).expanduser()
    base, experts = source.prepare(cache)
    print(f"experts ready in {time.perf_counter() - start:.0f} s ({base.parent})")
    space = WeightSpace.from_paths(base=base, experts={s: experts[s] for s in SKILLS})
    materializer = Materializer(space)
    model = load_into(source.make_model(), materializer.state_dict)
    scorers = {
        s: SkillAccuracy(skill=s, problems=3 if args.small else args.problems) for s in SKILLS
    }

    def scores(genome: Genome) -> dict[str, float]:
        materializer.materialize(genome)
        return {s: scorers[s](model, "test") for s in SKILLS}

    table = {"base": scores(Genome.base(space))}
    table |= {f"expert_{s}": scores(Genome.expert(space, k)) for k, s in enumerate(SKILLS)}
    table["mean_merge"] = scores(Genome.linear(space, torch.full((len(SKILLS),), 1 / len(SKILLS))))
    for name, row in table.items():
        print(f"{name:14s} " + " ".join(f"{s}={v:.3f}" for s, v in row.items()))
    own = [table[f"expert_{s}"][s] for s in SKILLS]
    above = [table[f"expert_{s}"][s] - table["base"][s] for s in SKILLS]
    loss = sum(own) / len(own) - sum(table["mean_merge"][s] for s in SKILLS) / len(SKILLS)
    print(
        f"RESULT own_skill_min={min(own):.3f} above_base_min={min(above):.3f} "
        f"mean_merge_loss={loss:.3f}"
    )


if __name__ == "__main__":
    main()
