"""The S-CSCF's per-registration shortcuts give what the long way gave: XML escaping
without saxutils for plain text (RFC 3680 reginfo), Path hosts parsed once (TS 24.229
§5.4.2.1.1 watcher check), P-Associated-URI de-duplicated by a set, a re-registration
keeping the compressed User-Data and the alias index as they were."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imsaka.cscf.regevent import _attr, _text, authorised_watcher
from imsaka.cscf.registrar import (
    _PLAIN_NAME_ADDR,
    PLAIN_NAME_ADDR_RE,
    ContactBinding,
    Registration,
)
from imsaka.cscf.scscf import register_request_from_sip
from imsaka.cscf.scscf_core import (
    AskAssignment,
    ContactSpec,
    DigestParams,
    RegisterRequest,
    RegistrarCore,
    RegistrarPolicy,
    Reply,
)
from imsaka.cscf.userdata import PublicIdentity, associated_uris
from imsaka.sip import SipParseError, parse_message
from imsaka.sip.headers import Contact

_XMLISH = st.text(alphabet=st.sampled_from("ab:@;=+.&<>\"'\n\r\t ü"), max_size=12)


@given(_XMLISH)
def test_escaping_matches_saxutils(value):
    assert _text(value) == escape(value)
    assert _attr(value) == quoteattr(value)


def _reg(paths: tuple[tuple[str, ...], ...]) -> Registration:
    contacts = {
        f"sip:10.0.0.{i}:5060": ContactBinding(f"sip:10.0.0.{i}:5060", 1e12, path=path)
        for i, path in enumerate(paths)
    }
    return Registration("sip:u@home1.net", "u@home1.net", contacts, ("sip:u@home1.net",))


def test_watcher_named_in_any_contacts_path_is_authorised():
    reg = _reg((("<sip:term@pcscf1.home1.net:5060;lr>",), ("<sip:pcscf2.home1.net;lr>",)))
    assert authorised_watcher(reg, ["sip:pcscf2.home1.net:5070"])
    assert authorised_watcher(reg, ["sip:PCSCF1.home1.net"])
    assert authorised_watcher(reg, ["sip:U@home1.net"])
    assert not authorised_watcher(reg, ["sip:pcscf3.home1.net"])
    assert not authorised_watcher(reg, ["tel:+1555"])
    # a Path entry that does not parse is skipped, not fatal
    assert not authorised_watcher(_reg((("<garbage",),)), ["sip:garbage"])


def test_associated_uris_registered_first_then_unbarred_once():
    ids = [
        PublicIdentity("sip:u@home1.net"),
        PublicIdentity("<sip:U2@home1.net>"),
        PublicIdentity("sip:u2@HOME1.net"),
        PublicIdentity("tel:+1555", barred=True),
        PublicIdentity("tel:+1666"),
    ]
    assert associated_uris("sip:u@home1.net", ids) == (
        "sip:u@home1.net",
        "<sip:U2@home1.net>",
        "tel:+1666",
    )


_XML = (
    "<?xml version='1.0'?><IMSSubscription><PrivateID>u@home1.net</PrivateID>"
    "<ServiceProfile><PublicIdentity><Identity>sip:u@home1.net</Identity></PublicIdentity>"
    "<PublicIdentity><Identity>sip:alias@home1.net</Identity></PublicIdentity>"
    "</ServiceProfile></IMSSubscription>"
)


def _register(core: RegistrarCore, token: int, cseq: int, now: float) -> list:
    req = RegisterRequest(
        impu="sip:u@home1.net",
        call_id="c1",
        cseq=cseq,
        auth=DigestParams(username="u@home1.net", integrity_protected="yes"),
        contacts=(ContactSpec("sip:10.0.0.1:5060", 600),),
    )
    return core.handle_register(token, req, now)


def test_reregistration_keeps_user_data_and_index():
    core = RegistrarCore(RegistrarPolicy(realm="home1.net", service_route="<sip:orig@s;lr>"))
    reg = Registration(
        "sip:u@home1.net",
        "u@home1.net",
        {"sip:10.0.0.1:5060": ContactBinding("sip:10.0.0.1:5060", 700.0, call_id="c1")},
        ("sip:u@home1.net", "sip:alias@home1.net"),
        _XML,
        registered_at=100.0,
    )
    core.load(reg)
    kept = reg._user_data
    for token, user_data in ((1, None), (2, _XML)):  # without and with User-Data
        (ask,) = _register(core, token, token + 1, 200.0 + token)
        assert isinstance(ask, AskAssignment) and ask.user_data_available
        store, reply = core.assignment_done(token, user_data, 200.0 + token)
        assert isinstance(reply, Reply) and reply.status == 200
        assert dict(reply.headers)["P-Associated-URI"] == (
            "<sip:u@home1.net>, <sip:alias@home1.net>"
        )
        fresh = store.registration
        assert fresh is core.registrations["sip:u@home1.net"] and fresh is not reg
        assert fresh._user_data is kept  # compressed once, handed on as it is
        assert fresh.user_data == _XML and fresh.registered_at == 100.0
        assert core.lookup("sip:alias@home1.net", 300.0) is fresh
        assert core.pending_counts()["aliases"] == 1
        reg = fresh


def _sip_register(contact: str):
    return parse_message(
        (
            "REGISTER sip:scscf1.home1.net SIP/2.0\r\n"
            "Via: SIP/2.0/UDP icscf1.home1.net;branch=z9hG4bKx\r\n"
            "From: <sip:u@home1.net>;tag=1\r\nTo: <sip:u@home1.net>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


@given(
    st.one_of(
        st.from_regex(PLAIN_NAME_ADDR_RE, fullmatch=True),
        st.sampled_from(["<sip:a@1.2.3.4:5060>;expires=0", "<sip:h:99999>;expires=1"]),
    )
)
def test_plain_contact_read_as_the_parse_reads_it(contact):
    # one plain Contact is read off its text: the same ContactSpec as from its view
    try:
        c = Contact.parse(contact)
        expected = (ContactSpec(c.uri, c.expires, str(c.params.without("expires"))),)
    except SipParseError:
        with pytest.raises(SipParseError):
            register_request_from_sip(_sip_register(contact))
        return
    assert register_request_from_sip(_sip_register(contact)).contacts == expected


def _groups(m):
    return None if m is None else m.groups()


@given(
    st.one_of(
        st.from_regex(PLAIN_NAME_ADDR_RE, fullmatch=True),
        # and near misses: a character dropped, doubled or replaced anywhere
        st.tuples(
            st.from_regex(PLAIN_NAME_ADDR_RE, fullmatch=True),
            st.integers(0, 60),
            st.sampled_from(["", "-", ".", "@", ":", "0", "a", "_", ">", ";", "--", "9" * 6]),
            st.integers(0, 1),
        ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + t[3] :]),
        st.sampled_from(
            [
                "<sip:a-.b>",
                "<sip:a.-b>",
                "<sip:-a>",
                "<sip:a->",
                "<sip:a_>",
                "<sip:a@b@c>",
                "<sip:a:0>",
                "<sip:a:012>",
                "<sip:a:123456>",
                "<sips:a.b-c.d:65535>;expires=1",
                "<sip:a>;expires=12345678901",
                "<sip:a.>",
                "<sip:a..b>",
                "<SiPs:x_y@h>",
            ]
        ),
    )
)
def test_plain_name_addr_matcher_is_the_grammar(text):
    # the possessive matcher plain_name_addr uses reads what PLAIN_NAME_ADDR_RE reads
    assert _groups(_PLAIN_NAME_ADDR(text)) == _groups(PLAIN_NAME_ADDR_RE.fullmatch(text))
