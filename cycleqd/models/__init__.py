"""Model sources and loading: where a run's base and experts come from (paths, hub ids, plug-ins).

Public names: SOURCES (the registry), ModelSource (the protocol), PathsSource, load_models,
build_source, load_into.
"""

from cycleqd.models.sources import (
    SOURCES,
    ModelSource,
    PathsSource,
    build_source,
    load_into,
    load_models,
)

__all__ = ["SOURCES", "ModelSource", "PathsSource", "build_source", "load_into", "load_models"]
