"""The two error families of imsaka.ipsec (STYLE.md rule 4).

`RemoteProtocolError` (the peer's bytes or headers were wrong) carries the SIP status
to answer with (400, 421, 494); it subclasses the SIP family so the SIP boundary that
answers SIP errors answers these too. `LocalProtocolError` is our own misuse (a bad
argument, an input that the SA state table does not allow). Bad ESP packets never
raise: they are counted drops (`imsaka.ipsec.esp.EspDrop`).

No message in this module ever contains key material.
"""

from __future__ import annotations

from imsaka.sip.errors import LocalProtocolError as _SipLocal
from imsaka.sip.errors import RemoteProtocolError as _SipRemote

__all__ = [
    "DowngradeError",
    "IpsecError",
    "LocalProtocolError",
    "PortPoolExhausted",
    "RemoteProtocolError",
    "SecAgreeParseError",
    "SequenceNumberExhausted",
    "SpiPoolExhausted",
    "XfrmUnavailable",
]


class IpsecError(Exception):
    """Marker base: every error raised by imsaka.ipsec is also an IpsecError."""


class LocalProtocolError(_SipLocal, IpsecError):
    """Our own misuse of the IPsec layer (a programming or configuration error)."""


class RemoteProtocolError(_SipRemote, IpsecError):
    """The peer sent something wrong; `status`/`reason` is the SIP answer to give."""


class SecAgreeParseError(RemoteProtocolError):
    """A Security-Client/Server/Verify value that does not parse (RFC 3329 §2.2, Annex H)."""


class DowngradeError(RemoteProtocolError):
    """Security-Verify differs from the Security-Server sent (RFC 3329 §2.3.1): a bid-down."""

    def __init__(self, reason: str, status: int = 494) -> None:
        super().__init__(reason, status)


class SequenceNumberExhausted(LocalProtocolError):
    """An outbound SA used up its 2^32-1 sequence numbers; a new registration is needed.

    RFC 4303 §3.3.3: without ESN the counter must not cycle; a new SA is required.
    For IMS the only way to get new keys is a new registration (TS 33.203 §7.4).
    """


class SpiPoolExhausted(LocalProtocolError):
    """Every SPI in the configured range is live; no SPI can be allocated."""


class PortPoolExhausted(LocalProtocolError):
    """Every protected port pair in the configured range is in use."""


class XfrmUnavailable(IpsecError):
    """The kernel cannot hold ESP transport SAs (no XFRM, no esp4/esp6, or no privilege)."""
