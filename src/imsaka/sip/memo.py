"""Bounded memos of values parsed or built from text (RFC 3261 §7 start lines and
header values recur: a node meets the same few start lines, a UE's From/To/Contact
and CSeq come back in each message of its registration).

`BoundedMemo` is a dict that starts again, empty, once it holds `limit` entries: no
eviction order to keep, and what was handed out stays valid (the values are never
changed in place). Lookups are plain `dict.get`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BoundedMemo"]


class BoundedMemo(dict):
    """A dict of at most `limit` entries; `remember` empties it when full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Any, value: Any) -> Any:
        """Keep `value` under `key` (emptying the memo first when full); returns it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
