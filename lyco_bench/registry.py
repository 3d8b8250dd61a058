"""Every plug-in kind by name: built-ins and outside packages, discovered on first use.

A :class:`Registry` is a read-only mapping ``name → plug-in`` of one kind (layer algorithms and
model-level methods, metrics, CLI command groups, …). Its entries come from two places:

* built-in modules: every module of the registry's packages (``lyco_bench.adapters.algorithms``,
  ``lyco_bench.methods``, …), each registering its own entries on import (``register``);
* outside packages: the modules or objects named under the registry's entry point group
  (``[project.entry-points."lyco_bench.algorithms"] mine = "my_pkg.algo:MyAlgo"``): a module
  registers its entries on import, an object is checked by the registry's ``accept`` and registered.

Discovery is lazy: nothing is imported until the mapping is first read, so importing any module of
lyco-bench first in a fresh interpreter never runs into a half-initialised package (a plug-in file
imports its base class, whose package would otherwise import every plug-in file). This module
imports nothing from lyco-bench but the errors, so every layer may depend on it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from lyco_bench.errors import BadInput

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Plug-ins of one ``kind`` by name (module docstring).

    ``packages``: built-in packages whose modules are imported at discovery (names starting with
    ``_`` and those in ``skip`` are not). ``accept``: turns an object named by an entry point into
    the ``(name, entry)`` to register, or raises ``TypeError`` with the reason it is refused.
    ``order``: a sort key applied after every registration (stable: registration order within).
    """

    def __init__(
        self,
        kind: str,
        *,
        entry_point: str,
        packages: tuple[str, ...] = (),
        skip: frozenset[str] = frozenset(),
        accept: Callable[[Any], tuple[str, T]] | None = None,
        order: Callable[[T], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point = entry_point
        self._packages = packages
        self._skip = skip
        self._accept = accept
        self._order = order
        self._entries: dict[str, T] = {}
        self._state = "new"  # new → discovering → ready

    # -- registration (called by plug-in modules on import; never triggers discovery) ----------
    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` as ``name``; the same entry again is a no-op, another one an error."""
        known = self._entries.get(name)
        if known is not None and known is not entry and known != entry:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if known is None:
            self._entries[name] = entry
            if self._order is not None:
                items = sorted(self._entries.items(), key=lambda item: self._order(item[1]))
                self._entries = dict(items)
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary plug-in put the registry back)."""
        self._entries.pop(name, None)

    # -- discovery --------------------------------------------------------------------------------
    def discover(self) -> None:
        """Import the built-in modules, then the entry points' plug-ins (once; re-entrant calls made
        while a plug-in module is being imported see the entries registered so far)."""
        if self._state != "new":
            return
        self._state = "discovering"
        try:
            for package in self._packages:
                self._import_package(package)
            self._load_entry_points()
        except BaseException:
            self._state = "new"  # a broken plug-in is reported again on the next use
            raise
        self._state = "ready"

    def _import_package(self, package: str) -> None:
        module = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name not in self._skip:
                importlib.import_module(f"{package}.{info.name}")

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for point in sorted(entry_points(group=self.entry_point), key=lambda p: p.name):
            where = f"{self.kind} plug-in {point.name} ({point.value})"
            try:
                loaded = point.load()
            except Exception as exc:  # noqa: BLE001 - any import error of a plug-in is reported alike
                raise BadInput(f"{where}: cannot be imported ({exc})") from None
            if _is_module(loaded):
                continue  # a module registers its entries on import
            if self._accept is None:
                raise BadInput(f"{where}: not a module")
            try:
                name, entry = self._accept(loaded)
            except TypeError as exc:
                raise BadInput(f"{where}: {exc}") from None
            if self._entries.get(name) is not entry:
                self.register(name, entry)

    # -- the mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        self.discover()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def _is_module(obj: Any) -> bool:
    return type(obj).__name__ == "module" and hasattr(obj, "__name__")


def accept_instances(cls: type, name: Callable[[Any], str]) -> Callable[[Any], tuple[str, Any]]:
    """A registry's ``accept`` for plug-ins that are instances of ``cls`` (a ``Metric``, a
    ``Preset``…), registered under ``name(obj)``."""

    def accept(obj: Any) -> tuple[str, Any]:
        if not isinstance(obj, cls):
            raise TypeError(f"not a {cls.__name__} object nor a module")
        return name(obj), obj

    return accept
