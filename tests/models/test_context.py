"""The scoring context: what an evaluator's scorers share about its model, passed beside it."""

from __future__ import annotations

from cycleqd.evaluation.local import LocalEvaluator
from cycleqd.models import ScoringContext
from cycleqd.models.sources import PathsSource
from cycleqd.weights.genome import Genome
from cycleqd.weights.space import WeightSpace


def test_a_base_directory_gives_its_path_and_tokenizer_when_it_has_one(tiny_llama_dirs, tmp_path):
    base, _ = tiny_llama_dirs  # saved with save_pretrained: a config, no tokenizer files
    context = ScoringContext.for_base(base)
    assert context.model_path == str(base) and context.tokenizer is None
    assert context.weights_version is None and context.shared == {}
    assert ScoringContext.for_base(tmp_path / "missing") == ScoringContext()
    assert ScoringContext.for_base(None) == ScoringContext()


def test_the_tiny_models_context_carries_their_tokenizer(tinylm_micro):
    _, _, (base, _) = tinylm_micro
    context = ScoringContext.for_base(base)
    assert context.tokenizer is not None and context.tokenizer.eos_token == "<eos>"
    assert context.model_path == str(base)


class Recorder:
    """A scorer that takes the context and records what it is handed."""

    takes_context = True

    def __init__(self):
        self.seen = []

    def __call__(self, model, split, context):
        self.seen.append((split, context.weights_version, id(context)))
        return 0.5


class TwoArguments:
    """A plug-in written for the two-argument protocol."""

    def __call__(self, model, split):
        return 0.25


def test_the_evaluator_passes_one_context_and_versions_each_candidate(tiny_llama_dirs):
    base, experts = tiny_llama_dirs
    space = WeightSpace.from_paths(base=base, experts=experts)
    recorder = Recorder()
    scorers = {"code": recorder, "sql": TwoArguments(), "shell": TwoArguments()}
    evaluator = LocalEvaluator(space, PathsSource(base=base, experts=experts), scorers)
    assert evaluator.context.model_path == str(base)
    genomes = [Genome.base(space), Genome.expert(space, 0), Genome.expert(space, 1)]
    scores = evaluator.evaluate(genomes, "val").scores
    assert scores.tolist() == [[0.5, 0.25, 0.25]] * 3
    versions = [version for _, version, _ in recorder.seen]
    assert len(set(versions)) == 3 and None not in versions  # a new version per candidate
    assert {ident for *_, ident in recorder.seen} == {id(evaluator.context)}
    attached = [k for k in vars(evaluator.model) if "cycleqd" in k or k == "tokenizer"]
    assert attached == []  # nothing rides on the torch module
