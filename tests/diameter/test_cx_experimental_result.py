"""cx._answer_extras reads an Experimental-Result of two plain 4-octet AVPs at once: the
same fields, in the same order of precedence, as the walk of its AVPs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imsaka.diameter import codec, cx

CODES = st.sampled_from([cx.AVP_VENDOR_ID, cx.AVP_EXPERIMENTAL_RESULT_CODE, 1, 268])
AVP = st.tuples(CODES, st.sampled_from([0, 10415]), st.integers(0, 0xFFFFFFFF), st.integers(4, 5))


def walked(exp: bytes) -> dict:
    values: dict = {}
    for a in codec.decode_avps(exp):
        if a.code == cx.AVP_EXPERIMENTAL_RESULT_CODE and a.vendor == 0:
            values["experimental_result_code"] = a.u32
        elif a.code == cx.AVP_VENDOR_ID and a.vendor == 0:
            values["experimental_result_vendor"] = a.u32
    return values


@given(st.lists(AVP, min_size=1, max_size=3))
def test_experimental_result_read_as_the_walk_reads_it(avps):
    exp = b"".join(
        codec._encode_avp(code, vendor, 0x40, value.to_bytes(4, "big") + b"\0" * (size - 4))
        for code, vendor, value, size in avps
    )
    values: dict = {}
    try:
        expected = walked(exp)
    except codec.RemoteProtocolError as exc:
        try:
            cx._answer_extras(exp, None, values)
        except codec.RemoteProtocolError as got:
            assert type(got) is type(exc)
            return
        raise AssertionError("no error") from None
    cx._answer_extras(exp, None, values)
    assert values == expected


def test_the_usual_layout_and_a_swapped_one():
    plain = codec._encode_avp(cx.AVP_VENDOR_ID, 0, 0x40, (10415).to_bytes(4, "big"))
    code = codec._encode_avp(cx.AVP_EXPERIMENTAL_RESULT_CODE, 0, 0x40, (2001).to_bytes(4, "big"))
    for exp in (plain + code, code + plain):
        values: dict = {}
        cx._answer_extras(exp, None, values)
        assert values == {"experimental_result_code": 2001, "experimental_result_vendor": 10415}
