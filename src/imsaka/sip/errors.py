"""The two SIP error families (RFC 3261 §21.4 statuses carried with them).

`RemoteProtocolError` means the peer's bytes were wrong; it carries the status and
reason to answer with (400 Bad Request, 513 Message Too Large, 505 ...).
`LocalProtocolError` means our own code misused the stack (a bad argument, an input
not in a transaction's state table). They are converted to drops or answers at one
boundary: the endpoint (imsaka.sip.endpoint).
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error raised by imsaka.sip."""


class LocalProtocolError(SipError):
    """Our own misuse of the SIP stack (a programming error, not the peer's)."""


class RemoteProtocolError(SipError):
    """The peer sent something wrong; `status`/`reason` is the answer to give.
    `head` may hold the header block of a well-framed but refused stream message."""

    head: bytes | None = None

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class SipParseError(RemoteProtocolError):
    """A SIP message or header value that does not parse (RFC 3261 §25 grammar)."""
