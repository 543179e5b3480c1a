"""One registry type for every kind of named plug-in: signals, selectors, operators, tasks.

A :class:`Registry` maps names to objects (classes or factories). Built-in entries live
in the modules it names; they are imported on first access (``lazy_modules``), so
``import thresher`` stays light and listing one kind never imports another. Unknown names
raise :class:`~thresher.errors.UnknownNameError` with a did-you-mean suggestion and the
known names.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from thresher.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """``name -> T``, filled by :meth:`register` and by importing ``lazy_modules`` on first use."""

    def __init__(self, kind: str, lazy_modules: tuple[str, ...] = (), name_of: Callable[[T], str] | None = None):
        self.kind = kind
        self.lazy_modules = lazy_modules
        self._name_of = name_of or (lambda obj: getattr(obj, "name", ""))
        self._entries: dict[str, T] = {}
        self._loaded = not lazy_modules

    # --- filling
    def load(self) -> None:
        """Import the built-in modules (once); a module missing an optional dependency is skipped."""
        if self._loaded:
            return
        self._loaded = True
        for mod in self.lazy_modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name != mod:
                    raise

    def register(self, obj: T | None = None, *, name: str | None = None):
        """Register ``obj`` under ``name`` (default: its ``name`` attribute); usable as a decorator."""

        def add(o: T) -> T:
            key = name or self._name_of(o)
            if not key:
                raise ConfigError(f"{self.kind} {o!r} has no name")
            old = self._entries.get(key)
            if old is not None and old is not o:
                raise ConfigError(f"{self.kind} {key!r} is already registered by {getattr(old, '__qualname__', old)!r}")
            self._entries[key] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> T | None:
        """Remove ``name`` (a plug-in's test fixture cleaning up); returns what was registered."""
        return self._entries.pop(name, None)

    # --- reading
    def get(self, name: str, default=None):  # Mapping.get without loading surprises
        self.load()
        return self._entries.get(name, default)

    def lookup(self, name: str) -> T:
        """The entry called ``name``, or an UnknownNameError that suggests the closest names."""
        self.load()
        if name in self._entries:
            return self._entries[name]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str, extra: list[str] | None = None) -> str:
        known = sorted(set(self._entries) | set(extra or []))
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"

    def __getitem__(self, name: str) -> T:
        self.load()
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(self._entries)

    def __len__(self) -> int:
        self.load()
        return len(self._entries)
