"""The embedded language models: built, cached, loadable, and scored by execution end to end."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest
import yaml

from cycleqd import CycleQDError, Evolver, load_config
from cycleqd.engine.store import RunStore
from cycleqd.models import ScoringContext
from cycleqd.models.sources import PathsSource
from cycleqd.suite.skills import SKILLS, SkillAccuracy
from cycleqd.suite.tinylm import TinyLMRecipe, TinyLMSource

MICRO = asdict(TinyLMRecipe.micro())


@pytest.fixture
def micro(tinylm_micro):
    return tinylm_micro


def test_build_writes_loadable_models_with_their_tokenizer_and_caches(micro, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, _, (base, experts) = micro
    assert sorted(experts) == ["code", "shell", "sql"]
    for path in [base, *experts.values()]:
        AutoModelForCausalLM.from_pretrained(path)
        assert AutoTokenizer.from_pretrained(path).eos_token == "<eos>"
    import cycleqd.suite.tinylm.training as training

    monkeypatch.setattr(training, "_train", lambda *a, **k: pytest.fail("retrained"))
    assert TinyLMSource(**MICRO).prepare(cache) == (base, experts)


def test_skill_accuracy_scores_a_model_by_execution(micro):
    _, _, (base, experts) = micro
    model = PathsSource(base=base, experts=experts).make_model()
    context = ScoringContext.for_base(base)
    assert context.tokenizer is not None
    with pytest.raises(CycleQDError, match="tokenizer in the scoring context"):
        SkillAccuracy(skill="code", problems=4)(model, "val")  # by hand, without a context
    for skill in ("code", "sql", "shell"):
        scorer = SkillAccuracy(skill=skill, problems=4, test_problems=6)
        assert [len(scorer.problems[s]) for s in ("val", "test")] == [4, 6]
        for split in ("val", "test"):
            value = scorer(model, split, context)
            assert value in {i / len(scorer.problems[split]) for i in range(7)}


def test_skill_scorers_share_one_decoding_batch_and_score_the_same(micro):
    from cycleqd import Genome, WeightSpace
    from cycleqd.evaluation.local import LocalEvaluator

    _, source, (base, experts) = micro
    space = WeightSpace.from_paths(base=base, experts=experts)
    alone = {s: SkillAccuracy(skill=s, problems=4, seed=5) for s in SKILLS}
    shared = {s: SkillAccuracy(skill=s, problems=4, seed=5) for s in SKILLS}
    evaluator = LocalEvaluator(space, PathsSource(base=base, experts=experts), shared)
    genomes = [Genome.expert(space, 1), Genome.base(space)]
    got = evaluator.evaluate(genomes, "val").scores
    # one batch: after the first candidate every scorer holds answers for the same weights
    assert len(evaluator.context.shared["skill_accuracy"]) == 3
    assert not [k for k in vars(evaluator.model) if k.startswith("_cycleqd")]  # nothing on it
    assert len({s._answers["val"][0] for s in shared.values()}) == 1
    model = PathsSource(base=base, experts=experts).make_model()  # no weights version: alone
    from cycleqd.models.sources import load_into
    from cycleqd.weights.materialize import Materializer

    materializer = Materializer(space)
    load_into(model, materializer.state_dict)
    for i, genome in enumerate(genomes):
        materializer.materialize(genome)
        context = ScoringContext.for_base(base)  # no weights version: each scorer decodes alone
        assert got[i].tolist() == [alone[s](model, "val", context) for s in SKILLS]
    # the completions themselves (of the last genome) are the same, batched or not
    assert all(alone[s]._answers["val"][1] == shared[s]._answers["val"][1] for s in SKILLS)


def test_unknown_recipe_field_is_explained():
    with pytest.raises(Exception, match="tinylm source: .*hidden_size.*accepted: vocab_size"):
        TinyLMSource(hidden_size=3)


def test_a_short_evolution_on_the_tiny_language_models(micro, tmp_path):
    cache, _, _ = micro
    config = {
        "name": "tiny",
        "cache_dir": str(cache),
        "models": {"source": "tinylm", "params": MICRO},
        "tasks": [
            {
                "name": s,
                "scorer": "skill_accuracy",
                "params": {"skill": s, "problems": 3, "max_new_tokens": 8},
            }
            for s in ("code", "sql", "shell")
        ],
        "evolution": {"generations": 2, "batch_size": 2},
        "final": {
            "lambdas": [0.5, 1.0],
            "ties_densities": [0.5],
            "report": [
                {"name": "language", "scorer": "language_retention", "params": {"documents": 2}}
            ],
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(tmp_path / "tiny.yaml")
    summary = Evolver(cfg, RunStore.create(tmp_path / "run", cfg)).run()
    assert set(summary["methods"]) == {
        "base",
        "expert_code",
        "expert_sql",
        "expert_shell",
        "task_arithmetic_best",
        "ties",
        "cycleqd_final",
    }
    assert summary["report"] == ["language"]
    tasks = ["code", "sql", "shell"]
    intervals = summary["intervals"]
    for name, row in summary["methods"].items():
        assert set(row) == {"code", "sql", "shell", "language", "average", "retention"}
        assert all(0 <= row[c] <= 1 for c in [*tasks, "language", "average"])
        assert row["retention"] >= 0  # a merge can beat an expert: above 1 is possible
        assert row["average"] == pytest.approx(sum(row[t] for t in tasks) / 3)
        # every score comes with its interval over the test requests, which holds it
        for column in [*tasks, "average", "retention"]:
            low, high = intervals["methods"][name][column]
            assert low - 1e-9 <= row[column] <= high + 1e-9 or column == "retention"
    # the final model minus each method, paired on the same requests
    diffs = intervals["differences"]
    assert intervals["reference"] == "cycleqd_final" and "cycleqd_final" not in diffs
    final = summary["methods"]["cycleqd_final"]
    for name, d in diffs.items():
        point, low, high = d["average"]
        assert point == pytest.approx(final["average"] - summary["methods"][name]["average"])
        assert low <= high
    # language retention is a real measurement: the base and an expert differ
    assert summary["methods"]["base"]["language"] != summary["methods"]["expert_sql"]["language"]


def test_report_metrics_are_checked_before_the_run(tmp_path):
    from cycleqd.config import ConfigError

    config = {
        "name": "tiny",
        "models": {"source": "tinylm", "params": MICRO},
        "tasks": [{"name": s, "scorer": "skill_accuracy", "params": {"skill": s}} for s in SKILLS],
        "final": {"report": [{"name": "sql", "scorer": "language_retention"}]},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"report metric name\(s\) \['sql'\] are also task"):
        load_config(tmp_path / "a.yaml")
    config["final"]["report"] = [{"name": "language", "scorer": "languag_retention"}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CycleQDError, match="languag_retention"):
        load_config(tmp_path / "b.yaml").check_names()


def test_language_retention_is_lm_evals_bits_per_byte(micro, capfd):
    import math

    import torch

    from cycleqd.suite.language import TASK, LanguageRetention

    _, _, (base, experts) = micro
    model = PathsSource(base=base, experts=experts).make_model()
    scorer = LanguageRetention(documents=3, max_length=1024)
    context = ScoringContext.for_base(base)
    got = scorer(model, "val", context)
    # the same quantity by hand: each paragraph scored as one window after the BOS token
    tokenizer, nll, size = context.tokenizer, 0.0, 0
    for text in scorer.documents["val"]:
        ids = [tokenizer.bos_token_id] + tokenizer(text)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        nll -= float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        size += len(text.encode())
    assert got == pytest.approx(2 ** -(nll / math.log(2) / size), rel=1e-4)
    assert 0 < got <= 1 and scorer(model, "test", context) != got
    # lm-eval indexes this scorer's two tasks only (its thousands of built-in YAML files cost
    # about 10 s a call), and nothing reaches the terminal (simple_evaluate ran `git describe`)
    assert sorted(scorer._manager.all_tasks) == [f"{TASK}_test", f"{TASK}_val"]
    assert capfd.readouterr().err == ""


def test_experts_build_command_builds_once_and_prints_the_paths(tmp_path):
    from typer.testing import CliRunner

    from cycleqd.cli import app

    config = {
        "name": "tiny",
        "cache_dir": str(tmp_path / "cache"),
        "models": {"source": "tinylm", "params": MICRO},
        "tasks": [{"name": s, "scorer": "skill_accuracy", "params": {"skill": s}} for s in SKILLS],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    first = runner.invoke(app, ["experts", "build", str(path)], terminal_width=300)
    assert first.exit_code == 0, first.output
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].startswith("tinylm-")  # no temporary folder left
    root = tmp_path / "cache" / built[0]
    assert f"{root / 'base'}" in first.output and f"{root / 'expert-shell'}" in first.output
    mtime = (root / "done").stat().st_mtime_ns
    again = runner.invoke(app, ["experts", "build", str(path)], terminal_width=300)
    assert again.exit_code == 0 and (root / "done").stat().st_mtime_ns == mtime  # cached
    bad = runner.invoke(app, ["experts", "build", str(path), "--set", "models.params.hidden=x"])
    assert bad.exit_code == 2


def test_an_interrupted_build_leaves_nothing_under_the_cache_key(tmp_path, monkeypatch):
    import cycleqd.suite.tinylm as tinylm
    import cycleqd.suite.tinylm.training as training

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_train", crash)
    with pytest.raises(KeyboardInterrupt):
        tinylm.build(tmp_path, TinyLMRecipe.micro())
    assert list(tmp_path.iterdir()) == []


def test_two_builds_in_separate_processes_with_other_thread_counts_give_the_same_weights(tmp_path):
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1]))\n"
        "from cycleqd.suite.tinylm import TinyLMRecipe, build, build_info, weights_hash\n"
        "base, _ = build(sys.argv[2], TinyLMRecipe.micro())\n"
        "info = build_info(base)\n"
        "assert weights_hash(base.parent) == info['weights_sha256']\n"
        "assert torch.get_num_threads() == int(sys.argv[1])  # the build restores it\n"
        "print(info['weights_sha256'])\n"
    )
    hashes = []
    for threads in (1, 2):
        out = subprocess.run(
            [sys.executable, "-P", "-c", script, str(threads), str(tmp_path / f"cache{threads}")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        hashes.append(out.stdout.strip().splitlines()[-1])
        # off a terminal, each stage of the build is a line on stderr, the hash among them
        assert "building expert sql" in out.stderr and hashes[-1] in out.stderr
        assert "training the experts side by side" in out.stderr
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64


def test_the_joint_round_changes_only_what_the_recipe_trains_and_only_the_experts(tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    from cycleqd.suite.tinylm import build

    recipe = replace(TinyLMRecipe.micro(), expert_train="mlp")
    solo = replace(recipe, expert_joint_steps=0)
    base, experts = build(tmp_path / "joint", recipe)
    base0, experts0 = build(tmp_path / "solo", solo)
    weights = {p: load_file(p / "model.safetensors") for p in [base, base0]}
    for name, tensor in weights[base].items():  # the same base either way
        assert (tensor == weights[base0][name]).all(), name
    changed = set()
    for skill in SKILLS:
        joint = load_file(experts[skill] / "model.safetensors")
        alone = load_file(experts0[skill] / "model.safetensors")
        for name, tensor in joint.items():
            if ".mlp." not in name:  # what the recipe does not train stays the base's
                assert (tensor == weights[base][name]).all(), name
            elif not (tensor == alone[name]).all():
                changed.add(skill)
    assert changed == set(SKILLS)  # the round trained every expert
