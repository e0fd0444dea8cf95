"""One registry class for everything the workbench looks up by name.

In the manner of transformers' ``AttentionInterface``: a small mapping from a name to an entry, with
``register``, ``get`` and ``names``, and a one-line :class:`~workbench.core.errors.WorkbenchError` for an
unknown name. The workbench's registries are instances of it:

* :data:`workbench.core.kernels.BACKENDS`: attention kernels that return the log-sum-exp;
* :data:`workbench.core.presets.PRESETS`: model presets that load offline;
* :data:`workbench.report.census.SECTIONS`: census sections;
* :data:`workbench.interventions.registry.INTERVENTIONS`: interventions the front ends can build;
* :data:`workbench.cli.COMMANDS`: the command modules of the ``workbench`` CLI.

Each registry is filled explicitly, in one list per registry, in the module that defines the registry (or,
for entries from a higher layer, the package root ``workbench/__init__.py``, which runs before any
submodule). An entry defined in another module is registered *lazily*, by where it lives
(``register(name, lazy="workbench.report.sinks_report:sinks_section")``): it is imported on first ``get``,
so listing names costs no import. Nothing registers itself as a side effect of being imported, so what a
registry holds never depends on which modules happened to be imported first. ``tests/test_layers.py``
checks that lazy targets, like imports, point down the layers.
"""
from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from .errors import WorkbenchError

T = TypeVar("T")


class UnknownNameError(WorkbenchError, KeyError):
    """A name is not in a registry (the message lists the names that are)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    Args:
        kind: what an entry is, for messages (``"model preset"``, ``"census section"``).
        error: the :class:`UnknownNameError` subclass raised for an unknown name (callers that already
            catch a specific error type, e.g. ``UnknownModelError``, keep catching it).

    ``registry[name]`` is ``registry.get(name)``; ``registry[name] = entry`` registers (replacing), ``del
    registry[name]`` unregisters; ``name in registry``, ``len``, iteration over names, ``keys()``, ``values()``
    and ``items()`` work as on a dict.
    """

    def __init__(self, kind: str, error: type[WorkbenchError] = UnknownNameError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T | None] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *, lazy: str | None = None, replace: bool = False):
        """Add ``entry`` under ``name`` and return it.

        Args:
            entry: the object; omitted (and no ``lazy``), a decorator that registers the decorated object.
            lazy: instead of the object, where it lives: ``"package.module:attribute"`` (or
                ``"package.module"`` for the module itself), imported on the first :meth:`get`.
            replace: replace an entry already registered under ``name``.

        Raises:
            WorkbenchError: ``name`` is already registered (pass ``replace=True`` to replace it on purpose).
        """
        if entry is None and lazy is None:
            def decorator(obj: T) -> T:
                return self.register(name, obj, replace=replace)
            return decorator
        same = (self._lazy.get(name) == lazy) if lazy is not None else \
            (name not in self._lazy and self._entries.get(name) is entry)
        if name in self._entries and not replace and not same:
            raise WorkbenchError(f"{self.kind} {name!r} is registered twice: rename one, or pass replace=True")
        if lazy is not None:
            self._lazy[name] = lazy
            self._entries[name] = None
            return None
        self._lazy.pop(name, None)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            UnknownNameError (or the registry's ``error``): ``name`` is not registered; the message names
                the registered ones.
        """
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names()) or '(none)'}") \
                from None
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            entry = importlib.import_module(module)
            if attr:
                entry = getattr(entry, attr)
            self._entries[name] = entry
            del self._lazy[name]
        return entry

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def module_of(self, name: str) -> str:
        """The module that defines the entry ``name`` (for provenance code hashes), without importing it."""
        if name in self._lazy:
            return self._lazy[name].partition(":")[0]
        entry = self.get(name)
        return getattr(entry, "__module__", None) or type(entry).__module__

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary entry clean up with this)."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    __getitem__ = get

    def __setitem__(self, name: str, entry: T) -> None:  # dict style, for callers that hold a dict before
        self.register(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return self.names()

    def values(self) -> list[T]:
        """Every entry (imports the lazy ones)."""
        return [self.get(n) for n in self.names()]

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs (imports the lazy ones)."""
        return [(n, self.get(n)) for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

