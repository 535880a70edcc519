"""Message.add_after: several lines added and moved after their anchors in one pass,
the same message (lines, views, octets) as `add` of each then `move_after`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.sip import LocalProtocolError, Request, SipParseError, parse_message
from imsaka.sip._abnf import canonical_key

from .conftest import SEED

# Names as callers write them (compact forms and lower case too) of headers that are
# anchors, that are added, or both; values with commas, spaces to strip, or empty.
_NAMES = [
    "Via",
    "v",
    "Max-Forwards",
    "P-Access-Network-Info",
    "Path",
    "path",
    "Require",
    "Proxy-Require",
    "P-Visited-Network-ID",
    "P-Charging-Vector",
    "Route",
    "Contact",
    "m",
    "X-Other",
]
_KEYS = sorted({canonical_key(n) for n in _NAMES} | {"call-id", "cseq", "from", "to"})
_VALUES = st.sampled_from(
    ["a", "b, c", " spaced ", "", "SIP/2.0/UDP h;branch=z9hG4bKx", '<sip:p@h;lr>, "q" <sip:q>']
)
_LINES = st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=10)


def _message(lines: list[tuple[str, str]]) -> Request:
    return Request("REGISTER", "sip:home1.net", lines)


def _by_add_and_move(m: Request, added, anchors) -> bool:
    for name, value in added:
        m.add(name, value)
    return m.move_after({canonical_key(n) for n, _ in added}, anchors)


@settings(max_examples=400, deadline=None)
@given(
    base=_LINES,
    added=_LINES,
    anchors=st.frozensets(st.sampled_from(_KEYS), max_size=4),
    serialised=st.booleans(),
)
def test_add_after_equals_adds_then_move_after(base, added, anchors, serialised):
    one_pass, step_by_step = _message(base), _message(base)
    for m in (one_pass, step_by_step):
        if serialised:
            m.to_bytes()  # a cached wire form that must not survive the change
        if any(canonical_key(n) == "via" for n, _ in base):
            try:
                _ = m.via  # cached views of changed headers must go
            except SipParseError:
                pass
        _ = m.contacts if all(canonical_key(n) != "contact" for n, _ in base) else None
    one_pass.add_after(iter(added), anchors)  # any iterable, read once
    _by_add_and_move(step_by_step, added, anchors)
    assert one_pass._headers == step_by_step._headers
    # the same views dropped (none left stale), the same kept
    assert (one_pass._cache or {}).keys() == (step_by_step._cache or {}).keys()
    assert one_pass.to_bytes() == step_by_step.to_bytes()


def test_add_after_a_forwarded_register():
    """The P-CSCF's additions (TS 24.228 packet 2) to a REGISTER the UE sent with a
    Path of its own: that line stays first of the Paths, the block goes after
    P-Access-Network-Info, the other lines keep spelling and folding."""
    m = parse_message(SEED[1])
    m.remove("Require", "Proxy-Require", "Security-Client")  # as the P-CSCF does first
    m.add("Path", "<sip:ue-proxy.example;lr>")
    ref = m.copy()
    vias = m.via
    added = [
        ("Path", "<sip:term@pcscf1.visited1.net;lr>"),
        ("Require", "path"),
        ("P-Visited-Network-ID", '"Visited Network Number 1"'),
        ("P-Charging-Vector", 'icid-value="x1"'),
    ]
    anchors = {"via", "max-forwards", "p-access-network-info"}
    m.add_after(added, anchors)
    assert _by_add_and_move(ref, added, anchors)
    assert m.to_bytes() == ref.to_bytes()
    keys = m.header_keys()
    at = keys.index("p-access-network-info") + 1
    assert keys[at : at + 5] == [
        "path",
        "path",
        "require",
        "p-visited-network-id",
        "p-charging-vector",
    ]
    assert m.get_all("Path")[0] == "<sip:ue-proxy.example;lr>"
    assert m.via is vias  # Via untouched: its views kept
    assert b'Digest username="user1_private@home1.net",\r\n    realm=' in m.to_bytes()


def test_add_after_bad_value_changes_nothing():
    m = parse_message(SEED[1])
    wire = m.to_bytes()
    with pytest.raises(LocalProtocolError):
        m.add_after([("Path", "<sip:a;lr>"), ("Require", "x\r\nEvil: 1")], {"via"})
    assert m.to_bytes() == wire
    m.add_after([], {"via"})
    assert m.to_bytes() == wire
