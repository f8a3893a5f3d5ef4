"""Opening a lab's replicas, and reading from the first one that answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from weightvault.config import Config, Replica
from weightvault.errors import StorageError
from weightvault.storage.store import Store

T = TypeVar("T")


class ReplicaSet:
    def __init__(self, config: Config):
        self.config = config
        self._open: dict[str, Store] = {}
        self.errors: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return list(self.config.replicas)

    def replica(self, name: str) -> Replica:
        return self.config.replica(name)

    def store(self, name: str, *, create: bool = False) -> Store:
        if name not in self._open:
            self._open[name] = self.replica(name).open(create=create)
        elif create:
            self._open[name].ensure_created()
        return self._open[name]

    def try_store(self, name: str, *, create: bool = False) -> Store | None:
        try:
            return self.store(name, create=create)
        except StorageError as e:
            self.errors[name] = str(e)
            return None

    def order(self, prefer: str | None = None) -> list[str]:
        names = self.names
        if prefer:
            self.replica(prefer)
            names = [prefer] + [n for n in names if n != prefer]
        return names

    def first(self, fn: Callable[[str, Store], T], prefer: str | None = None) -> tuple[str, T]:
        """Run fn on the preferred replica, falling back to the next when one is down."""
        failures = []
        for name in self.order(prefer):
            try:
                return name, fn(name, self.store(name))
            except StorageError as e:
                self.errors[name] = str(e)
                failures.append(f"{name}: {e}")
        if len(failures) == 1:
            raise StorageError(failures[0])
        raise StorageError("no replica could be read: " + "; ".join(failures))
