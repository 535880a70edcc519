"""Stream framing by Content-Length (RFC 3261 §18.3): bounded buffer, keep-alives,
oversized messages skipped across reads, strictness."""

from __future__ import annotations

import pytest

from imsaka.sip import SipParseError
from imsaka.sip.framing import StreamFramer

from .conftest import SEED

MSG = SEED[8]


def drain(f: StreamFramer) -> list[bytes]:
    out = []
    while (m := f.next_message()) is not None:
        out.append(m)
    return out


def test_keepalives_between_messages():
    f = StreamFramer()
    f.feed(b"\r\n\r\n" + MSG + b"\r\n\r\n\r\n\r\n" + MSG + b"\r\n")
    assert drain(f) == [MSG, MSG]
    assert f.keepalives == 3 and f.buffered == 0
    f.feed(b"\r\n\r\n")
    assert drain(f) == [] and f.buffered == 0


def test_pings_are_two_crlfs_in_a_row_even_split_and_a_lone_crlf_is_none():
    f = StreamFramer()
    f.feed(b"\r\n\r\n")
    assert drain(f) == [] and f.pings == 1
    f.feed(b"\r\n\r\n")  # the next one on an idle flow
    assert drain(f) == [] and f.pings == 2
    f.feed(MSG + b"\r\n")  # a pong after a message
    assert drain(f) == [MSG] and f.pings == 2
    f.feed(b"\r")
    assert drain(f) == [] and f.pings == 2
    f.feed(b"\n")  # with the one before: the second CRLF of a ping
    assert drain(f) == [] and f.pings == 3
    f.feed(MSG + b"\r\n\r\n" + MSG)
    assert drain(f) == [MSG, MSG] and f.pings == 4


def test_body_split_across_reads():
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    msg = MSG.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()) + body
    f = StreamFramer()
    f.feed(msg[:-5])
    assert drain(f) == []
    f.feed(msg[-5:] + msg[:10])
    assert drain(f) == [msg]
    assert f.buffered == 10


def test_oversized_message_is_skipped_across_reads_and_the_stream_goes_on():
    big_body = b"z" * 5000
    big = MSG.replace(b"Content-Length: 0", b"Content-Length: 5000") + big_body
    f = StreamFramer(max_size=2000)
    f.feed(big[:1500])
    with pytest.raises(SipParseError) as e:
        drain(f)
    assert e.value.status == 513 and e.value.head.startswith(b"REGISTER ")
    assert f.skipping > 0
    rest = big[1500:]
    for i in range(0, len(rest), 700):  # the remaining body arrives in pieces
        f.feed(rest[i : i + 700])
        assert drain(f) == []
    assert f.skipping == 0
    f.feed(MSG)
    assert drain(f) == [MSG]


def test_header_block_without_end_is_bounded():
    f = StreamFramer(max_size=1000)
    f.feed(b"REGISTER sip:x SIP/2.0\r\n")
    for _ in range(40):
        try:
            f.feed(b"X-Pad: " + b"a" * 30 + b"\r\n")
            assert drain(f) == []
        except SipParseError as e:
            assert e.status == 513 and e.head is None
            break
    else:
        raise AssertionError("an endless header block was not refused")
    assert f.buffered <= 1000 + 40


def test_framing_errors():
    for bad in (
        MSG.replace(b"Content-Length: 0\r\n", b""),
        MSG.replace(b"Content-Length: 0", b"Content-Length: x"),
        MSG.replace(b"Content-Length: 0", b"Content-Length: 1\r\nl: 2"),
        MSG.replace(b"Content-Length: 0", b"Content-Length: 1234567890"),
    ):
        f = StreamFramer()
        f.feed(bad)
        with pytest.raises(SipParseError):
            f.next_message()
    # compact form counts
    f = StreamFramer()
    f.feed(MSG.replace(b"Content-Length: 0", b"l: 2") + b"ok")
    assert drain(f)[0].endswith(b"\r\n\r\nok")
    with pytest.raises(ValueError):
        StreamFramer(max_size=10)
