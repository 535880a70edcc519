"""Cx events: round trips, TS 29.229 bytes, mandatory AVPs, secrets, library interop."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.diameter import codec, cx
from imsaka.diameter.errors import RemoteProtocolError
from tests.diameter.helpers import AUTN, AUTS, CK, IK, RAND, XRES, all_commands, maa_for, mar


@pytest.mark.parametrize("event", all_commands(), ids=lambda e: type(e).__name__)
def test_round_trip_every_command(event):
    data = event.encode(0x11223344, 0x55667788)
    back = cx.decode_bytes(data)
    assert back == event
    assert type(back) is type(event)
    msg = codec.decode_message(data)
    assert msg.app_id == cx.CX_APPLICATION_ID
    assert msg.hop_by_hop == 0x11223344 and msg.end_to_end == 0x55667788
    assert msg.is_request == event.IS_REQUEST
    assert msg.avps[0].code == codec.AVP_SESSION_ID  # RFC 6733 §8.8: Session-Id first
    vsai = msg.find(codec.AVP_VENDOR_SPECIFIC_APPLICATION_ID)
    assert [(a.code, a.u32) for a in vsai.group] == [(266, 10415), (258, 16777216)]
    assert msg.find(codec.AVP_AUTH_SESSION_STATE).u32 == cx.NO_STATE_MAINTAINED


@pytest.mark.parametrize("event", all_commands(), ids=lambda e: type(e).__name__)
def test_every_command_readable_by_corrected_library(event):
    lib = codec.to_library(event.encode(1, 2))
    assert lib.header.command_code == event.CODE
    assert lib.header.is_request == event.IS_REQUEST
    assert lib.session_id == "s;1" or lib.session_id == event.session_id
    if event.IS_REQUEST:
        assert codec.missing_required(lib) == []


def _avp_at(data: bytes, code: int, vendor: int) -> tuple[int, int, int, bytes]:
    """Find (flags, length, vendor, payload) of the first AVP with code/vendor, any depth."""

    def walk(buf: bytes, off: int, end: int):
        while off < end:
            c, fl = struct.unpack_from("!II", buf, off)
            flags, length = fl >> 24, fl & 0xFFFFFF
            v = struct.unpack_from("!I", buf, off + 8)[0] if flags & 0x80 else 0
            head = 12 if flags & 0x80 else 8
            payload = buf[off + head : off + length]
            if c == code and v == vendor:
                return flags, length, v, payload
            if c in (612, 603, 615, 632, 635, 260, 297, 279):
                found = walk(buf, off + head, off + length)
                if found:
                    return found
            off += (length + 3) & ~3
        return None

    return walk(data, 20, len(data))


def test_maa_bytes_follow_ts_29229():
    data = maa_for(mar()).encode(1, 2)
    # Header: version 1, command 303, P bit only (answer), application Cx.
    assert data[0] == 1
    assert struct.unpack_from("!I", data, 4)[0] == (0x40 << 24) | 303
    assert struct.unpack_from("!I", data, 8)[0] == 16777216
    # SIP-Auth-Data-Item 612 vendor 10415, V and M set (TS 29.229 §6.3 table).
    flags, _length, vendor, _payload = _avp_at(data, 612, 10415)
    assert flags == 0xC0 and vendor == 10415
    expectations = {
        613: struct.pack("!I", 1),  # SIP-Item-Number
        608: b"Digest-AKAv1-MD5",  # SIP-Authentication-Scheme, UTF8String
        609: RAND + AUTN,  # SIP-Authenticate
        610: XRES,  # SIP-Authorization
        625: CK,  # Confidentiality-Key
        626: IK,  # Integrity-Key
    }
    for code, value in expectations.items():
        f, ln, v, p = _avp_at(data, code, 10415)
        assert (f, v, p) == (0xC0, 10415, value), code
        assert ln == 12 + len(value)
    # SIP-Number-Auth-Items 607 vendor 10415 (not RFC 4740's 382).
    assert _avp_at(data, 607, 10415)[3] == struct.pack("!I", 1)
    assert _avp_at(data, 382, 0) is None and _avp_at(data, 376, 0) is None
    # Result-Code base AVP, M set, no vendor.
    assert _avp_at(data, 268, 0)[:3] == (0x40, 12, 0)


def test_exact_bytes_of_a_sip_auth_data_item():
    item = cx.SipAuthDataItem(sip_authentication_scheme="Digest-AKAv1-MD5")
    avp = codec.Avp(612, 10415, 0xC0, cx._encode_group(cx.SipAuthDataItem, item))
    expected = (
        bytes.fromhex(
            "00000264"
            "c0000028"
            "000028af"  # 612, V+M, length 40, vendor 10415
            "00000260"
            "c000001c"
            "000028af"  # 608, V+M, length 28, vendor 10415
        )
        + b"Digest-AKAv1-MD5"
    )
    assert avp.encode() == expected


def test_experimental_result_bytes():
    uaa = cx.UAA(
        session_id="s",
        origin_host="h",
        origin_realm="r",
        experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
        server_name="sip:s",
    )
    data = uaa.encode()
    flags, length, _, payload = _avp_at(data, 297, 0)
    assert flags == 0x40 and length == 32
    assert payload == bytes.fromhex("0000010a4000000c000028af0000012a4000000c000007d1")
    assert cx.decode_bytes(data).result == 2001


def test_resync_mar():
    req = mar(
        sip_auth_data_item=cx.SipAuthDataItem(
            sip_authentication_scheme=cx.SCHEME_AKAV1_MD5, sip_authorization=RAND + AUTS
        )
    )
    back = cx.decode_bytes(req.encode())
    assert back.is_resync
    assert back.sip_auth_data_item.rand == RAND and back.sip_auth_data_item.auts == AUTS
    assert not mar().is_resync


def test_secrets_never_in_repr():
    maa = maa_for(mar())
    text = repr(maa) + str(maa) + repr(codec.decode_message(maa.encode()))
    for secret in (CK, IK, XRES):
        assert secret.hex() not in text and repr(secret) not in text
    assert "confidentiality_key" not in text and "integrity_key" not in text


REQUIRED = {
    cx.UAR: [
        "session_id",
        "origin_host",
        "origin_realm",
        "destination_realm",
        "user_name",
        "public_identity",
        "visited_network_identifier",
    ],
    cx.MAR: [
        "session_id",
        "origin_host",
        "origin_realm",
        "destination_realm",
        "user_name",
        "public_identity",
        "server_name",
        "sip_number_auth_items",
        "sip_auth_data_item",
    ],
    cx.SAR: [
        "session_id",
        "origin_host",
        "origin_realm",
        "destination_realm",
        "server_name",
        "server_assignment_type",
        "user_data_already_available",
    ],
    cx.LIR: ["session_id", "origin_host", "origin_realm", "destination_realm", "public_identity"],
    cx.RTR: [
        "session_id",
        "origin_host",
        "origin_realm",
        "destination_host",
        "destination_realm",
        "user_name",
        "deregistration_reason",
    ],
    cx.PPR: [
        "session_id",
        "origin_host",
        "origin_realm",
        "destination_host",
        "destination_realm",
        "user_name",
    ],
}


def _requests():
    seen = {}
    for e in all_commands():
        if e.IS_REQUEST and type(e) not in seen:
            seen[type(e)] = e
    return list(seen.values())


@pytest.mark.parametrize("event", _requests(), ids=lambda e: type(e).__name__)
def test_missing_mandatory_avp_is_5005_with_failed_avp(event):
    msg = event.to_message()
    spec = {attr: (code, vendor) for attr, code, vendor, *_ in event._SPEC}
    for attr in REQUIRED[type(event)]:
        code, vendor = spec[attr]
        stripped = dataclasses.replace(
            msg, avps=tuple(a for a in msg.avps if not (a.code == code and a.vendor == vendor))
        )
        with pytest.raises(RemoteProtocolError) as info:
            cx.decode(stripped)
        assert info.value.result_code == codec.DIAMETER_MISSING_AVP
        assert (info.value.failed_avp.code, info.value.failed_avp.vendor) == (code, vendor)
    for code in (260, 277):  # Vendor-Specific-Application-Id, Auth-Session-State
        stripped = dataclasses.replace(msg, avps=tuple(a for a in msg.avps if a.code != code))
        with pytest.raises(RemoteProtocolError) as info:
            cx.decode(stripped)
        assert info.value.failed_avp.code == code


@pytest.mark.parametrize("event", _requests(), ids=lambda e: type(e).__name__)
def test_optional_avps_really_optional(event):
    """The corrected definitions: a request with only its { } AVPs decodes (LIR/SAR/PPR)."""
    required = set(REQUIRED[type(event)])
    minimal = dataclasses.replace(
        event,
        **{
            f.name: (() if isinstance(getattr(event, f.name), tuple) else None)
            for f in dataclasses.fields(event)
            if f.name not in required
        },
    )
    assert cx.decode_bytes(minimal.encode()) == minimal
    lib = codec.to_library(minimal.encode())
    assert codec.missing_required(lib) == []


def test_missing_avp_inside_group():
    rtr = next(e for e in all_commands() if isinstance(e, cx.RTR))
    msg = rtr.to_message()
    avps = []
    for a in msg.avps:
        if a.code == 615:
            a = codec.Avp(615, 10415, a.flags, codec.avp_def(617, 10415)("x").encode())
        avps.append(a)
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(dataclasses.replace(msg, avps=tuple(avps)))
    assert info.value.failed_avp.code == 616


def test_repeated_single_avp_is_5009():
    msg = mar().to_message()
    dup = [a for a in msg.avps if a.code == 601]
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(dataclasses.replace(msg, avps=msg.avps + tuple(dup)))
    assert info.value.result_code == codec.DIAMETER_AVP_OCCURS_TOO_MANY_TIMES


def test_wrong_size_unsigned_is_5014_and_bad_utf8_5004():
    msg = mar().to_message()
    bad = tuple(
        codec.Avp(a.code, a.vendor, a.flags, b"\0\0\0\0\0") if a.code == 607 else a
        for a in msg.avps
    )
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(dataclasses.replace(msg, avps=bad))
    assert info.value.result_code == codec.DIAMETER_INVALID_AVP_LENGTH
    assert info.value.failed_avp.code == 607
    bad = tuple(
        codec.Avp(a.code, a.vendor, a.flags, b"\xff\xfe") if a.code == 1 else a for a in msg.avps
    )
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(dataclasses.replace(msg, avps=bad))
    assert info.value.result_code == codec.DIAMETER_INVALID_AVP_VALUE


def test_unknown_avps_ignored():
    """Kamailio adds a vendor-50 AVP 494 to SAR: ignored, not refused."""
    sar = next(e for e in all_commands() if isinstance(e, cx.SAR))
    msg = sar.to_message()
    extra = codec.Avp(494, 50, 0xC0, b"call-id@host")
    assert cx.decode(dataclasses.replace(msg, avps=(*msg.avps, extra))) == sar


def test_library_built_mar_decodes_with_ours():
    cls = codec.corrected_command("MultimediaAuthRequest")
    from diameter.message.avp.grouped import SipAuthDataItem3gpp, VendorSpecificApplicationId

    lib = cls()
    lib.session_id = "lib;1"
    lib.vendor_specific_application_id = VendorSpecificApplicationId(
        vendor_id=10415, auth_application_id=16777216
    )
    lib.auth_session_state = 1
    lib.origin_host = b"scscf.ims.test"
    lib.origin_realm = b"ims.test"
    lib.destination_realm = b"ims.test"
    lib.user_name = "u@ims.test"
    lib.public_identity = ["sip:u@ims.test"]
    lib.server_name = "sip:scscf"
    lib.sip_number_auth_items = 2
    lib.sip_auth_data_item = SipAuthDataItem3gpp(
        sip_authentication_scheme="Digest-AKAv1-MD5", sip_authorization=RAND + AUTS
    )
    lib.header.hop_by_hop_identifier = 7
    ours = cx.decode(codec.from_library(lib))
    assert ours.sip_number_auth_items == 2
    assert ours.sip_auth_data_item.auts == AUTS
    assert ours.public_identity == "sip:u@ims.test"


def test_answer_helpers():
    a = cx.MAA(
        session_id="s",
        origin_host="h",
        origin_realm="r",
        experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN,
    )
    assert a.result == 5001 and not a.is_success
    assert maa_for(mar()).is_success
    assert cx.is_cx(mar().to_message())
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(codec.Message(999, 0x80, cx.CX_APPLICATION_ID, 0, 0, ()))
    assert info.value.result_code == codec.DIAMETER_COMMAND_UNSUPPORTED


@pytest.mark.parametrize("cls", [type(e) for e in all_commands()], ids=lambda c: c.__name__)
def test_constructor_required_fields_match_decoder_checks(cls):
    """Every field without a default is checked on decode, so decode never hits TypeError."""
    no_default = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    checked = {attr for attr, *_rest in cls._REQ}
    assert no_default == checked


def test_sip_digest_item_and_ha1_hidden():
    item = cx.SipAuthDataItem.sip_digest(realm="ims.test", ha1="deadbeef" * 4)
    maa = maa_for(mar(), sip_auth_data_items=(item,))
    back = cx.decode_bytes(maa.encode())
    assert back.sip_auth_data_items[0].sip_digest_authenticate.digest_ha1 == "deadbeef" * 4
    assert back.sip_auth_data_items[0].sip_authentication_scheme == "SIP Digest"
    assert "deadbeef" not in repr(back)
    flags, _, vendor, _payload = _avp_at(maa.encode(), 635, 10415)
    assert (flags, vendor) == (0x80, 10415)  # V set, M must not (TS 29.229 / Wireshark)
    assert _avp_at(maa.encode(), 121, 0)[3] == b"deadbeef" * 4


def test_encoding_a_bad_value_is_a_local_error_naming_the_field():
    from imsaka.diameter.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="sip_number_auth_items"):
        mar(sip_number_auth_items=-1).encode()
    with pytest.raises(LocalProtocolError, match="user_name"):
        mar(user_name=12).encode()
    with pytest.raises(LocalProtocolError, match="sip_item_number"):
        mar(sip_auth_data_item=cx.SipAuthDataItem(sip_item_number=2**33)).encode()
    with pytest.raises(LocalProtocolError):
        cx.MAA.from_message(mar().to_message())


_text = st.text(min_size=1, max_size=40)
_u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=150, deadline=None)
@given(
    _text,
    _text,
    _text,
    _u32,
    st.binary(max_size=40),
    st.binary(max_size=16),
    st.lists(_text, max_size=3),
    st.integers(-(2**31), 2**31 - 1),
)
def test_property_round_trips(user, impu, server, n, authz, ck, impus, sat):
    req = mar(
        user_name=user,
        public_identity=impu,
        server_name=server,
        sip_number_auth_items=n,
        sip_auth_data_item=cx.SipAuthDataItem(sip_authorization=authz),
    )
    assert cx.decode_bytes(req.encode(1, 2)) == req
    ans = maa_for(req, sip_auth_data_items=(cx.SipAuthDataItem(confidentiality_key=ck),) * 2)
    assert cx.decode_bytes(ans.encode(1, 2)) == ans
    sar = cx.SAR(
        session_id=user,
        origin_host=server,
        origin_realm="r",
        destination_realm="r",
        server_name=server,
        server_assignment_type=sat,
        user_data_already_available=0,
        public_identities=tuple(impus),
    )
    assert cx.decode_bytes(sar.encode()) == sar
