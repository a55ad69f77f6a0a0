"""The recipe: the tiny Llama's size and training schedule, and its cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from cycleqd.suite.skills.fixtures import shell_fixture, sql_database
from cycleqd.suite.skills.problems import SKILLS
from cycleqd.suite.tinylm.corpus import _skill_examples, generic_text

__all__ = ["BUILD_THREADS", "BUILD_VERSION", "EXPERT_TRAIN", "TinyLMRecipe"]


#: Bump when the training procedure changes in a way the recipe and the data do not show.
BUILD_VERSION = 2
#: Torch threads while building: CPU kernels split their sums by thread, so the count is part of
#: the recipe; a build gives the same weights whatever threads the calling process uses.
BUILD_THREADS = 2
#: What an expert's fine-tuning may change (``expert_train``): parameter-name filters.
EXPERT_TRAIN: dict[str, tuple[str, ...]] = {
    "all": ("",),
    "blocks": (".layers.",),
    "mlp": (".mlp.",),
    "attention": (".self_attn.",),
}


@dataclass(frozen=True)
class TinyLMRecipe:
    """Model size and training schedule of the embedded experts.

    The defaults are the quickstart's recipe (1.2 M parameters, about 9 minutes on 2 CPU
    cores; ``python bench/stage.py`` measures it). ``expert_anchor_weight``: the weight of the
    KL divergence that holds each expert to the base on the other skills' sequences (0: off).
    ``expert_scale_floor``: each expert step runs at a task-vector scale drawn from
    ``[floor, 1]`` (0: off). ``expert_train``: ``all``, ``blocks`` (no embeddings or head),
    ``mlp`` or ``attention``. ``expert_joint_steps``: steps per expert of a last round in which
    the experts train side by side, each with the others' task vectors present at random scales
    (0: off; see :func:`train_jointly`).
    """

    vocab_size: int = 768
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_len: int = 160
    base_steps: int = 800
    base_lr: float = 2e-3
    base_skill_share: float = 0.25
    base_copy_share: float = 0.3
    expert_steps: int = 400
    expert_lr: float = 1e-3
    expert_anchor_weight: float = 1.0
    expert_scale_floor: float = 0.2
    expert_train: str = "all"
    expert_joint_steps: int = 100
    batch_size: int = 32
    train_problems: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        from cycleqd.errors import CycleQDError

        if self.expert_train not in EXPERT_TRAIN:
            raise CycleQDError(
                f"tinylm recipe: expert_train={self.expert_train!r}; use one of "
                f"{', '.join(EXPERT_TRAIN)}"
            )
        for name, spec in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if spec.type == "str":
                continue
            wanted = float if spec.type == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CycleQDError(f"tinylm recipe: {name} must be a number, not {value!r}")
            if wanted is int and value != int(value):
                raise CycleQDError(f"tinylm recipe: {name} must be a whole number, not {value}")
            if (
                value < 0
                or (name.endswith("share") and value >= 1)
                or (name.endswith("floor") and value > 1)
            ):
                raise CycleQDError(f"tinylm recipe: {name}={value} is out of range")
        if self.hidden % self.heads:
            raise CycleQDError(
                f"tinylm recipe: hidden={self.hidden} must be a multiple of heads={self.heads}"
            )

    @classmethod
    def micro(cls) -> TinyLMRecipe:
        """A recipe that builds in seconds: for tests and smoke runs, not for scores."""
        return cls(
            vocab_size=300,
            hidden=32,
            layers=1,
            heads=2,
            max_len=96,
            base_steps=4,
            expert_steps=2,
            batch_size=4,
            train_problems=40,
            expert_anchor_weight=1.0,
            expert_scale_floor=0.3,
            expert_joint_steps=2,
        )

    def key(self) -> str:
        """The cache key: a hash of the recipe and of the data it trains on.

        The data is hashed too, so that a change to the skills' generators (templates, held-out
        values, the database, the fixture) or to the generic text never reuses stale experts.
        """
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(f"build {BUILD_VERSION}".encode())
        for skill in SKILLS:
            for prompt, answer in _skill_examples(skill, self.train_problems, self.seed):
                digest.update(f"{prompt}\x00{answer}\x00".encode())
        for text in generic_text("train"):
            digest.update(text.encode())
        digest.update(sql_database().encode())
        digest.update(json.dumps(shell_fixture(), sort_keys=True).encode())
        return digest.hexdigest()[:12]
