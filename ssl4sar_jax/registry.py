"""One small name -> entry registry, shared by the objective, task and metric registries.

Each registry is filled at import time by its built-in entries; an entry added later (by the
package, a config or a test) behaves exactly like them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order.

    Args:
        kind: What an entry is (``"objective"``, ``"task"``, ``"metric"``), used in messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Registers ``entry`` under ``name`` (``replace=True`` to overwrite an entry)."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Removes an entry if present (tests that register a temporary one)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; ValueError naming the registered ones otherwise."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; expected one of {sorted(self._entries)}"
            )
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def values(self) -> Iterator[T]:
        """Entries in registration order."""
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
