"""What the models read: generic text, copying drills and the skills' training examples.

* Generic text: CPython 3.11's documentation topics (``pydoc_data``), shipped with cycleqd so
  that nothing is downloaded and no Python version changes them; some topics are held out for
  the language-retention metric.
* Copying drills: skill-free practice at copying arguments from a request into the answer.
* Skill examples: each skill's train split, formatted as the models are prompted.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
from pathlib import Path

from cycleqd.suite.skills.problems import generate, prompt_of

__all__ = ["copy_examples", "format_example", "generic_text"]


def format_example(prompt: str, answer: str) -> tuple[str, str]:
    """``(prompt text, answer text)`` of a training example; the answer ends with a newline."""
    return prompt_of(prompt), f" {answer}\n"


def generic_text(split: str) -> list[str]:
    """Paragraphs of the Python documentation topics; ``test`` topics are held out.

    The topics ship with cycleqd (``data/python_docs_topics.json.gz``, CPython 3.11's
    ``pydoc_data``), not read from the running Python, whose patch version would change them.
    """
    topics = _docs_topics()
    names = sorted(topics)
    held_out = set(names[::8])
    chosen = [n for n in names if (n in held_out) == (split == "test")]
    paragraphs = []
    for name in chosen:
        for para in topics[name].split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 40:
                paragraphs.append(para[:400])
    return paragraphs


@functools.cache
def _docs_topics() -> dict[str, str]:
    path = Path(__file__).parent.parent / "data" / "python_docs_topics.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))


def copy_examples(n: int, words: list[str], seed: int) -> list[tuple[str, str]]:
    """``n`` generic copying drills: repeat a random run of words and numbers.

    Skill-free practice for the one thing every skill needs, copying arguments from the request
    into the answer (without it, tiny experts miscopy numbers and names they were not trained on).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        items = [
            str(rng.randrange(10 ** rng.randint(1, 6))) if rng.random() < 0.4 else rng.choice(words)
            for _ in range(rng.randint(2, 10))
        ]
        sep = rng.choice([" ", ", ", " and "])
        out.append(format_example(f"Repeat {sep.join(items)}.", sep.join(items)))
    return out


@functools.cache
def _skill_examples(skill: str, train_problems: int, seed: int) -> tuple[tuple[str, str], ...]:
    """A skill's training examples (cached: the cache key and the build both read them)."""
    return tuple(
        format_example(p.prompt, p.gold)
        for p in generate(skill, "train", train_problems, seed=seed)
    )
