"""One byte budget for what tenants can make a gateway process hold: least recently used goes first.

A gateway keeps two such things for every cenv it serves: the public pages the cenv's worker
pushed (wce.gateway.client) and the tokens it verified (wce.gateway.tokens). Each cenv's entries
live in a dict of its own (the hot path is one lookup there); a `Budget` shared by all of them
records every entry with its size and, when a new one would go over the limit, removes the least
recently used entries of any cenv from their dicts. What is evicted is only a cache miss: the
worker answers that page, the token is verified again.

An entry is any object hashed by identity (a plain class, or a dataclass with `eq=False`): the
Budget keys its LRU order on the entry itself, so a hit costs one `move_to_end`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    """A snapshot: bytes held against the limit, entries, and evictions since start."""

    limit: int
    used: int
    entries: int
    evictions: int


class Budget:
    """Entries of many owners (dicts) under one limit in bytes, evicted least recently used first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self._lru: OrderedDict[Any, tuple[dict[Any, Any], Any, int]] = OrderedDict()
        self.touch = self._lru.move_to_end  # a hit: this entry is now the most recently used

    def put(self, owner: dict[Any, Any], key: Any, entry: Any, size: int) -> bool:
        """`owner[key] = entry`, accounted as `size` bytes; the least recently used entries (of any
        owner) are evicted to make room. False, with `key` gone from owner, if the entry alone is
        over the limit."""
        self.discard(owner, key)
        if size > self.limit:
            return False
        lru = self._lru
        while self.used + size > self.limit:
            old, (old_owner, old_key, old_size) = lru.popitem(last=False)
            del old_owner[old_key]
            self.used -= old_size
            self.evictions += 1
        owner[key] = entry
        lru[entry] = (owner, key, size)
        self.used += size
        return True

    def discard(self, owner: dict[Any, Any], key: Any) -> None:
        """Remove owner[key], if there, from the owner and the budget."""
        entry = owner.pop(key, None)
        if entry is not None:
            self.used -= self._lru.pop(entry)[2]

    def release(self, owner: dict[Any, Any]) -> None:
        """Remove every entry of an owner (a worker connection that ended)."""
        for entry in owner.values():
            self.used -= self._lru.pop(entry)[2]
        owner.clear()

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self.limit, self.used, len(self._lru), self.evictions)
