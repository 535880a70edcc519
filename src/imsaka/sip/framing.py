"""SIP over stream transports: message framing by Content-Length (RFC 3261 §18.3, §7.5).

Sans-I/O and bounded: bytes go into one `bytearray`; the end of the header block is
found with `find(b"\\r\\n\\r\\n")` from a remembered offset (no rescans, no regex over
the buffer); a header block that grows past `max_size` without its empty line, a
message whose Content-Length exceeds `max_size`, and a message without
Content-Length (mandatory on streams) raise SipParseError. After such an error the
stream cannot be resynchronised and the caller closes the connection – except for
an over-long but well-framed message, whose octets are skipped (`skipping`) so the
connection keeps serving after a 513.

CRLF keep-alives between messages (RFC 5626 §3.5.1: "\\r\\n\\r\\n" ping, "\\r\\n" pong)
are consumed and counted in `keepalives`; `pings` counts each two CRLFs in a row (a
ping, even split across reads), each owed a pong (§4.4.1) by the caller. A lone CRLF
(a pong, or the §7.5 empty line before a start line) is owed nothing.
"""

from __future__ import annotations

from imsaka.sip.errors import SipParseError
from imsaka.sip.message import DEFAULT_MAX_SIZE


class StreamFramer:
    """Feed bytes with `feed`, take whole messages with `next_message`."""

    __slots__ = ("_buf", "_crlfs", "_search", "_skip", "keepalives", "max_size", "pings")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 64:
            raise ValueError("max_size: must be at least 64 octets")
        self.max_size = max_size
        self._buf = bytearray()
        self._search = 0
        self._skip = 0
        self.keepalives = 0
        self.pings = 0
        self._crlfs = 0  # a CRLF not yet part of a ping (since the last other octet)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def skipping(self) -> int:
        return self._skip

    def feed(self, data: bytes) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        if data:
            self._buf += data

    def next_message(self) -> bytes | None:
        """One whole message (header block, empty line, body), or None if more
        bytes are needed. Raises SipParseError on a framing violation."""
        buf = self._buf
        # leading CRLFs: keep-alives or the §7.5 empty lines before a start line
        if buf[:2] == b"\r\n":
            i = 0
            while buf[i : i + 2] == b"\r\n":
                i += 2
            if i:
                self.keepalives += 1
                run = self._crlfs + i // 2
                self.pings += run // 2
                self._crlfs = run % 2
                del buf[:i]
                self._search = 0
        if not buf:
            return None
        if buf[0] != 0x0D:  # (a lone CR may be half of the next CRLF)
            self._crlfs = 0
        end = buf.find(b"\r\n\r\n", self._search)
        if end < 0:
            if len(buf) > self.max_size:
                raise SipParseError(f"header block longer than {self.max_size} octets", 513)
            self._search = max(0, len(buf) - 3)
            return None
        length = _content_length(bytes(buf[:end]))
        total = end + 4 + length
        if total > self.max_size:
            # well-framed but too big: answerable with 513; skip its octets
            head = bytes(buf[: end + 4])
            have = len(buf)
            del buf[:total]
            self._skip = max(0, total - have)
            self._search = 0
            err = SipParseError(f"message larger than {self.max_size} octets", 513)
            err.head = head
            raise err
        if len(buf) < total:
            self._search = end  # the header end stays where it is
            return None
        msg = bytes(buf[:total])
        del buf[:total]
        self._search = 0
        return msg


def _content_length(head: bytes) -> int:
    """Content-Length (or `l`) from a raw header block; mandatory on streams."""
    value = None
    for line in head.split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[:1] in (b" ", b"\t"):
            continue
        name = line[:colon].strip().lower()
        if name == b"content-length" or name == b"l":
            v = line[colon + 1 :].strip()
            if not v.isdigit() or len(v) > 9:
                raise SipParseError(f"invalid Content-Length {v[:20]!r}")
            n = int(v)
            if value is not None and n != value:
                raise SipParseError("conflicting Content-Length headers")
            value = n
    if value is None:
        raise SipParseError("missing Content-Length on a stream transport")
    return value
