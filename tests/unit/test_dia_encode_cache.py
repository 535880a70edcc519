"""imsaka.diameter.cx: encoded-AVP tables for repeated values, and the request decode
fast path (Vendor-Specific-Application-Id and Auth-Session-State right after Session-Id).

A table hit must give exactly the bytes the ordinary encoder gives; only plain str/int
values are looked up; secrets and per-request values never enter a table; a table stays
bounded.
"""

from __future__ import annotations

import dataclasses

import pytest
from tests.diameter.helpers import all_commands, maa_for, mar

from imsaka.diameter import codec, cx
from imsaka.diameter.errors import LocalProtocolError, RemoteProtocolError

_CLASSES = (
    cx.UAR, cx.UAA, cx.MAR, cx.MAA, cx.SAR, cx.SAA, cx.LIR, cx.LIA, cx.RTR, cx.RTA, cx.PPR, cx.PPA,
    cx.SipAuthDataItem, cx.SipDigestAuthenticate, cx.ServerCapabilities,
    cx.DeregistrationReason, cx.ChargingInformation, cx.AssociatedIdentities,
)  # fmt: skip


def _tables() -> list[dict]:
    out = [cx._EXPERIMENTAL_RESULTS]
    for cls in _CLASSES:
        out += [entry[-1] for entry in cls._ENC if entry[-1] is not None]
    return out


def _clear_tables() -> None:
    for table in _tables():
        table.clear()


def _reference_body(obj: object) -> bytes:
    """The AVPs as the dictionary-driven codec builds them, one Avp at a time."""

    def avps_of(value: object, spec: tuple) -> list[codec.Avp]:
        out = []
        for attr, code, vendor, kind, many, _required in spec:
            v = getattr(value, attr)
            if v is None:
                continue
            definition = codec.avp_def(code, vendor)
            for item in v if many else (v,):
                if isinstance(kind, type):
                    inner = b"".join(a.encode() for a in avps_of(item, kind._SPEC))
                    out.append(codec.Avp(code, vendor, definition.flags, inner))
                else:
                    out.append(definition(item))
        return out

    return b"".join(a.encode() for a in avps_of(obj, type(obj)._SPEC))


def _without_fixed_avps(body: bytes) -> bytes:
    skip = {
        codec.AVP_VENDOR_SPECIFIC_APPLICATION_ID,
        codec.AVP_AUTH_SESSION_STATE,
        codec.AVP_EXPERIMENTAL_RESULT,
        codec.AVP_FAILED_AVP,
    }
    return b"".join(a.encode() for a in codec.decode_avps(body) if a.code not in skip)


@pytest.mark.parametrize("msg", all_commands(), ids=lambda m: type(m).__name__)
def test_cold_and_warm_tables_give_the_same_bytes(msg):
    _clear_tables()
    cold = msg.encode(7, 9)
    warm = msg.encode(7, 9)
    assert warm == cold
    # and both are what the dictionary-driven encoder makes of the same fields
    assert _without_fixed_avps(cold[20:]) == _reference_body(msg)
    assert cx.decode_bytes(warm) == msg


def test_enum_bool_and_int_values_share_nothing_wrong():
    _clear_tables()
    base = dict(
        session_id="s;1",
        origin_host="a.ims.test",
        origin_realm="ims.test",
        destination_realm="ims.test",
        server_name="sip:s1",
        user_data_already_available=0,
    )
    as_int = cx.SAR(**base, server_assignment_type=1).encode()
    as_enum = cx.SAR(**base, server_assignment_type=cx.ServerAssignmentType.REGISTRATION).encode()
    assert as_int == as_enum
    # A value the encoder refuses is refused even when an equal int is in the table.
    with pytest.raises(LocalProtocolError):
        cx.SAR(**base, server_assignment_type=1.0).encode()  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        cx.SAR(**base, server_assignment_type=1 << 31).encode()  # beyond Integer32
    # bytes and str spell the same UTF8String; neither poisons the other.
    as_bytes = cx.SAR(**{**base, "server_name": b"sip:s1"}, server_assignment_type=1).encode()
    assert as_bytes == as_int


