"""Compact storage of SIP values a server holds for long (RFC 3261 §17.2.2 Timer J:
32 s of finals on UDP; registrations: hours).

- `WirePacker`: messages kept compressed (raw deflate, RFC 1951) against a preset
  dictionary learned from the node's first messages, credentials left out of it;
  alone, or several in one group (one deflate run for all, each unpacked alone).
- `SharedTuples`: one tuple object per distinct route set (Path, Service-Route,
  Record-Route) with its strings interned: a P-CSCF's Path or an S-CSCF's
  Service-Route is the same for all its users.
"""

from __future__ import annotations

import re
import sys
import zlib
from array import array
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from imsaka.sip.memo import BoundedMemo

__all__ = ["PACK_GROUP", "PackedGroup", "PackedItem", "PackedWire", "SharedTuples", "WirePacker"]

# Finals held for retransmissions are packed this many at a time (`WirePacker.pack_later`;
# the last ones wait in their octets until the group is full: a few KiB at most).
PACK_GROUP = 16


# Header lines learned into a preset dictionary without their parameter values: those
# are credentials or challenges (a 401 from an S-CSCF carries CK/IK to the P-CSCF).
_SECRET_HEADERS = (
    b"www-authenticate",
    b"proxy-authenticate",
    b"authentication-info",
    b"authorization",
    b"proxy-authorization",
)


# every parameter value of such a line: only the names and the scheme are learned
_AUTH_VALUE = re.compile(rb'=\s*(?:"(?:[^"\\]|\\.)*"|[^,\s]*)')


class PackedWire(bytes):
    """Octets held compressed by a `WirePacker` (first octet: its dictionary version)."""

    __slots__ = ()


class PackedGroup(tuple):
    """Messages packed together by `WirePacker.pack_group`: (their octets joined, as
    `pack` gave them, and the end offset of each message in an array)."""

    __slots__ = ()


class PackedItem(tuple):
    """One message of a `PackedGroup`: (the group, its index); `unpack` gives it back."""

    __slots__ = ()


_new_tuple = tuple.__new__


