"""Hypothesis mutations of the seed packets: only SipParseError may escape the parser
and the typed views; whatever parses serializes to bytes that parse to the same."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imsaka.sip import SipParseError, parse_message
from imsaka.sip.framing import StreamFramer
from imsaka.sip.proxy import error_response_bytes

from .conftest import SEED

PACKETS = [SEED[n] for n in range(1, 14)]
INTERESTING = [
    b"\r\n",
    b"\r",
    b"\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"[",
    b"]",
    b"%",
    b"=",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"@",
    b"/",
    b"?",
    b"z9hG4bK",
    b"SIP/2.0",
    b"0",
    b"9" * 12,
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(PACKETS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:  # flip a byte
            i = min(pos, len(data) - 1)
            data[i] = draw(st.integers(0, 255))
        elif op == 1:  # insert something interesting
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == 2:  # delete a span
            n = draw(st.integers(1, 40))
            del data[pos : pos + n]
        elif op == 3:  # duplicate a span
            n = draw(st.integers(1, 80))
            data[pos:pos] = data[pos : pos + n]
        else:  # random bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
    return bytes(data)


def _touch_views(m) -> None:
    _ = (
        m.via,
        m.cseq,
        m.from_,
        m.to,
        m.contacts,
        m.max_forwards,
        m.expires,
        m.route,
        m.path,
        m.service_route,
        m.record_route,
        m.name_addrs("p-associated-uri"),
        m.charging_vector,
    )
    for name in ("authorization", "www-authenticate", "proxy-authenticate", "proxy-authorization"):
        m.auth(name)
    for name in ("security-client", "security-server", "security-verify"):
        m.security(name)
    for na in (m.from_, m.to, *m.contacts):
        _ = na.parsed_uri


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_only_raise_sip_parse_error(data):
    try:
        m = parse_message(data)
    except SipParseError as exc:
        assert 100 <= exc.status <= 699 and exc.reason
        answer = error_response_bytes(data, exc.status, exc.reason)
        if answer is not None:
            assert parse_message(answer).status == exc.status
        return
    again = parse_message(m.to_bytes())

    def items(msg):  # to_bytes() adds a missing Content-Length and fixes a wrong one
        return [(n, v) for n, v in msg.header_items() if n.lower() not in ("content-length", "l")]

    assert items(again) == items(m)
    assert again.body == m.body
    try:
        _touch_views(m)
    except SipParseError:
        pass


@settings(max_examples=150, deadline=None)
@given(mutated(), st.lists(st.integers(1, 64), min_size=1, max_size=30))
def test_mutations_through_the_stream_framer(data, cuts):
    framer = StreamFramer(max_size=4096)
    pos = 0
    try:
        for n in cuts * 40:
            if pos >= len(data):
                break
            framer.feed(data[pos : pos + n])
            pos += n
            while (m := framer.next_message()) is not None:
                try:
                    parse_message(m)
                except SipParseError:
                    pass
    except SipParseError:
        pass
    assert framer.buffered <= 4096 + 64


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(data):
    try:
        parse_message(data)
    except SipParseError:
        pass


class _FakeTransport:
    """A SipTransport without sockets: records what the endpoint sends."""

    name = "udp"
    reliable = False
    respond_to_source = False
    local_address = ("127.0.0.1", 5060)

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def send(self, data, addr) -> None:
        self.sent.append((data, addr))

    def set_receiver(self, receiver) -> None:
        self.receiver = receiver

    def set_error_handler(self, handler) -> None:
        pass

    async def close(self) -> None:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(mutated(), min_size=1, max_size=4))
def test_endpoint_receive_path_never_raises(datas):
    import asyncio

    from imsaka.sip.endpoint import SipEndpoint

    async def scenario():
        ep = SipEndpoint(owner="fuzz")
        t = _FakeTransport()
        ep.add_transport(t)
        ep.set_request_handler(lambda req, tx: tx.reply(200))
        for data in datas:
            t.receiver(data, ("127.0.0.1", 40000), t)  # must never raise
        # everything we sent is a well-formed SIP response
        for out, _addr in t.sent:
            assert parse_message(out).__class__.__name__ == "Response"
        await ep.close()

    asyncio.run(scenario())
