"""The model source the registry names ``tinylm``: the embedded base and experts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.models.sources import PathsSource
from cycleqd.suite.tinylm.builder import build
from cycleqd.suite.tinylm.recipe import TinyLMRecipe

__all__ = ["TinyLMSource"]


class TinyLMSource(PathsSource):
    """The embedded language models: a tiny Llama base and one expert per agent skill.

    Trained on first use (:mod:`cycleqd.suite.tinylm`) and cached.

    Args:
        **recipe: fields of :class:`cycleqd.suite.tinylm.TinyLMRecipe`.
    """

    def __init__(self, **recipe: Any) -> None:
        try:
            self.recipe = TinyLMRecipe(**recipe)
        except TypeError as exc:
            raise CycleQDError(
                f"tinylm source: {exc}; accepted: {', '.join(TinyLMRecipe.__dataclass_fields__)}"
            ) from None
        self.model = None

    def prepare(self, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
        """Build (or reuse) the base and experts; their Hugging Face directories."""
        self.base, self.experts = build(cache_dir, self.recipe)
        return self.base, dict(self.experts)
