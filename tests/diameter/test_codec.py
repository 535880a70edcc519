"""Codec: strict framing (RFC 6733 §3), strict AVP decoding (§4.1), dictionary, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.diameter import codec
from imsaka.diameter.errors import FramingError, RemoteProtocolError
from tests.diameter.helpers import maa_for, mar


def _messages() -> list[bytes]:
    m = mar()
    return [m.encode(1, 2), maa_for(m).encode(1, 2), m.encode(3, 4)]


def test_framer_whole_byte_by_byte_and_split():
    msgs = _messages()
    stream = b"".join(msgs)
    assert codec.Framer().feed(stream) == msgs
    f = codec.Framer()
    out = []
    for i in range(len(stream)):
        out += f.feed(stream[i : i + 1])
    assert out == msgs and f.buffered == 0
    for cut in (1, 3, 4, 19, 20, 21, len(msgs[0]) - 1, len(msgs[0]) + 5):
        f = codec.Framer()
        assert f.feed(stream[:cut]) + f.feed(stream[cut:]) == msgs


def test_framer_keeps_trailing_partial():
    msgs = _messages()
    f = codec.Framer()
    assert f.feed(msgs[0] + msgs[1][:7]) == [msgs[0]]
    assert f.buffered == 7
    assert f.feed(msgs[1][7:]) == [msgs[1]]


@pytest.mark.parametrize(
    ("head", "reason", "code"),
    [
        (b"\x01\x00\x00\x00", "length-too-small", 5015),
        (b"\x01\x00\x00\x13", "length-too-small", 5015),
        (b"\x01\x00\x00\x16", "length-not-multiple-of-4", 5015),
        (b"\x01\xff\xff\xfc", "length-too-large", 5015),
        (b"\x02\x00\x00\x14", "bad-version", 5011),
        (b"GET ", "bad-version", 5011),
    ],
)
def test_framer_rejects_bad_header_from_first_four_octets(head, reason, code):
    f = codec.Framer(max_length=4096)
    assert f.feed(head[:3]) == []  # three octets: nothing to judge yet
    with pytest.raises(FramingError) as info:
        f.feed(head[3:])  # the fourth octet decides, before any body arrives
    assert info.value.reason == reason and info.value.result_code == code
    assert info.value.fatal


def test_framer_cap_is_configurable():
    data = _messages()[1]
    with pytest.raises(FramingError):
        codec.Framer(max_length=len(data) - 4).feed(data)
    assert codec.Framer(max_length=len(data)).feed(data) == [data]
    with pytest.raises(ValueError, match="max_length"):
        codec.Framer(max_length=8)


def test_decode_message_strictness():
    data = _messages()[0]
    assert codec.decode_message(data).code == 303
    with pytest.raises(FramingError):
        codec.decode_message(data[:-4])  # length field says more
    with pytest.raises(FramingError):
        codec.decode_message(data[:10])
    bad_bits = bytearray(data)
    bad_bits[4] |= 0x20  # E bit on a request
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode_message(bytes(bad_bits))
    assert info.value.result_code == codec.DIAMETER_INVALID_HDR_BITS
    reserved = bytearray(data)
    reserved[4] |= 0x01
    with pytest.raises(RemoteProtocolError):
        codec.decode_message(bytes(reserved))


def _msg_with_body(body: bytes) -> bytes:
    return (
        struct.pack("!IIIII", (1 << 24) | (20 + len(body)), (0x80 << 24) | 303, 16777216, 1, 2)
        + body
    )


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("!II", 263, (0x40 << 24) | 4) + b"\0" * 4,  # length below header
        struct.pack("!II", 263, (0x40 << 24) | 40) + b"abcd",  # past the end
        struct.pack("!II", 263, (0xC0 << 24) | 10) + b"\0" * 4,  # V set, length < 12
        b"\0\0\x01\x07",  # truncated header
    ],
)
def test_bad_avp_lengths_are_5014(body):
    body += b"\0" * (-len(body) % 4)
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode_message(_msg_with_body(body))
    assert info.value.result_code == codec.DIAMETER_INVALID_AVP_LENGTH


def test_avp_typed_views():
    a = codec.avp_def(257)("192.0.2.1")
    assert a.data == b"\0\x01\xc0\x00\x02\x01" and a.address == "192.0.2.1"
    assert codec.avp_def(257)("::1").address == "::1"
    with pytest.raises(RemoteProtocolError):
        _ = codec.Avp(257, 0, 0x40, b"\0\x09abc").address
    assert codec.RESULT_CODE(2001).u32 == 2001
    with pytest.raises(RemoteProtocolError):
        _ = codec.Avp(268, 0, 0x40, b"\0\0").u32
    assert codec.Avp(1, 0, 0, struct.pack("!Q", 5)).u64 == 5
    assert codec.Avp(1, 0, 0, struct.pack("!i", -5)).i32 == -5


def test_dictionary_from_library_and_overrides():
    d = codec.avp_def(612, 10415)
    assert (d.name, d.type, d.mandatory, d.flags) == ("SIP-Auth-Data-Item", "Grouped", True, 0xC0)
    assert codec.avp_def(608, 10415).type == "UTF8String"
    assert codec.avp_def(637, 10415).flags == 0x80  # UAR-Flags: V, not M (Wireshark)
    assert codec.avp_def(648, 10415).flags == 0x80  # Multiple-Registration-Indication
    assert codec.avp_def(269).flags == 0  # Product-Name: M must not
    assert codec.avp_def(628, 10415).flags == 0xC0
    assert codec.avp_def(263).flags == 0x40
    with pytest.raises(KeyError):
        codec.avp_def(999999, 4242)


def test_error_answer_copies_ids_and_session():
    req = mar().to_message(hop_by_hop=9, end_to_end=10)
    ans = codec.error_answer(
        req,
        codec.DIAMETER_UNKNOWN_PEER,
        "h",
        "r",
        failed_avp=codec.Avp(601, 10415, 0xC0, b""),
        error_message="no",
    )
    assert (ans.hop_by_hop, ans.end_to_end, ans.is_request, ans.is_error) == (9, 10, False, True)
    assert ans.find(codec.AVP_SESSION_ID) == req.find(codec.AVP_SESSION_ID)
    assert ans.find(codec.AVP_RESULT_CODE).u32 == 3010
    assert ans.find(codec.AVP_FAILED_AVP).group[0].code == 601
    assert not codec.error_answer(req, 5005, "h", "r").is_error  # 5xxx: no E bit


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_only_remote_protocol_error(data):
    try:
        for frame in codec.Framer(max_length=2048).feed(data):
            msg = codec.decode_message(frame)
            from imsaka.diameter import cx

            if cx.is_cx(msg):
                cx.decode(msg)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_messages()[1]) - 1), st.integers(0, 255))
def test_fuzz_mutated_maa(pos, value):
    from imsaka.diameter import cx

    data = bytearray(_messages()[1])
    data[pos] = value
    try:
        for frame in codec.Framer().feed(bytes(data)):
            cx.decode(codec.decode_message(frame))
    except RemoteProtocolError:
        pass


def test_framer_returns_good_messages_before_a_bad_header():
    good = _messages()[0]
    f = codec.Framer()
    assert f.feed(good + b"\x01\x00\x00\x00") == [good]
    assert f.error is not None and f.error.reason == "length-too-small"
    with pytest.raises(FramingError):
        f.feed(b"")


def test_m_and_v_flags_match_wiresharks_dictionary():
    """Every AVP imsaka builds carries the M/V bits Wireshark's dictionary prescribes."""
    import re
    from pathlib import Path

    from imsaka.diameter import cx

    base = Path("/usr/share/wireshark/diameter")
    rules: dict[tuple[int, int], str] = {}
    for name, vendor in (("dictionary.xml", 0), ("TGPP.xml", 10415)):
        text = (base / name).read_text(errors="replace")
        for m in re.finditer(r'<avp name="[^"]+" code="(\d+)" mandatory="(\w+)"', text):
            rules.setdefault((int(m.group(1)), vendor), m.group(2))
    used = {(code, vendor) for cls in cx._BY_KEY.values() for _a, code, vendor, *_ in cls._SPEC}
    used |= {
        (c, 0)
        for c in (
            257,
            258,
            260,
            263,
            264,
            265,
            266,
            267,
            268,
            269,
            273,
            277,
            278,
            279,
            281,
            296,
            297,
            298,
        )
    }
    used |= {(c, 10415) for c in (604, 605, 608, 609, 610, 611, 613, 616, 617, 625, 626, 635)}
    used |= {(c, 0) for c in (104, 110, 111, 121)}
    for key in sorted(used):
        assert key in rules, key
        if rules[key] != "may":
            assert codec.avp_def(*key).mandatory == (rules[key] == "must"), key


def test_avp_builder_refuses_wrong_types():
    with pytest.raises(TypeError):
        codec.ORIGIN_HOST(12)
    with pytest.raises(ValueError):
        codec.HOST_IP_ADDRESS("not-an-ip")
    assert codec.ORIGIN_HOST(b"h").data == b"h"
