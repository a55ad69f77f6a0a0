"""Model sources and loading: where a run's base and experts come from (paths, hub ids, plug-ins).

Public names: SOURCES (the registry), ModelSource (the protocol), PathsSource, load_models,
build_source, load_into; ScoringContext (what scorers are told about the resident model).
Modules: sources (the registry, the paths source, loading), context (ScoringContext).
"""

from cycleqd.models.context import ScoringContext
from cycleqd.models.sources import (
    SOURCES,
    ModelSource,
    PathsSource,
    build_source,
    load_into,
    load_models,
)

__all__ = [
    "SOURCES",
    "ModelSource",
    "PathsSource",
    "ScoringContext",
    "build_source",
    "load_into",
    "load_models",
]
