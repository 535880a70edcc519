"""The Cx frames of a real registration (TS 29.229 §6.1) decode and re-encode to the very
same bytes: a speed-up of the codec must not change one octet on the wire.

data/registration_cx.json holds the UAR/UAA (twice), MAR/MAA and SAR/SAA of one
two-phase registration as `imsaka demo --seed 7` wrote them (the I-CSCF, S-CSCF and HSS
of imsaka; demo keys only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imsaka.diameter import codec, cx
from imsaka.diameter.errors import LocalProtocolError, RemoteProtocolError

FRAMES = {
    name: bytes.fromhex(value)
    for name, value in json.loads(
        (Path(__file__).parent / "data" / "registration_cx.json").read_text()
    ).items()
    if not name.startswith("_")
}
CLASSES = {
    "uar1": cx.UAR,
    "uar2": cx.UAR,
    "uaa1": cx.UAA,
    "uaa2": cx.UAA,
    "mar": cx.MAR,
    "maa": cx.MAA,
    "sar": cx.SAR,
    "saa": cx.SAA,
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_captured_frame_round_trips_byte_for_byte(name):
    frame = FRAMES[name]
    msg = codec.decode_message(frame)
    event = cx.decode(msg)
    assert type(event) is CLASSES[name]
    assert event.encode(msg.hop_by_hop, msg.end_to_end) == frame
    assert codec.encode_message(msg) == frame
    assert codec.encode_message(event.to_message(msg.hop_by_hop, msg.end_to_end)) == frame
    # python-diameter reads them too (it writes its own AVP order back, so no byte check).
    assert codec.to_library(frame).session_id == event.session_id


def test_captured_fields():
    uar = cx.decode_bytes(FRAMES["uar1"])
    assert (uar.user_name, uar.public_identity, uar.user_authorization_type) == (
        "user1_private@home1.net",
        "sip:user1_public1@home1.net",
        0,
    )
    uaa1, uaa2 = cx.decode_bytes(FRAMES["uaa1"]), cx.decode_bytes(FRAMES["uaa2"])
    assert uaa1.experimental_result_code == cx.DIAMETER_FIRST_REGISTRATION
    assert uaa1.server_capabilities.server_names == ("sip:scscf1.home1.net:59023",)
    assert uaa2.experimental_result_code == cx.DIAMETER_SUBSEQUENT_REGISTRATION
    assert uaa2.server_name == "sip:scscf1.home1.net:59023"
    maa = cx.decode_bytes(FRAMES["maa"])
    assert maa.result_code == cx.DIAMETER_SUCCESS and len(maa.sip_auth_data_items) == 3
    assert [i.sip_item_number for i in maa.sip_auth_data_items] == [1, 2, 3]
    assert all(len(i.sip_authenticate) == 32 for i in maa.sip_auth_data_items)
    sar = cx.decode_bytes(FRAMES["sar"])
    assert sar.public_identities == ("sip:user1_public1@home1.net",)
    assert sar.server_assignment_type == cx.ServerAssignmentType.REGISTRATION
    saa = cx.decode_bytes(FRAMES["saa"])
    assert saa.user_data.startswith(b"<?xml") and b"user1_public3" in saa.user_data


def _outcome(frame: bytes, decode) -> object:
    try:
        msg = decode(frame)
        return msg, cx.decode(msg)
    except RemoteProtocolError as exc:
        return ("error", exc.result_code, exc.reason, exc.failed_avp)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_fast_decode_paths_agree_with_the_reference_on_damaged_frames(name, monkeypatch):
    """Every octet of the frame, changed: the fast paths (cx.decode_frame, the one-walk
    group decoding) give what the reference path gives: the same Message and event, or
    the same Result-Code, reason and Failed-AVP."""
    frame = FRAMES[name]
    damaged = [frame]
    for i in range(len(frame)):
        for value in (0x00, 0xFF, frame[i] ^ 0x04):
            damaged.append(frame[:i] + bytes([value]) + frame[i + 1 :])
    fast = [_outcome(d, cx.decode_frame) for d in damaged]
    assert type(fast[0][0]) is codec.FramedMessage
    monkeypatch.setattr(cx, "_walk", lambda *args: False)
    reference = [_outcome(d, codec.decode_message) for d in damaged]
    assert type(reference[0][0]) is codec.Message
    assert fast == reference
    assert any(o[0] == "error" for o in reference)  # some damage is refused
    assert sum(o[0] == "error" for o in reference) < len(reference) / 2  # much is not


@pytest.mark.parametrize(
    "field, value",
    [
        ("sip_authentication_scheme", "Digest-AKAv1-MD5"),
        ("sip_authentication_scheme", "Dïgest-ÄKA"),  # not ASCII: the ordinary path
        ("sip_authentication_scheme", b"Digest-AKAv2-MD5"),
        ("sip_authentication_scheme", bytearray(b"Digest")),
        ("sip_authentication_scheme", ""),
        ("sip_authenticate", b"\x00" * 32),
        ("sip_item_number", 0),
        ("sip_item_number", 0xFFFFFFFF),
        ("sip_item_number", True),
    ],
)
def test_generated_encoder_gives_the_dictionary_bytes(field, value):
    item = cx.SipAuthDataItem(**{field: value})
    spec = {s[0]: s for s in cx.SipAuthDataItem._SPEC}[field]
    expected = codec.avp_def(spec[1], spec[2])(value).encode()
    assert cx._encode_group(cx.SipAuthDataItem, item) == expected


@pytest.mark.parametrize(
    "field, value",
    [
        ("sip_authentication_scheme", "\udc80"),  # a lone surrogate: no UTF-8 for it
        ("sip_authentication_scheme", 5),
        ("sip_item_number", -1),
        ("sip_item_number", 1 << 32),
        ("sip_item_number", 1.0),
        ("sip_item_number", "1"),
    ],
)
def test_generated_encoder_refuses_what_the_reference_refuses(field, value):
    item = cx.SipAuthDataItem(**{field: value})
    with pytest.raises(LocalProtocolError, match=f"SipAuthDataItem.{field}"):
        cx._encode_group(cx.SipAuthDataItem, item)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_layout_decoder_reads_our_frames_and_leaves_others_to_the_walk(name):
    """The generated straight-run decoder (cx._make_decoder) reads every captured frame
    to the event the reference path gives; with the AVPs in another order it declines
    (None) and decode_frame still gives that event through the walk."""
    frame = FRAMES[name]
    reference = cx.decode(codec.decode_message(frame))
    cls = type(reference)
    assert cls._LAYOUT(frame) == reference
    avps = codec.decode_avps(frame, codec.HEADER_LENGTH)
    moved = frame[:20] + b"".join(a.encode() for a in (*avps[1:], avps[0]))
    assert cls._LAYOUT(moved) is None
    assert cx.decode(cx.decode_frame(moved)) == reference


def test_layout_decoder_reads_every_command_we_encode():
    from tests.diameter.helpers import all_commands

    for event in all_commands():
        assert type(event)._LAYOUT(event.encode(1, 2)) == event, type(event).__name__


def test_layout_decoder_reads_the_groups_we_encode():
    items = (
        cx.SipAuthDataItem.aka_vector(
            rand=b"r" * 16, autn=b"a" * 16, xres=b"x" * 8, ck=b"c" * 16, ik=b"i" * 16
        ),
        cx.SipAuthDataItem.sip_digest(realm="home1.net", ha1="0" * 32, item_number=2),
        cx.ServerCapabilities(mandatory_capabilities=(1, 2), server_names=("sip:s",)),
        cx.DeregistrationReason(reason_code=0, reason_info="bye"),
    )
    for item in items:
        data = cx._encode_group(type(item), item)
        assert type(item)._LAYOUT(data) == item, item
    # Out of order: declined, and the walk still reads it.
    reason = cx.DeregistrationReason(reason_code=1, reason_info="x")
    avps = codec.decode_avps(cx._encode_group(cx.DeregistrationReason, reason))
    swapped = avps[1].encode() + avps[0].encode()
    assert cx.DeregistrationReason._LAYOUT(swapped) is None
    assert cx._decode_group(cx.DeregistrationReason, codec.Avp(615, 10415, 0xC0, swapped)) == reason
