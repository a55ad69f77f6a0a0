"""What the scorers of one evaluator share about its resident model, passed with every call.

The evaluator builds one :class:`ScoringContext` beside its resident model and hands it to every
scorer it calls (scorers that declare ``takes_context = True``; see :mod:`cycleqd.scorers`). It
carries what used to ride on the torch module: the base's tokenizer, the base's directory (where
an engine such as vLLM builds the same model), the version of the weights the model holds now,
and a dictionary in which scorers keep what they share across calls and tasks (generation
backends, one decoding batch for every skill).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ScoringContext"]

#: Files whose presence in a base directory means it carries a tokenizer.
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model")


@dataclass
class ScoringContext:
    """The resident model's tokenizer and path, its weights' version, and the scorers' shared state.

    Attributes:
        tokenizer: the base model's tokenizer (``None``: a model without one, such as a CNN).
        model_path: the base model's Hugging Face directory (``None``: not a directory).
        weights_version: names the weights the model holds now; the evaluator changes it each
            time it writes a child. ``None``: unknown, so nothing computed from the weights may
            be reused across calls.
        shared: what scorers keep across calls, keyed by the scorer family that owns the entry
            (``"backends"``, ``"skill_accuracy"``...); dropped with the evaluator.
    """

    tokenizer: Any = None
    model_path: str | None = None
    weights_version: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_base(cls, base: str | Path | None) -> ScoringContext:
        """The context of a model built from ``base``: its tokenizer and path, where it has them.

        A base directory with tokenizer files gets its tokenizer (``AutoTokenizer``, local
        files only); one with a ``config.json`` is the path an engine can build the model from.
        """
        path = Path(base) if base is not None else None
        if path is None or not path.is_dir():
            return cls()
        tokenizer = None
        if any((path / name).is_file() for name in _TOKENIZER_MARKERS):
            import transformers

            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model_path = str(path) if (path / "config.json").is_file() else None
        return cls(tokenizer=tokenizer, model_path=model_path)
