"""The two error families of the Diameter layer (RFC 6733 §7.1 result codes carried).

`LocalProtocolError` is our own misuse (building a request without a mandatory field,
sending before the peer is open). `RemoteProtocolError` is the peer's bytes being wrong;
it carries the answer to give: the Result-Code (RFC 6733 §7.1.3-7.1.5) and, where the
fault is one AVP, the Failed-AVP content (RFC 6733 §7.5). Messages never include AVP
payloads, so a secret (CK, IK, XRES) cannot leak through an exception text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imsaka.diameter.codec import Avp


class DiameterError(Exception):
    """Base of both families."""


class RequestRefused(DiameterError):
    """Raised by a request handler that cannot act on a request now: the node answers
    it with `result_code`, a base Result-Code (an answer-message with the E bit for a
    3xxx protocol error, RFC 6733 §7.2), e.g. 3004 DIAMETER_TOO_BUSY, on which the
    sender tries another peer (RFC 6733 §7.1.3)."""

    def __init__(self, result_code: int, reason: str = "") -> None:
        super().__init__(reason or f"refused with {result_code}")
        self.result_code = result_code


class LocalProtocolError(DiameterError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(DiameterError):
    """The peer sent something we must refuse.

    `result_code` is the Result-Code to answer with (e.g. 5005 DIAMETER_MISSING_AVP),
    `failed_avp` the AVP to put in Failed-AVP (for a missing AVP: one with the right code
    and vendor and an empty or minimal payload, RFC 6733 §7.5), `reason` a short name for
    drop counters and logs (e.g. "missing-avp"), `fatal` whether the transport can no
    longer be trusted (framing lost) and must be closed.
    """

    def __init__(
        self,
        message: str,
        *,
        result_code: int,
        reason: str,
        failed_avp: Avp | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.reason = reason
        self.failed_avp = failed_avp
        self.fatal = fatal


class FramingError(RemoteProtocolError):
    """The stream cannot be cut into Diameter messages any more: always fatal."""

    def __init__(self, message: str, *, result_code: int, reason: str) -> None:
        super().__init__(message, result_code=result_code, reason=reason, fatal=True)


class DiameterRequestError(DiameterError):
    """`DiameterNode.request()` got no answer: `reason` is "timeout", "disconnected",
    "no-connection", "bad-answer" or "stopped"."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DiameterTimeoutError(DiameterRequestError, TimeoutError):
    """No answer within the request's timeout (also a builtin TimeoutError)."""
