"""Cut a stream into bounded lists, so that only one block of work sits in memory at a time."""

from __future__ import annotations

import multiprocessing.pool
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def blocks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of up to ``size`` items."""
    iterator = iter(items)
    while block := list(islice(iterator, size)):
        yield block


def mapped_ahead(
    pool: multiprocessing.pool.Pool, function: Callable[[T], R], items: Iterable[T], size: int
) -> Iterator[tuple[list[T], list[R]]]:
    """Each block of up to ``size`` items with ``function`` of each, computed by ``pool`` while the caller works on
    the block before: two blocks in memory, whatever the number of items."""
    pending = None
    for block in blocks(items, size):
        started = (block, pool.map_async(function, block))
        if pending is not None:
            yield pending[0], pending[1].get()
        pending = started
    if pending is not None:
        yield pending[0], pending[1].get()