def test_unhashable_text_value_still_encodes():
    _clear_tables()
    base = dict(session_id="s;1", origin_realm="ims.test", destination_realm="ims.test")
    req = cx.LIR(**base, origin_host=bytearray(b"a.ims.test"), public_identity="sip:u@ims.test")  # type: ignore[arg-type]
    ref = cx.LIR(**base, origin_host="a.ims.test", public_identity="sip:u@ims.test")
    assert req.encode() == ref.encode()


def test_tables_are_bounded():
    _clear_tables()
    for i in range(3 * cx._CACHE_MAX):
        cx.LIR(
            session_id=f"s;{i}",
            origin_host=f"host{i}.ims.test",
            origin_realm="ims.test",
            destination_realm="ims.test",
            public_identity=f"sip:u{i}@ims.test",
        ).encode()
    assert all(len(t) <= cx._CACHE_MAX for t in _tables())
    assert max(len(t) for t in _tables()) > 0


def test_no_secret_or_session_id_is_kept():
    _clear_tables()
    item = cx.SipAuthDataItem.aka_vector(
        rand=b"R" * 16, autn=b"A" * 16, xres=b"XRESXRES", ck=b"C" * 16, ik=b"I" * 16
    )
    digest = cx.SipAuthDataItem.sip_digest(realm="ims.test", ha1="feedface" * 4, item_number=2)
    maa = maa_for(mar(), sip_auth_data_items=(item, digest), error_message="unique text 1")
    for _ in range(2):
        maa.encode()
    kept = b"".join(v for t in _tables() for v in t.values())
    for secret in (b"XRESXRES", b"C" * 16, b"I" * 16, b"feedface" * 4, b"R" * 16):
        assert secret not in kept
    assert maa.session_id.encode() not in kept
    assert b"unique text 1" not in kept
    # what is kept is what repeats: the realm, for one
    assert b"ims.test" in kept


def _avps(msg: cx.MultimediaAuthRequest) -> tuple[codec.Avp, ...]:
    return codec.decode_message(msg.encode(1, 2)).avps


def test_request_decodes_with_application_avps_anywhere():
    req = mar()
    avps = list(_avps(req))
    vsai, state = avps[1], avps[2]
    assert (vsai.code, state.code) == (260, 277)
    moved = [avps[0], *avps[3:], state, vsai]
    msg = codec.Message(cx.CMD_MULTIMEDIA_AUTH, 0xC0, cx.CX_APPLICATION_ID, 1, 2, tuple(moved))
    assert cx.decode(msg) == req


@pytest.mark.parametrize("drop", [260, 277])
def test_request_without_an_application_avp_is_5005(drop):
    avps = tuple(a for a in _avps(mar()) if a.code != drop)
    msg = codec.Message(cx.CMD_MULTIMEDIA_AUTH, 0xC0, cx.CX_APPLICATION_ID, 1, 2, avps)
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(msg)
    assert info.value.result_code == cx.DIAMETER_MISSING_AVP
    assert info.value.failed_avp.code == drop


def test_vendor_flagged_look_alike_is_not_the_application_avp():
    # Code 260 with a vendor is some other AVP: the request still lacks the real one.
    avps = list(_avps(mar()))
    avps[1] = codec.Avp(260, 10415, 0xC0, avps[1].data)
    msg = codec.Message(cx.CMD_MULTIMEDIA_AUTH, 0xC0, cx.CX_APPLICATION_ID, 1, 2, tuple(avps))
    with pytest.raises(RemoteProtocolError) as info:
        cx.decode(msg)
    assert info.value.result_code == cx.DIAMETER_MISSING_AVP


def test_experimental_result_table_matches_the_dictionary_encoder():
    _clear_tables()
    uaa = cx.UAA(
        session_id="s;1",
        origin_host="h",
        origin_realm="r",
        experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
    )
    first, second = uaa.encode(), uaa.encode()
    assert first == second
    expected = codec.EXPERIMENTAL_RESULT(
        [codec.VENDOR_ID(10415), codec.EXPERIMENTAL_RESULT_CODE(2001)]
    ).encode()
    assert expected in first
    with pytest.raises(Exception):  # noqa: B017 - the library's struct.error, as before
        dataclasses.replace(uaa, experimental_result_code=2001.5).encode()  # type: ignore[arg-type]
