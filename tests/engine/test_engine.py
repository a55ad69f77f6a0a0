"""The cyclic engine: archives, the loop, durable runs, the notebook API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import digits_yaml, limit_to_children

from cycleqd import Archives, Evolver, Genome, load_config, load_run
from cycleqd.config import ConfigError
from cycleqd.engine.archive import derive_ranges
from cycleqd.engine.final import (
    SOUP_SIZES,
    final_evaluations,
    most_candidates,
    ranked_by_objective,
    softmax,
)
from cycleqd.engine.store import RunStore
from cycleqd.stats import objective_value


def run_digits(tmp_path, cache, name="run", **evolution):
    cfg = load_config(digits_yaml(tmp_path / f"{name}.yaml", cache, **evolution))
    store = RunStore.create(tmp_path / name, cfg)
    evolver = Evolver(cfg, store)
    summary = evolver.run()
    return evolver, summary


def test_derive_ranges_follows_the_paper_rule():
    scores = np.array([[0.9, 0.2, 0.0], [0.5, 0.8, 0.0], [0.6, 0.4, 0.0]])
    ranges = derive_ranges(scores)
    assert ranges[0] == pytest.approx((0.85 * 0.5, 1.0))  # 1.15 * 0.9 clipped to 1
    assert ranges[1] == pytest.approx((0.85 * 0.2, 1.15 * 0.8))
    assert ranges[2] == pytest.approx((0.0, 0.05))  # collapsed: widened within [0, 1]


def test_a_child_enters_every_archive_it_improves():
    archives = Archives(tasks=["a", "b", "c"], bins=4, ranges=[(0, 1)] * 3)
    assert archives.insert(0, np.array([0.5, 0.5, 0.5])) == [0, 1, 2]
    # better on b and c in the same cells, worse on a: enters b's and c's archives only
    assert archives.insert(1, np.array([0.4, 0.6, 0.6])) == [1, 2]
    # same scores as elite 1 in a new cell of a's archive (b, c descriptors moved bins)
    assert archives.insert(2, np.array([0.1, 0.9, 0.9])) == [0, 1, 2]
    assert archives.insert(3, np.array([0.1, 0.9, 0.9])) == []
    assert archives.best(0) == (0, 0.5)
    stats = archives.stats()
    assert stats["a"]["elites"] == 2 and stats["a"]["coverage"] == pytest.approx(2 / 16)
    rebuilt = Archives.from_state(json.loads(json.dumps(archives.state())))
    assert rebuilt.state() == archives.state()


def test_evolution_cycles_tasks_and_writes_the_run_folder(tmp_path, digits_cache):
    evolver, summary = run_digits(tmp_path, digits_cache)
    tasks = ["rotated", "noisy", "inverted"]
    metrics = evolver.store.read_log("metrics.jsonl")
    assert [m["active"] for m in metrics] == [tasks[g % 3] for g in range(12)]
    assert summary["split"] == "test" and summary["tasks"] == tasks
    assert set(summary["methods"]) == {
        "base",
        "expert_rotated",
        "expert_noisy",
        "expert_inverted",
        "task_arithmetic_best",
        "ties",
        "cycleqd_final",
    }
    final = json.loads((evolver.store.root / "final.json").read_text())
    assert final["ties_density"] in evolver.cfg.final.ties_densities
    for scores in summary["methods"].values():
        assert set(scores) == {*tasks, "average", "retention"}
        assert all(0 <= scores[t] <= 1 for t in [*tasks, "average"])
    root = evolver.store.root
    for name in (
        "config.yaml",
        "checkpoint.json",
        "events.jsonl",
        "summary.json",
        "final.json",
        "final.genome",
        "plots/curves.png",
        "plots/archive_rotated.png",
    ):
        assert (root / name).is_file(), name
    events = evolver.store.read_log("events.jsonl")
    assert sum(e["event"] == "seed" for e in events) == 3
    assert sum(e["event"] in ("child", "failed") for e in events) == 12 * 4
    # a child entered archives other than the active one
    assert any(
        set(e.get("entered", [])) - {e.get("active")} for e in events if e["event"] == "child"
    )


def test_fixed_axes_ablation_stays_on_the_first_task(tmp_path, digits_cache):
    evolver, _ = run_digits(tmp_path, digits_cache, generations=4, cycle=False)
    assert {m["active"] for m in evolver.store.read_log("metrics.jsonl")} == {"rotated"}


def test_final_merge_is_softmax_of_best_elites(tmp_path, digits_cache):
    cfg = load_config(
        digits_yaml(tmp_path / "c.yaml", digits_cache, generations=6), ["final.method=softmax"]
    )
    store = RunStore.create(tmp_path / "softmax", cfg)
    evolver = Evolver(cfg, store)
    evolver.run()
    info = store.read_json("final.json")
    bests = [evolver.archives.best(k) for k in range(3)]
    beta = softmax(np.array([q for _, q in bests]))
    assert list(info["beta"].values()) == pytest.approx(beta.tolist())
    final = Genome.load(store.root / "final.genome")
    space = evolver.space
    got = evolver.materializer.weights(final)
    parents = [evolver.materializer.weights(evolver.genome(e)) for e, _ in bests]
    for name in space.tensor_names:
        base = space.base_tensor(name)
        want = base + sum(b * (p[name] - base) for b, p in zip(beta, parents, strict=True))
        torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective", ["mean", "retention"])
def test_validation_final_is_the_best_candidate_on_val_soups_included(
    tmp_path, digits_cache, objective
):
    cfg = load_config(
        digits_yaml(tmp_path / "v.yaml", digits_cache, generations=6),
        ["final.method=validation", f"final.objective={objective}"],
    )
    store = RunStore.create(tmp_path / "validation", cfg)
    evolver = Evolver(cfg, store)
    evolver.run()
    info = store.read_json("final.json")
    assert info["objective"] == objective
    pools = {c["pool"] for c in info["candidates"]}
    assert {"best_quality", "best_objective", "soup_2", "soup_3"} <= pools
    best = max(c["val_objective"] for c in info["candidates"])
    assert info["val_objective"] == best
    experts = evolver.chooser.expert_val_scores()
    for c in info["candidates"]:
        scores = dict(zip(cfg.task_names, c["val_scores"], strict=True))
        average = float(np.mean(c["val_scores"]))
        kept = min(scores[t] / experts[t] for t in cfg.task_names)
        want = [average] if objective == "mean" else [round(kept, 6), average]
        assert c["val_objective"] == pytest.approx(want)
    # the baselines' sweeps maximise the same objective
    summary = store.read_json("summary.json")
    assert summary["methods"]["cycleqd_final"]["retention"] == pytest.approx(
        min(
            summary["methods"]["cycleqd_final"][t] / summary["methods"][f"expert_{t}"][t]
            for t in cfg.task_names
        )
    )
    # a soup is the uniform average of the elites with the best objectives (search split)
    searched = {t: evolver.expert_scores[j][j] for j, t in enumerate(cfg.task_names)}
    ranked = ranked_by_objective(evolver.archives, objective, searched)
    # what compare budgets against is what the choice makes (fewer soups only: too few elites)
    fitting = sum(len(ranked) >= m for m in SOUP_SIZES)
    assert len(info["candidates"]) == most_candidates(cfg.final) - len(SOUP_SIZES) + fitting
    assert final_evaluations(cfg.final, 3) == most_candidates(cfg.final) + 3
    soup = [c for c in info["candidates"] if c["pool"] == "soup_3"][0]
    assert soup["beta"] == pytest.approx([1 / 3] * 3)
    firsts = [a for _, a in ranked]
    assert firsts == sorted(firsts, reverse=True) and len(set(dict(ranked))) == len(ranked)
    # ... computed here from the archives: the first elite's search-split scores maximise it
    keys = {}
    for k in range(3):
        data = evolver.archives.elites(k)
        rows = np.insert(data["measures"], k, data["objective"], axis=1)
        for e, row in zip(data["elite"], rows, strict=True):
            scores = dict(zip(cfg.task_names, row.tolist(), strict=True))
            keys[int(e)] = objective_value(objective, scores, searched)
    assert keys[ranked[0][0]] == max(keys.values()) and set(keys) == set(dict(ranked))
    top3 = Genome.weighted_sum([evolver.genome(e) for e, _ in ranked[:3]], torch.full((3,), 1 / 3))
    assert np.mean(evolver.chooser.judge([top3])[0][1]) == pytest.approx(soup["val_average"])


STEADY = ["evaluation.schedule=steady", "evaluation.in_flight=3", "evaluation.ordered=true"]


@pytest.mark.parametrize("sets", [[], STEADY], ids=["generations", "steady"])
def test_resume_after_sigkill_gives_identical_archives(tmp_path, digits_cache, sets):
    config = digits_yaml(tmp_path / "kill.yaml", digits_cache, generations=30)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cycleqd", "evolve"]
    config_args = [str(config), *(f"--set={s}" for s in sets)]
    subprocess.run(
        [*cmd, *config_args, "--run-dir", str(tmp_path / "whole")],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    victim = subprocess.Popen(
        [*cmd, *config_args, "--run-dir", str(tmp_path / "killed")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "killed" / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if json.loads(checkpoint.read_text())["generation"] >= 8:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(checkpoint.read_text())["generation"]
    assert 8 <= killed_at < 30, "the run was not killed mid-way"
    if sets:  # the resumed run must send out again the children that were out
        assert len(json.loads(checkpoint.read_text())["in_flight"]) == 2
    subprocess.run(
        [*cmd, "--resume", "--run-dir", str(tmp_path / "killed")],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    whole = json.loads((tmp_path / "whole" / "checkpoint.json").read_text())
    resumed = json.loads(checkpoint.read_text())
    for key in ("archives", "table", "rng", "generation", "evaluations", "in_flight"):
        assert resumed.get(key) == whole.get(key), key
    for name in ("events.jsonl", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_killed_while_seeding_resumes_and_equals_an_uninterrupted_one(tmp_path, digits_cache):
    """Every file byte for byte: the run folder has no wall-clock field (times go to stderr)."""
    config = digits_yaml(tmp_path / "seed.yaml", digits_cache, generations=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cycleqd", "evolve"]
    for run in ("whole", "again"):  # two runs of one seed, in two processes
        subprocess.run(
            [*cmd, str(config), "--run-dir", str(tmp_path / run)],
            check=True,
            env=env,
            capture_output=True,
            timeout=600,
        )
    assert _files(tmp_path / "whole") == _files(tmp_path / "again")
    killed = tmp_path / "killed"
    victim = subprocess.Popen(
        [*cmd, str(config), "--run-dir", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "config.yaml").is_file() and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "checkpoint.json").exists(), "the run was not killed while seeding"
    # what a kill in the middle of a write leaves: a temp file, half a log line
    (killed / "genomes").mkdir(exist_ok=True)
    (killed / "genomes" / ".0123.genome.abcd.tmp").write_bytes(b"half a genome")
    with open(killed / "events.jsonl", "a") as fh:
        fh.write('{"event": "seed", "exp')
    resumed = subprocess.run(
        [*cmd, "--resume", "--run-dir", str(killed)], env=env, capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert not list(killed.rglob("*.tmp"))
    assert _files(killed) == _files(tmp_path / "whole")


def test_load_run_round_trips_the_run(tmp_path, digits_cache):
    evolver, summary = run_digits(tmp_path, digits_cache, generations=6)
    run = load_run(evolver.store.root)
    assert run.summary == summary
    for k, task in enumerate(run.tasks):
        frame = run.archive(task)
        data = evolver.archives.elites(k)
        assert len(frame) == len(data["objective"])
        assert sorted(frame["quality"]) == pytest.approx(sorted(data["objective"].tolist()))
        assert set(frame["genome"]) == {evolver.table[e] for e in data["elite"]}
        assert frame["quality"].tolist() == pytest.approx(frame[task].tolist())
    best = run.best("noisy")
    weights = run.materialize(best)
    want = evolver.materializer.weights(evolver.genome(evolver.archives.best(1)[0]))
    assert all(torch.equal(weights[n], want[n]) for n in want)
    lineage = run.lineage(best)
    assert lineage[0]["genome"] == best
    origins = {step["op"] for step in lineage}
    assert origins & {"expert:rotated", "expert:noisy", "expert:inverted"}
    assert run.heatmap("rotated") is not None


def test_a_child_whose_operators_fail_is_logged_and_the_run_goes_on(
    tmp_path, digits_cache, monkeypatch
):
    (tmp_path / "flaky_ops.py").write_text(
        "from cycleqd import CycleQDError\n"
        "class Flaky:\n"
        "    calls = 0\n"
        "    def __call__(self, genome, ctx):\n"
        "        Flaky.calls += 1\n"
        "        if Flaky.calls % 2:\n"
        "            raise CycleQDError('mutation blew up')\n"
        "        return genome\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(
        digits_yaml(tmp_path / "f.yaml", digits_cache, generations=3),
        ["evolution.mutation.name=flaky_ops:Flaky", "evolution.mutation.params={}"],
    )
    evolver = Evolver(cfg, RunStore.create(tmp_path / "flaky", cfg))
    summary = evolver.run()
    failed = [e for e in evolver.store.read_log("events.jsonl") if e["event"] == "failed"]
    assert len(failed) == 6 and all("mutation blew up" in e["reason"] for e in failed)
    assert "cycleqd_final" in summary["methods"]


def steady_config(tmp_path, cache, name, *sets, generations=6):
    path = digits_yaml(tmp_path / f"{name}.yaml", cache, generations=generations)
    return load_config(path, ["evaluation.schedule=steady", *sets])


def test_the_steady_schedule_makes_every_child_once_and_takes_turns(tmp_path, digits_cache):
    cfg = steady_config(tmp_path, digits_cache, "steady", "evaluation.in_flight=3")
    evolver = Evolver(cfg, RunStore.create(tmp_path / "steady", cfg))
    evolver.run()
    events = evolver.store.read_log("events.jsonl")
    children = [e for e in events if e["event"] in ("child", "failed")]
    total = cfg.evolution.generations * cfg.evolution.batch_size
    assert sorted(e["child"] for e in children) == list(range(total))  # none lost, none twice
    # the active task advances per child made: child n works on archive n mod K
    assert all(e["active"] == cfg.task_names[e["child"] % 3] for e in children)
    assert evolver.evaluations == 3 + total
    metrics = evolver.store.read_log("metrics.jsonl")
    assert [m["generation"] for m in metrics] == list(range(cfg.evolution.generations))
    assert json.loads((tmp_path / "steady" / "checkpoint.json").read_text())["in_flight"] == []
    # archives are consistent with the log: each elite is the best child logged for its cell
    inserted = {e["genome"]: e["scores"] for e in events if e.get("entered")}
    for k, task in enumerate(cfg.task_names):
        data = evolver.archives.elites(k)
        for elite, quality in zip(data["elite"], data["objective"], strict=True):
            genome_id = evolver.table[elite]
            if genome_id in inserted:
                assert inserted[genome_id][task] == pytest.approx(quality)


def test_a_steady_run_resumed_with_children_out_ends_as_an_uninterrupted_one(
    tmp_path, digits_cache
):
    sets = ("evaluation.in_flight=3", "evaluation.ordered=true")
    cfg = steady_config(tmp_path, digits_cache, "whole", *sets)
    Evolver(cfg, RunStore.create(tmp_path / "whole", cfg)).run()

    class Crash(Exception):
        pass

    def crash(report):
        if report.generation == 2:
            raise Crash  # right after generation 2's checkpoint, with children still out

    cfg = steady_config(tmp_path, digits_cache, "crashed", *sets)
    store = RunStore.create(tmp_path / "crashed", cfg)
    with pytest.raises(Crash):
        Evolver(cfg, store, on_generation=crash).run()
    state = json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())
    assert state["generation"] == 3 and len(state["in_flight"]) == 2
    store.append("events.jsonl", {"event": "child", "note": "written after the checkpoint"})
    Evolver(cfg, store).run(resume=True)
    whole = json.loads((tmp_path / "whole" / "checkpoint.json").read_text())
    resumed = json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())
    for key in ("archives", "table", "rng", "generation", "evaluations", "dispatched"):
        assert resumed[key] == whole[key], key
    for name in ("events.jsonl", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "crashed" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_a_run_resumed_with_another_schedule_is_refused(tmp_path, digits_cache):
    cfg = steady_config(tmp_path, digits_cache, "s", generations=1)
    store = RunStore.create(tmp_path / "s", cfg)
    Evolver(cfg, store).run()
    other = cfg.model_copy(
        update={"evaluation": cfg.evaluation.model_copy(update={"schedule": "generations"})}
    )
    with pytest.raises(ConfigError, match="schedule steady; resume it with that schedule"):
        Evolver(other, store).run(resume=True)


def test_a_candidate_past_its_time_limit_fails_and_the_run_goes_on(tmp_path, digits_cache):
    cfg = load_config(
        digits_yaml(tmp_path / "t.yaml", digits_cache, generations=2),
        ["evaluation.timeout_s=5"],
    )
    # the limit is for the child made slow; the seeding and the report run without it
    evolver = limit_to_children(Evolver(cfg, RunStore.create(tmp_path / "t", cfg)))
    scorer = evolver.evaluator.scorers["noisy"]
    calls = []

    def slow_on_the_fifth_call(model, split):
        calls.append(split)
        if len(calls) == 5:
            time.sleep(20)  # unless the time limit cuts it short, this child scores normally
        return scorer(model, split)

    evolver.evaluator.scorers["noisy"] = slow_on_the_fifth_call
    evolver.run()
    failed = [e for e in evolver.store.read_log("events.jsonl") if e["event"] == "failed"]
    assert [e["reason"] for e in failed] == ["CandidateTimeout: exceeded the time limit of 5 s"]
