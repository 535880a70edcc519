"""make_response adds its extra headers in one pass (`Message._extend`): the lines
land exactly where one `add` per header puts them, also for headers the response
already copied from the request (Via, To, Record-Route)."""

from __future__ import annotations

import pytest

from imsaka.sip import LocalProtocolError, Request, make_response

EXTRA = [
    [("Contact", "<sip:a@127.0.0.1>"), ("Expires", "600")],
    [("Via", "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx"), ("Contact", "<sip:a@h>")],
    [
        ("Record-Route", "<sip:rr2@h;lr>"),
        ("Path", "<sip:p@h;lr>"),
        ("Record-Route", "<sip:rr3@h;lr>"),
    ],
    [("To", "<sip:other@h>"), ("Path", "<sip:p1@h;lr>"), ("Path", "<sip:p2@h;lr>")],
    [("P-Associated-URI", "<sip:u1@h>, <sip:u2@h>"), ("Via", "SIP/2.0/TCP h2;branch=z9hG4bKy")],
    [("X-Number", 7), ("Date", " Wed, 25 Nov 2026 20:09:43 GMT ")],
]


def request() -> Request:
    return Request(
        "REGISTER",
        "sip:home1.net",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1"),
            ("Via", "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2"),
            ("Record-Route", "<sip:rr1@h;lr>"),
            ("From", "<sip:ue@home1.net>;tag=u1"),
            ("To", "<sip:ue@home1.net>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 REGISTER"),
        ],
    )


@pytest.mark.parametrize("extra", EXTRA)
@pytest.mark.parametrize("copy_rr", [False, True])
def test_extra_headers_land_where_add_puts_them(extra, copy_rr):
    req = request()
    one_pass = make_response(req, 200, to_tag="t9", headers=extra, copy_record_route=copy_rr)
    by_add = make_response(req, 200, to_tag="t9", copy_record_route=copy_rr)
    for name, value in extra:
        by_add.add(name, value)
    assert one_pass.header_items() == by_add.header_items()
    assert one_pass.to_bytes() == by_add.to_bytes()


def test_a_bad_extra_header_is_refused():
    with pytest.raises(LocalProtocolError):
        make_response(request(), 200, headers=[("Contact", "<sip:a@h>\r\nX: y")])
