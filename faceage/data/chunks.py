"""Cut a stream into bounded lists, so that only one block of work sits in memory at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def blocks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of up to ``size`` items."""
    iterator = iter(items)
    while block := list(islice(iterator, size)):
        yield block
