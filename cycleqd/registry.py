"""Name → factory registries that configs refer to and plug-ins extend.

Operators (selection, crossover, mutation) and scorers are found by name, never by ``if`` chains on
strings. A name resolves, in order, to:

1. a factory registered in-process with :meth:`Registry.register`;
2. a factory that a lazy provider offers (mergekit's merge methods: importing mergekit costs
   seconds, so it happens only when such a name is asked for);
3. an installed package's entry point in the registry's group (``cycleqd.crossover``, ...);
4. a dotted path, ``package.module:attribute`` (or ``package.module.attribute``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Generic, TypeVar

from cycleqd.errors import CycleQDError, UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named factories.

    Args:
        kind: what the registry holds, for messages ("crossover", "scorer", ...).
        entry_point_group: the ``importlib.metadata`` entry-point group that plug-ins register in.
    """

    def __init__(self, *, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._providers: list[tuple[Callable[[], Iterable[str]], Callable[[str], T]]] = []

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            CycleQDError: ``name`` is already registered.
        """

        def add(item: T) -> T:
            if name in self._items:
                raise CycleQDError(f"{self.kind} {name!r} is already registered; pick another name")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def add_provider(self, names: Callable[[], Iterable[str]], make: Callable[[str], T]) -> None:
        """Offer the names that ``names()`` lists, built by ``make(name)`` on first use."""
        self._providers.append((names, make))

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Every name this registry resolves (registered, provided, entry points), sorted."""
        found = set(self._items) | set(self._entry_points())
        for names, _ in self._providers:
            found.update(names())
        return sorted(found)

    def get(self, name: str) -> T:
        """The factory registered as ``name``.

        Raises:
            UnknownNameError: nothing resolves ``name``; the message lists the registered names
                and the closest one.
        """
        if name in self._items:
            return self._items[name]
        for names, make in self._providers:
            if name in set(names()):
                self._items[name] = make(name)
                return self._items[name]
        entry_points = self._entry_points()
        if name in entry_points:
            self._items[name] = entry_points[name].load()
            return self._items[name]
        if ":" in name or "." in name:
            return self.import_path(name)
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Registered {self.kind} names: "
            f"{', '.join(known)}. A plug-in adds names through the {self.entry_point_group!r} "
            "entry-point group or a dotted path 'package.module:attribute'."
        )

    def import_path(self, path: str) -> T:
        """The object a dotted path names: ``package.module:attribute`` or ``package.module.attr``.

        Raises:
            UnknownNameError: the path does not import; the message says how to write it.
        """
        module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownNameError(
                f"{self.kind} {path!r} looks like a dotted path but does not import ({exc}); "
                f"write it as 'package.module:attribute', or use one of: {', '.join(self.names())}"
            ) from exc

    def build(self, name: str, /, **params: Any) -> Any:
        """Look ``name`` up and call its factory with ``params``.

        Raises:
            UnknownNameError: ``name`` is not registered.
            CycleQDError: ``params`` do not fit the factory (its accepted parameters listed).
        """
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(**params)
        except TypeError as exc:
            accepted = ", ".join(
                p.name
                for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
            raise CycleQDError(
                f"{self.kind} {name!r}: {exc}. Accepted parameters: {accepted or 'none'}"
            ) from exc
        except ValueError:  # builtins without a signature
            pass
        return factory(**params)
