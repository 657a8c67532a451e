"""Metric state that can be merged: what lets a run be split into shards (batches, ranks) and put back.

Every metric keeps its state as ``records`` (one dict per image or map, in the order seen) plus, for
some, a few extra numbers. ``a.merge(b)`` appends ``b``'s state to ``a``'s, so for shards
``s_1 .. s_n`` taken in input order, ``s_1.merge(s_2) ... .merge(s_n)`` holds exactly the state of one
metric that saw every batch in that order, and ``summary()`` gives the same numbers bit for bit.
"""

from __future__ import annotations

from typing import Any, TypeVar

M = TypeVar("M", bound="Mergeable")


class Mergeable:
    """A metric whose state is ``records`` (and what :meth:`merge_extra` adds)."""

    records: list[dict[str, Any]]

    def merge(self: M, other: M) -> M:
        """Append ``other``'s state (a metric of the same class and settings) to this one's."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.records.extend(other.records)
        self.merge_extra(other)
        return self

    def merge_extra(self: M, other: M) -> None:
        """State beyond ``records`` (nothing by default)."""