class WirePacker:
    """Keeps the bytes of finished transactions' messages compressed (raw deflate with
    a preset dictionary), for the time RFC 3261 asks them to be re-sent (Timer J: 32 s
    on UDP, one final per request a busy server handles).

    The messages of one node differ mostly in a few random tokens (branch, tags,
    Call-ID, nonce): deflate against a dictionary made of the node's own earlier finals
    keeps about a fifth of them. The dictionary is learned from the first final of each
    kind (status line and CSeq method; header part only, authentication parameter values
    left out, so no challenge or key material stays in it) among the first `LEARN_FROM`
    messages, and then frozen. Each packed
    message names the dictionary version it was packed with, so unpacking gives back
    exactly the octets packed. Unpacking happens only for a retransmission."""

    __slots__ = ("_compressor", "_kinds", "_learning", "_versions")

    WBITS = -12  # 4 KiB window: the dictionary plus a message fit in it
    MAX_DICTIONARY = 2048
    MAX_KINDS = 6
    LEARN_FROM = 64  # messages looked at for new kinds before the dictionary is frozen

    def __init__(self) -> None:
        self._versions: list[bytes] = []  # preset dictionary of each version
        self._kinds: set[bytes] | None = set()  # None: the dictionary is frozen
        self._compressor: Any = None  # primed with the newest dictionary, copied per use
        self._learning = self.LEARN_FROM

    def pack(self, data: bytes) -> bytes:
        """`data`, or a shorter `PackedWire` that `unpack` turns back into it."""
        if type(data) is not bytes:
            data = bytes(data)  # (a PackedWire of another packer is just octets here)
        if self._kinds is not None:
            self._learn(data)
        return self._compress(data)

    def pack_group(self, items: list[bytes]) -> list[PackedItem]:
        """Several messages packed in one deflate run (the compressor is copied and
        flushed once for all, a quarter of the work per message of `pack` for a
        node's finals, and later ones refer to earlier ones: a third of the size);
        `unpack` of each result gives back its message (decompressing the group)."""
        for item in items:
            if self._kinds is None:  # frozen (perhaps by an earlier item of this group)
                break
            self._learn(bytes(item))
        ends = array("I", accumulate(map(len, items)))
        group = _new_tuple(PackedGroup, (self._compress(b"".join(items)), ends))
        return [_new_tuple(PackedItem, (group, i)) for i in range(len(items))]

    def pack_later(self, waiting: list[Any], holder: Any, attr: str) -> list[Any]:
        """`holder`, whose `attr` holds octets to pack, put in `waiting`; once
        `PACK_GROUP` wait, their octets are packed as one group (`pack_group`: one
        deflate run, a copy and a flush of the compressor each costing more than
        compressing a message against the ones before it), each `attr` set to its
        `PackedItem`. Returns the list to wait in from now (a new one after a group)."""
        waiting.append(holder)
        if len(waiting) < PACK_GROUP:
            return waiting
        packed = self.pack_group([getattr(h, attr) for h in waiting])
        for h, item in zip(waiting, packed, strict=True):
            setattr(h, attr, item)
        return []

    def _compress(self, data: bytes) -> bytes:
        if self._compressor is None or len(data) < 64:
            return data
        c = self._compressor.copy()
        packed = c.compress(data) + c.flush()
        if len(packed) + 1 >= len(data):
            return data
        return PackedWire(bytes((len(self._versions) - 1,)) + packed)

    def unpack(self, data: bytes | PackedItem) -> bytes:
        if type(data) is PackedItem:
            group, i = data
            whole = self.unpack(group[0])
            ends = group[1]
            return whole[ends[i - 1] if i else 0 : ends[i]]
        if type(data) is not PackedWire:
            return data
        d = zlib.decompressobj(self.WBITS, self._versions[data[0]])
        return d.decompress(data[1:]) + d.flush()

    def _learn(self, data: bytes) -> None:
        kinds = self._kinds
        assert kinds is not None
        self._learning -= 1
        if self._learning <= 0:
            self._kinds = None  # frozen: the kinds of a node's finals show up early
        head = data.split(b"\r\n\r\n", 1)[0]
        first = head.split(b"\r\n", 1)[0]
        at = head.find(b"\r\nCSeq: ")
        end = head.find(b"\r\n", at + 8) if at >= 0 else -1
        method = (
            head[at + 8 : end if end >= 0 else len(head)].rsplit(b" ", 1)[-1] if at >= 0 else b""
        )
        kind = first + b" " + method
        if kind in kinds:
            return
        kinds.add(kind)
        sample = b"\r\n".join(
            _AUTH_VALUE.sub(b"=", line) if line.lower().startswith(_SECRET_HEADERS) else line
            for line in head.split(b"\r\n")
        )
        previous = self._versions[-1] if self._versions else b""
        # newest last: deflate's shortest distances reach the newest sample
        zdict = (previous + sample + b"\r\n")[-self.MAX_DICTIONARY :]
        self._versions.append(zdict)
        self._compressor = zlib.compressobj(
            1, zlib.DEFLATED, self.WBITS, 2, zlib.Z_DEFAULT_STRATEGY, zdict
        )
        if len(kinds) >= self.MAX_KINDS or len(self._versions) >= 255:
            self._kinds = None


class SharedTuples:
    """One tuple object per distinct sequence of strings seen, its strings interned.
    Bounded: when `limit` different ones are known, the table starts again (the tuples
    already handed out stay valid)."""

    __slots__ = ("_known",)

    def __init__(self, limit: int = 256) -> None:
        self._known = BoundedMemo(limit)

    def share(self, values: Iterable[str]) -> tuple[str, ...]:
        key = tuple(values)
        known = self._known.get(key)
        if known is None:
            known = self._known.remember(key, tuple(sys.intern(v) for v in key))
        return known
