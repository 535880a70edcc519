"""XML bodies from the network, parsed defensively: a size cap and no document type or
entity declarations (so no entity expansion and no external entities), then
`xml.etree`. Used for the TS 29.228 User-Data an S-CSCF gets in an SAA and the RFC 3680
reginfo a UE gets in a NOTIFY."""

from __future__ import annotations

from typing import Any


def parse_untrusted(data: bytes, *, limit: int, what: str, error: type[Exception]) -> Any:
    """The root element of `data`; `error` (with a reason naming `what`) for a body over
    `limit` octets, one with a DOCTYPE or ENTITY declaration, or one that is not
    well-formed."""
    if len(data) > limit:
        raise error(f"{what} of {len(data)} octets (limit {limit})")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise error(f"{what} with a document type or entity declaration is refused")
    # Imported at the first body: a process that never sees one (a UE load test) does
    # not load the XML modules.
    from xml.etree import ElementTree

    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise error(f"{what} is not well-formed XML ({exc})") from None
