"""Fast paths of the SIP layer against the general way they stand in for.

- parse_message's memo of whole header lines (`message._LINES`): a line met before
  gives the very entry the line-by-line split gives (key, unfolded value, line), in
  any spelling, spacing or compact form, folded or not, and the message serialises to
  the same octets.
- the transaction layer's Timer J record leaves `next_deadline` once a transport error
  took it out of the table (no table lookup per call to tell).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.sip import message as message_mod
from imsaka.sip import parse_message
from imsaka.sip.message import make_response
from imsaka.sip.transaction import TransactionLayer

_NAMES = [
    "Max-Forwards",
    "max-forwards",
    "MAX-FORWARDS",
    "Content-Length",
    "l",
    "CSeq",
    "Require",
    "Supported",
    "k",
    "Path",
    "Service-Route",
    "Route",
    "Expires",
    "P-Visited-Network-ID",
    "P-Access-Network-Info",
    "Date",
    "Subject",
    "s",
    "X-Other",
    "Contact",
    "m",
    "i",
    "To",
]
_SEPARATORS = [":", ": ", " : ", ":\t", ":  ", "\t:"]
_VALUES = st.text(
    alphabet=st.sampled_from([*list("abcAB01 ;=<>:@.\t,\"'"), "é", "\x0b", "\xa0"]),
    max_size=24,
)


def _message(lines: list[str]) -> bytes:
    head = [
        "OPTIONS sip:a@b.example SIP/2.0",
        "Via: SIP/2.0/UDP h.example:5060;branch=z9hG4bKmemo",
        "From: <sip:a@b.example>;tag=1",
        "To: <sip:a@b.example>",
        "Call-ID: memo-1",
        "CSeq: 7 OPTIONS",
        *lines,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _parse_without_memo(data: bytes, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        m.setattr(message_mod, "_SHARED_LINE_KEYS", frozenset())
        m.setattr(message_mod, "_LINES", {})
        return parse_message(data)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(_NAMES), st.sampled_from(_SEPARATORS), _VALUES, st.booleans()),
        max_size=8,
    )
)
def test_a_remembered_line_gives_what_splitting_it_gives(fields, monkeypatch_module):
    lines = []
    for name, sep, value, fold in fields:
        if "Content-Length" in name or name == "l":
            value = "0"
        lines.append(f"{name}{sep}{value}")
        if fold:
            lines.append(" folded " + value.strip())
    data = _message(lines)
    try:
        expected = _parse_without_memo(data, monkeypatch_module)
    except message_mod.SipParseError:
        with pytest.raises(message_mod.SipParseError):
            parse_message(data)
        return
    for _ in range(2):  # the first fills the memo, the second reads it
        got = parse_message(data)
        assert got._headers == expected._headers
        assert got.to_bytes() == expected.to_bytes()
    resp = make_response(got, 200)
    assert resp.to_bytes() == make_response(expected, 200).to_bytes()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as m:
        yield m


def test_memo_entries_are_shared_and_bounded(monkeypatch):
    monkeypatch.setattr(message_mod, "_LINES", {})
    monkeypatch.setattr(message_mod, "_LINES_MAX", 8)
    data = _message(["Max-Forwards: 70", "Require: path", "Supported: path", "Expires: 60"])
    a, b = parse_message(data), parse_message(data)
    assert next(h for h in a._headers if h[0] == "require") is (
        next(h for h in b._headers if h[0] == "require")
    )
    for n in range(10):
        parse_message(_message([f"Max-Forwards: {n}"]))
        assert len(message_mod._LINES) <= 8
    # credentials and Vias never go in
    parse_message(_message(['Authorization: Digest username="x", ck="00"']))
    assert not any("Authorization" in line for line in message_mod._LINES)
    assert not any(line.startswith("Via") for line in message_mod._LINES)


def test_a_finished_record_ended_by_a_transport_error_leaves_the_deadline():
    layer = TransactionLayer(reliable=lambda dest: False)
    reqs = [
        parse_message(
            (
                "OPTIONS sip:a@b.example SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP h.example:5060;branch=z9hG4bKrec{n}\r\n"
                "From: <sip:a@b.example>;tag=1\r\nTo: <sip:a@b.example>\r\n"
                f"Call-ID: rec-{n}\r\nCSeq: 1 OPTIONS\r\n\r\n"
            ).encode()
        )
        for n in range(2)
    ]
    keys = []
    for n, req in enumerate(reqs):
        tx = layer.receive_request(req, "peer", 10.0 + n)
        layer.respond(tx.key, make_response(req, 200), 10.0 + n)
        keys.append(tx.key)
    assert layer.next_deadline() == pytest.approx(10.0 + 32)
    layer.transport_error(keys[0], 12.0)
    assert layer.next_deadline() == pytest.approx(11.0 + 32)
    layer.transport_error(keys[1], 12.0)
    assert layer.next_deadline() is None
    assert len(layer) == 0


# -- Via text memo: str(via) of a parsed / stamped / extended Via is the text built anew


def _built(via) -> str:
    return f"{via.protocol}/{via.transport} {via.sent_by}{via.params}"


_HOSTS = st.sampled_from(
    ["pcscf.home1.net", "10.0.0.1", "[2001:db8::1]", "a-b.example.", "H.Example"]
)
_PORTS = st.sampled_from(["", ":5060", ":05060", ":1", ":65535"])
_PARAMS = st.lists(
    st.tuples(
        st.sampled_from(["branch", "received", "rport", "ttl", "maddr", "x", "Branch"]),
        st.sampled_from([None, "", "z9hG4bK1", "10.0.0.2", "5", "[::1]", "a.b"]),
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(
    proto=st.sampled_from(["SIP/2.0", "sip/2.0", "SIP/3.0"]),
    transport=st.sampled_from(["UDP", "udp", "Tcp", "TLS", "WS"]),
    host=_HOSTS,
    port=_PORTS,
    params=_PARAMS,
    sep=st.sampled_from([" ", "  ", "\t"]),
    added=st.sampled_from(["received", "rport", "x", "branch"]),
    value=st.sampled_from([None, "10.0.0.9", "7"]),
)
def test_via_text_memo_is_the_text_built_anew(
    proto, transport, host, port, params, sep, added, value
):
    from imsaka.sip.errors import SipParseError
    from imsaka.sip.headers import Via, remember_via

    text = f"{proto}/{transport}{sep}{host}{port}" + "".join(
        f";{n}" if v is None else f";{n}={v}" for n, v in params
    )
    try:
        via = Via._parse(text)
    except SipParseError:
        return
    assert str(via) == _built(via)
    grown = via.with_param(added, value)
    assert str(grown) == _built(grown)
    # a response brings our Via back with one param appended by the next hop
    remember_via(text, via)
    stamped = Via.parse(f"{text};received=10.1.1.1")
    assert str(stamped) == _built(stamped)
    assert str(Via.parse(text)) == _built(via)


def test_a_non_invite_client_transaction_arms_e_before_f_as_set_timer_would():
    from imsaka.sip.transaction import Input

    req = parse_message(
        b"OPTIONS sip:a@b.example SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example:5060;branch=z9hG4bKef1\r\n"
        b"From: <sip:a@b.example>;tag=1\r\nTo: <sip:a@b.example>\r\n"
        b"Call-ID: ef-1\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    for reliable in (False, True):
        layer = TransactionLayer(reliable=lambda dest, r=reliable: r)
        tx = layer.send_request(req.copy(), "peer", 5.0)
        t1 = layer.config.t1
        if reliable:
            assert tx.timers == ((5.0 + 64 * t1, Input.TIMER_F),)
        else:
            assert tx.timers == ((5.0 + t1, Input.TIMER_E), (5.0 + 64 * t1, Input.TIMER_F))
            layer.handle_timer(5.0 + t1)  # E fires: retransmission, E doubled
            assert tx.timers[0] == (5.0 + t1 + 2 * t1, Input.TIMER_E)
        assert layer.next_deadline() == tx.timers[0][0]


@settings(max_examples=200, deadline=None)
@given(
    host=st.sampled_from(["PCSCF.home1.net", "pcscf.home1.net", "10.0.0.1", "[2001:DB8::1]"]),
    port=st.sampled_from(["", ":5060", ":5070"]),
    method=st.sampled_from(["REGISTER", "INVITE", "ACK", "SUBSCRIBE"]),
)
def test_server_key_parts_found_by_host_and_port_are_the_ones_built(host, port, method):
    from imsaka.sip.transaction import server_key

    data = (
        f"{method} sip:a@b.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}{port};branch=z9hG4bKsk1\r\n"
        "From: <sip:a@b.example>;tag=1\r\nTo: <sip:a@b.example>\r\n"
        f"Call-ID: sk-1\r\nCSeq: 1 {method}\r\n\r\n"
    ).encode()
    first, again = server_key(parse_message(data)), server_key(parse_message(data))
    via = parse_message(data).top_via
    expected = ("s", "z9hG4bKsk1", via.sent_by.lower(), "INVITE" if method == "ACK" else method)
    assert first == again == expected
    assert first[2] is again[2] and first[3] is again[3]


@pytest.mark.parametrize(
    "name",
    [
        "Transmit",
        "ResponseReceived",
        "RequestReceived",
        "AckReceived",
        "TransactionTimeout",
        "TransportError",
        "TransactionTerminated",
        "StrayResponse",
    ],
)
def test_events_built_through_their_slots_are_the_frozen_dataclasses_they_were(name):
    import dataclasses

    from imsaka.sip import transaction

    cls = getattr(transaction, name)
    names = [f.name for f in dataclasses.fields(cls)]
    values = [(n, i) for i, n in enumerate(names)]
    a = cls(*values)
    b = cls(**dict(zip(names, values, strict=True)))
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert [getattr(a, n) for n in names] == values
    assert (
        repr(a)
        == f"{name}(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, values, strict=True)) + ")"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, names[0], None)
    with pytest.raises(TypeError):
        cls(*values[:-1])
    assert not hasattr(a, "__dict__")
