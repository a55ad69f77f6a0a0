"""The skills' scorer: a model's share of a split's requests solved, checked by execution."""

from __future__ import annotations

import logging
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.models.context import ScoringContext
from cycleqd.sandbox.box import shared_sandbox
from cycleqd.scorers import TaskShape
from cycleqd.stats import Score
from cycleqd.suite.skills.execution import ExecutionMemo, gold_outputs, score
from cycleqd.suite.skills.problems import generate, prompt_of

__all__ = ["SkillAccuracy"]

log = logging.getLogger("cycleqd.scorers")


class SkillAccuracy:
    """Scorer: the share of a skill's problems a language model solves, by execution.

    Prompts of the split are decoded greedily all at once
    (:func:`cycleqd.generation.decode.greedy_decode`) and every answer runs in the sandbox against
    its gold program. The tokenizer is the scoring context's (the base directory's).
    Returns a :class:`cycleqd.stats.Score` (each request's verdict kept, for intervals).

    Args:
        skill: ``code``, ``sql`` or ``shell``.
        problems: val problems (the final choice and the baselines' sweeps score these).
        test_problems: test problems (scored only for the report); default: ``problems``.
        search_problems: the first this many val problems form the ``search`` split that
            evolution scores every child on (a fixed subset: cheaper children); default: all
            of val.
        seed: generates the problems.
        max_new_tokens: longest answer; default: the longest gold answer of the split (in the
            model's tokens) plus 4, so that a rambling child stops as soon as it must be wrong.
        memoize: keep what every executed answer gave
            (:class:`~cycleqd.suite.skills.execution.ExecutionMemo`) and never run an answer
            whose output is known (children of one run often give the same answers); scores
            are the same either way. ``memo_hits`` / ``memo_lookups`` count how often it saved
            a run.
        decoder: ``greedy_decode``'s engine: ``auto`` (the lean decoder for a plain Llama, the
            same tokens faster), ``lean`` or ``transformers``.

    Raises:
        CycleQDError: more val or test problems than the skill's split holds distinct requests,
            or a search subset larger than val.
    """

    @staticmethod
    def plan_shape(params: dict[str, Any]) -> TaskShape:
        """What a child costs: its search split, decoded in one batch (the planning hook)."""
        val = int(params.get("problems", 300))
        search = int(params.get("search_problems") or val)
        return TaskShape(problems=search, prompt_tokens=24, new_tokens=32, one_batch=True)

    def __init__(
        self,
        *,
        skill: str,
        problems: int = 300,
        test_problems: int | None = None,
        search_problems: int | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
        memoize: bool = True,
        decoder: str = "auto",
    ) -> None:
        if decoder not in ("auto", "lean", "transformers"):
            raise CycleQDError(
                f"skill_accuracy: decoder must be auto, lean or transformers, not {decoder!r}"
            )
        self.skill, self.seed, self.max_new_tokens = skill, seed, max_new_tokens
        self.decoder = decoder
        self.memo = ExecutionMemo() if memoize else None
        if search_problems is not None and not 0 < search_problems <= problems:
            raise CycleQDError(
                f"skill_accuracy: search_problems={search_problems} must be between 1 and "
                f"problems={problems} (the search split is a subset of val)"
            )
        val = generate(skill, "val", problems, seed=seed)
        self.problems = {
            "val": val,
            "search": val[: search_problems or problems],
            "test": generate(skill, "test", test_problems or problems, seed=seed),
        }
        self.search_split = search_problems is not None
        self._gold: dict[str, list[Any]] = {}
        self._answers: dict[str, tuple[Any, list[str]]] = {}
        self._limits: dict[str, int] = {}

    def split(self, split: str) -> list[Any]:
        """The problems of ``split``: ``val``, ``search``, ``test``, or ``name:n``.

        ``name:n`` is the first ``n`` problems of ``name`` (racing's prefixes).
        """
        name, _, count = split.partition(":")
        if name not in self.problems or (count and not count.isdigit()):
            raise CycleQDError(
                f"skill_accuracy has no split {split!r}: use val, search or test, or name:n "
                "for the first n requests of one"
            )
        problems = self.problems[name]
        return problems[: int(count)] if count else problems

    def _limit(self, tokenizer: Any, split: str) -> int:
        if self.max_new_tokens:
            return self.max_new_tokens
        split = split.partition(":")[0]  # a prefix decodes as its split does: same answers
        if split not in self._limits:  # the golds do not change: tokenise them once
            golds = [" " + p.gold for p in self.problems[split]]
            self._limits[split] = 4 + max(len(ids) for ids in tokenizer(golds)["input_ids"])
        return self._limits[split]

    def _decode(self, model: Any, context: ScoringContext, split: str) -> list[str]:
        """This scorer's completions for the model's current weights.

        An evaluator that versions each new set of weights (the context's ``weights_version``)
        gets every skill scorer's prompts decoded in one batch on the first scorer's call: one
        decoding loop per candidate instead of one per skill. Results are the same either way.
        """
        from cycleqd.generation.decode import greedy_decode

        tokenizer, version = context.tokenizer, context.weights_version
        peers: list[SkillAccuracy] = [self]
        if version is not None:
            peers = context.shared.setdefault("skill_accuracy", [])
            if self not in peers:
                peers.append(self)
            cached = self._answers.get(split)
            if cached is not None and cached[0] == version:
                return cached[1]
        prompts, limits, owners = [], [], []
        for peer in peers:
            problems = peer.split(split)
            prompts += [prompt_of(p.prompt) for p in problems]
            limits += [peer._limit(tokenizer, split)] * len(problems)
            owners += [peer] * len(problems)
        answers = greedy_decode(
            model, tokenizer, prompts, max_new_tokens=limits, stop="\n", engine=self.decoder
        )
        for peer in peers:
            mine = [a for a, o in zip(answers, owners, strict=True) if o is peer]
            peer._answers[split] = (version, mine)
        return self._answers[split][1]

    @property
    def memo_hits(self) -> int:
        """Answers whose output was known (not run) so far."""
        return self.memo.hits if self.memo is not None else 0

    @property
    def memo_lookups(self) -> int:
        """Answers looked up in the memo so far."""
        return self.memo.lookups if self.memo is not None else 0

    takes_context = True

    def __call__(self, model: Any, split: str, context: ScoringContext | None = None) -> Score:
        """Accuracy on ``split`` (``val``, ``search``, ``test`` or a prefix ``name:n``)."""
        if context is None or context.tokenizer is None:
            raise CycleQDError(
                "SkillAccuracy needs the model's tokenizer in the scoring context (the base "
                "directory's tokenizer files; by hand: pass ScoringContext(tokenizer=...))"
            )
        problems = self.split(split)
        answers = self._decode(model, context, split)
        sandbox = shared_sandbox()
        name = split.partition(":")[0]
        if name not in self._gold:
            self._gold[name] = gold_outputs(sandbox, self.problems[name])
        gold = self._gold[name][: len(problems)]
        hits = self.memo_hits
        verdicts = score(sandbox, problems, [a.strip() for a in answers], gold, self.memo)
        if self.memo is not None:
            log.info(
                "skill_accuracy %s: %d of %d answers' outputs known (hit rate %.2f so far)",
                self.skill,
                self.memo_hits - hits,
                len(problems),
                self.memo_hits / self.memo_lookups,
            )
        return Score(verdicts)
