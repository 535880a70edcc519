"""P-CSCF core (sans-I/O): the expiry a registrar's 200 OK grants (RFC 3261 §10.3 step
8) when its expires value is malformed. RFC 3261 §10.2.1.1 / §20.10: values above
2**32-1 MAY be read as 2**32-1, malformed ones SHOULD be read as 3600. The P-CSCF
forwards the 200 as it came (the UE reads it by the same rule) and keeps the
registration and its SAs for that long; it never raises (which cost the message as an
internal error) nor reads it as 0 (a de-registration: SAs gone under a registered UE)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf.pcscf import (
    MALFORMED_EXPIRES,
    Arrival,
    HoldSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
    Reply,
    UpgradeSecurityAssociations,
    _granted_by_parsing,
)
from imsaka.sip import Response, make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    ICSCF,
    SERVICE_ROUTE,
    UE_C,
    de_register_text,
    registered,
)

IMPI = "user1_private@home1.net"
MAX = 2**32 - 1


def _ok(contacts: list[str], expires: str | None = None) -> Response:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
        ("From", "<sip:a@home1.net>;tag=1"),
        ("To", "<sip:a@home1.net>;tag=2"),
        ("Call-ID", "c1"),
        ("CSeq", "1 REGISTER"),
    ]
    headers += [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", expires))
    return parse_message(Response(200, "OK", headers).to_bytes())


@pytest.mark.parametrize(
    ("contacts", "expires", "granted"),
    [
        (["<sip:a@h>;expires=abc"], None, MALFORMED_EXPIRES),
        (["<sip:a@h>;expires=-1"], None, MALFORMED_EXPIRES),
        (["<sip:a@h>;expires=0x10"], None, MALFORMED_EXPIRES),
        (["<sip:a@h>;expires"], None, MALFORMED_EXPIRES),
        (["<sip:a@h>;expires=4294967296"], None, MAX),
        (["<sip:a@h>;expires=99999999999999999999"], None, MAX),
        (["<sip:a@h>;expires=" + "9" * 5000], None, MAX),
        (["<sip:a@h>;expires=0004294967295"], None, MAX),
        # a malformed one among good ones counts as 3600 (the longest is granted)
        (["<sip:a@h>;expires=60", "<sip:b@h>;expires=x"], None, MALFORMED_EXPIRES),
        (["<sip:a@h>;expires=600000", "<sip:b@h>;expires=x"], None, 600000),
        # a malformed Expires header matters only to a Contact without expires
        (["<sip:a@h>;expires=300"], "x", 300),
        (["<sip:a@h>"], "x", MALFORMED_EXPIRES),
        (["<sip:a@h>"], "4294967296", MAX),
        (["<sip:a@h>;expires=abc"], "300", MALFORMED_EXPIRES),
        # Contacts that do not parse: the Expires header's value, else read as malformed
        (["<sip:a@h"], None, MALFORMED_EXPIRES),
        (["<sip:a@h", "<sip:b@h>;expires=60"], None, MALFORMED_EXPIRES),
        (["<sip:a@h"], "300", 300),
        (["<sip:a@h"], "0", 0),
        # well-formed values: as before
        (["<sip:a@h>;expires=0"], None, 0),
        (["<sip:a@h>;expires=4294967295"], None, MAX),
        (["<sip:a@h>"], "300", 300),
        ([], "300", 300),
    ],
)
def test_malformed_expires_is_read_as_rfc_3261_says(contacts, expires, granted):
    resp = _ok(contacts, expires)
    assert PcscfCore._granted_expires(resp) == granted
    assert _granted_by_parsing(resp) == granted


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sip:127.0.0.1:1357", "sip:u@h.net", "sip:u@[::1]:5", ""]),
            st.sampled_from(["0", "1", "600000", "4294967295", "4294967296", "-1", "x", ""]),
        ),
        max_size=3,
    ),
    st.sampled_from([None, "0", "300", "x", "4294967296"]),
    st.booleans(),
)
def test_read_off_the_text_is_what_parsing_gives(contacts, expires, lines):
    """The fast reading of `<sip:...>;expires=N` agrees with the parse for any Contact
    set, malformed values included (a whole response: tests/e2e/test_pcscf_rereg.py's
    property test builds one without From/To/Call-ID/CSeq, which never parses)."""
    values = [f"<{uri}>;expires={n}" if n else f"<{uri}>;expires" for uri, n in contacts]
    one_line = [", ".join(values)] if values else []
    resp = _ok(values if lines else one_line, expires)
    assert PcscfCore._granted_expires(resp) == _granted_by_parsing(resp)


def _re_register(
    p: PcscfCore,
    inst,
    contact: str | list[str],
    now: float = 8.0,
    *,
    service_route: str = SERVICE_ROUTE,
    branch: str = "z9hG4bKrereg",
) -> list:
    """A re-REGISTER over the UE's SAs (Via `branch`) answered 200 with `contact` (one
    Contact header each, given a list) and `service_route`: the core's actions."""
    text = (
        de_register_text(p).replace(";expires=0", ";expires=600000").replace("z9hG4bKdereg", branch)
    )
    (fwd,) = p.receive_request(parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), now)
    ok = make_response(
        parse_message(fwd.message.to_bytes()),
        200,
        to_tag="5ef4",
        headers=[
            ("Service-Route", service_route),
            *(("Contact", c) for c in ([contact] if isinstance(contact, str) else contact)),
        ],
    )
    return p.receive_response(parse_message(ok.to_bytes()), ICSCF, now + 0.1)


@pytest.mark.parametrize(
    ("value", "granted"),
    [("abc", MALFORMED_EXPIRES), ("-5", MALFORMED_EXPIRES), ("4294967296", MAX), (None, 3600)],
)
def test_a_200_with_a_bad_contact_expires_keeps_the_registration(value, granted):
    """The 200 OK reaches the UE over its SA as the registrar wrote it; the
    registration and its SAs stay for the granted time read by RFC 3261 §10.2.1.1."""
    p, inst, _ = registered()
    # value None: a Contact that does not parse at all (its expiry cannot be read)
    contact = "<sip:127.0.0.1:1357" if value is None else f"<sip:127.0.0.1:1357>;expires={value}"
    out = _re_register(p, inst, contact)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.spi == inst.sa.spi_uc and reply.destination == UE_C
    assert reply.message.status == 200 and reply.message.get("Contact") == contact
    assert not any(
        isinstance(a, ReleaseSecurityAssociations | HoldSecurityAssociations) for a in out
    )
    (up,) = [a for a in out if isinstance(a, UpgradeSecurityAssociations)]
    assert up.lifetime == granted + 30.0
    reg = p.registrations[IMPI]
    assert reg.expires_at == pytest.approx(8.1 + granted) and reg.sa is not None
    assert p.stats()["sas"] == 1
