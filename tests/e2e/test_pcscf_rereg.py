"""P-CSCF core (sans-I/O): re-registration over the established SAs (TS 24.229 §5.2.2,
TS 33.203 §7.4), the reg-event subscription made once per IMPI (TS 24.229 §5.2.3), and
the integrity-protected rewrite of Authorization (TS 24.229 §5.2.2.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf.pcscf import (
    Arrival,
    Forward,
    InstallSecurityAssociations,
    PcscfCore,
    Reply,
    _granted_by_parsing,
    _names_uri,
    _with_integrity_protected,
    _without_keys,
)
from imsaka.sip import NameAddr, Request, Response, SipParseError, make_response, parse_message
from imsaka.sip.headers import DigestCredentials

from .test_pcscf_core import ICSCF, PACKET1, UE, core

KEYS = 'ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"'
CHALLENGE = ("WWW-Authenticate", f'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5, {KEYS}')
OK_HEADERS = [
    ("Service-Route", "<sip:orig@scscf1.home1.net:5080;lr>"),
    ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
    ("P-Associated-URI", "<sip:user1_public1@home1.net>"),
]


def _second(n: int, verify: str, client: str | None = None) -> str:
    """REGISTER number `n` of the UE (CSeq n, its own branch) with Security-Verify and,
    when given, another Security-Client."""
    text = (
        PACKET1.replace('nonce=""', 'nonce="AAAA", algorithm=AKAv1-MD5')
        .replace('response=""', 'response="6629fae49393a05397450978507c4ef1"')
        .replace("CSeq: 1", f"CSeq: {n}")
        .replace("z9hG4bKnashds7", f"z9hG4bKreg{n}")
        .replace(
            "\r\nRequire: sec-agree\r\n",
            f"\r\nSecurity-Verify: {verify}\r\nRequire: sec-agree\r\n",
            1,
        )
    )
    if client is not None:
        text = "\r\n".join(
            f"Security-Client: {client}" if ln.startswith("Security-Client") else ln
            for ln in text.split("\r\n")
        )
    return text


def _answer(p, fwd: Forward, status: int, headers, now: float):
    resp = make_response(
        parse_message(fwd.message.to_bytes()), status, to_tag="5ef4", headers=headers
    )
    return p.receive_response(parse_message(resp.to_bytes()), ICSCF, now)


def _registered(p, run: int = 0):
    """Packets 1-13 through the core; returns (SA set, Security-Server text, port-c arrival)."""
    first = PACKET1.replace("z9hG4bKnashds7", f"z9hG4bKfirst{run}")
    (fwd,) = p.receive_request(parse_message(first.encode()), Arrival(UE), 0.0)
    acts = _answer(p, fwd, 401, [CHALLENGE], 1.0)
    sa = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    server = next(a for a in acts if isinstance(a, Reply)).message.get("Security-Server")
    arrival = Arrival(("127.0.0.1", 2468), spi=sa.spi_ps)
    (fwd,) = p.receive_request(parse_message(_second(2 + run, server).encode()), arrival, 2.0)
    _answer(p, fwd, 200, OK_HEADERS, 3.0)
    return sa, server, arrival


def test_challenged_reregistration_takes_the_new_offer():
    """A re-REGISTER's Security-Client is read when its 401 comes: the new temporary set
    carries the SPIs and ports of that offer, not those of the first registration."""
    p = core()
    _sa, server, arrival = _registered(p)
    new_offer = "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=777; spi-s=888; port-c=3333; port-s=4444"
    (fwd,) = p.receive_request(parse_message(_second(3, server, new_offer).encode()), arrival, 10.0)
    assert fwd.message.get("Security-Client") is None
    acts = _answer(p, fwd, 401, [CHALLENGE], 11.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    assert (inst.sa.spi_uc, inst.sa.spi_us, inst.sa.port_uc, inst.sa.port_us) == (
        777,
        888,
        3333,
        4444,
    )
    reply = next(a for a in acts if isinstance(a, Reply))
    assert reply.spi is not None and reply.message.get("Security-Server")


def test_challenged_reregistration_with_an_unreadable_offer_gets_a_plain_401():
    p = core()
    _sa, server, arrival = _registered(p)
    (fwd,) = p.receive_request(
        parse_message(_second(3, server, "ipsec-3gpp; spi-c=x").encode()), arrival, 10.0
    )
    acts = _answer(p, fwd, 401, [CHALLENGE], 11.0)
    assert not any(isinstance(a, InstallSecurityAssociations) for a in acts)
    (reply,) = acts
    assert reply.message.status == 401 and reply.message.get("Security-Server") is None
    assert reply.message.www_authenticate.ck is None


def test_one_reg_event_subscription_per_impi():
    p = core()
    _sa, server, arrival = _registered(p)
    assert len(p.subscriptions) == 1
    (call_id,) = p.subscriptions
    # a re-registration: no second SUBSCRIBE
    (fwd,) = p.receive_request(parse_message(_second(3, server).encode()), arrival, 10.0)
    acts = _answer(p, fwd, 200, OK_HEADERS, 11.0)
    assert not any(isinstance(a, Forward) for a in acts)
    assert len(p.subscriptions) == 1
    # the registration ends (NOTIFY terminated); the next registration subscribes again
    notify = Request(
        "NOTIFY",
        "sip:127.0.0.1:5060",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKn1"),
            ("From", "<sip:user1_public1@home1.net>;tag=n"),
            ("To", "<sip:pcscf1.visited1.net:5060>;tag=p"),
            ("Call-ID", call_id),
            ("CSeq", "1 NOTIFY"),
            ("Event", "reg"),
            # no reginfo: a subscription ended with a reason other than its own
            # lapse (`timeout`) is read as the registration's end
            ("Subscription-State", "terminated;reason=deactivated"),
        ],
    )
    p.receive_request(notify, Arrival(ICSCF), 12.0)
    assert p.subscriptions == {} and p.stats()["registrations"] == 0
    _registered(p, run=10)
    assert len(p.subscriptions) == 1 and call_id not in p.subscriptions
    assert [s.impi for s in p.subscriptions.values()] == ["user1_private@home1.net"]


_TOKEN = st.text("abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_NAME = st.sampled_from(["username", "nonce", "uri", "response", "Integrity-Protected"]) | _TOKEN
_PLAIN = st.text("abc 019=/,;:@-\t", max_size=12)
_ESCAPED = st.text('abc 0\\"', max_size=6).map(
    lambda v: v.replace("\\", "\\\\").replace('"', '\\"')
)
# mostly the rendered form, sometimes not
_SPACE = st.sampled_from(["", "", "", "", " ", "\t"])


@st.composite
def _credentials(draw) -> str:
    params = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            value = '"' + draw(_PLAIN | _ESCAPED) + '"'
        else:
            value = draw(st.text("abc019-.=/", min_size=1, max_size=8))
        params.append(f"{draw(_NAME)}{draw(_SPACE)}={draw(_SPACE)}{value}")
    sep = draw(st.sampled_from([", ", ", ", ", ", ",", " , ", ",  "]))
    scheme = draw(st.sampled_from(["Digest", "digest", "AKAv1"]))
    return scheme + draw(st.sampled_from([" ", " ", "  "])) + sep.join(params)


def _outcome(test, msg):
    """`test` of `msg` as it arrives (its bytes parsed), or the error it raises."""
    try:
        return test(parse_message(msg.to_bytes()))
    except SipParseError:
        return "SipParseError"


def _request(authorization: str) -> Request:
    return Request(
        "REGISTER",
        "sip:registrar.home1.net",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
            ("From", "<sip:a@home1.net>;tag=1"),
            ("To", "<sip:a@home1.net>"),
            ("Call-ID", "c"),
            ("CSeq", "1 REGISTER"),
            ("Authorization", authorization),
        ],
    )


def test_integrity_protected_appended_or_rendered():
    cases = {
        'Digest a=b, c="d e"': 'Digest a=b, c="d e", integrity-protected="no"',
        "Digest a=b,c=d": 'Digest a=b, c=d, integrity-protected="no"',
        "Digest  a = b": 'Digest a=b, integrity-protected="no"',
        'Digest a="x\\"y"': 'Digest a="x\\"y", integrity-protected="no"',
        'Digest a=b, Integrity-Protected="yes"': 'Digest a=b, Integrity-Protected="no"',
        'Digest a="\\y"': 'Digest a="y", integrity-protected="no"',  # a needless escape
    }
    for text, expected in cases.items():
        req = _request(text)
        assert _with_integrity_protected(req, req.authorization, False) == expected, text


@settings(max_examples=300)
@given(_credentials(), st.booleans())
def test_integrity_protected_text_is_what_rendering_gives(text, protected):
    """The rewrite on the UE's text equals re-rendering the parsed credentials with the
    parameter set, for any spelling (the text is used as it is only when it is already
    in the rendered form)."""
    req = _request(text)
    try:
        auth = req.authorization
    except SipParseError:
        return
    value = "yes" if protected else "no"
    expected = str(auth.with_param("integrity-protected", value, quoted=True))
    assert _with_integrity_protected(req, auth, protected) == expected
    assert DigestCredentials.parse(expected).integrity_protected == value


@given(
    st.sampled_from(["sip:user1_public1@home1.net", "sip:a@b", "", " sip:x@y", "sip:a>b@c"]),
    st.sampled_from(["", ";tag=5", ">", " ;tag=x", ";tag"]),
    st.sampled_from(["<{}>", "<{} >", '"D" <{}>', "{}", "< {}>"]),
    st.sampled_from(["sip:user1_public1@home1.net", "sip:a@b", "", "sip:x@y"]),
)
def test_names_uri_agrees_with_parsing(uri, tail, form, held):
    """Where the shortcut says the To names the held IMPU, parsing gives that IMPU (or
    fails, when the core keeps the held IMPU as well)."""
    value = form.format(uri) + tail
    if _names_uri(value, held):
        try:
            parsed = NameAddr.parse(value).uri
        except SipParseError:
            return
        assert parsed == held


@pytest.mark.parametrize(
    "rest",
    ["", ";received=127.0.0.1", ";received=::1", ";rport=5060;received=1.2.3.4", "x", ";x", " "],
)
@pytest.mark.parametrize(
    "below", ["SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKa", "SIP/2.0/UDP ;;bad", None]
)
def test_top_branch_as_parsing_gives(rest, below):
    """The branch and Via count read off our own Via's text equal those of the parsed
    Vias, and a Via that does not parse fails the same way."""
    p = core()
    top = p._own_via + "z9hG4bK0123456789abcdef0123" + rest
    vias = [("Via", top)] + ([("Via", below)] if below else [])
    resp = Response(
        200,
        headers=[
            *vias,
            ("From", "<sip:a@home1.net>;tag=1"),
            ("To", "<sip:a@home1.net>;tag=2"),
            ("Call-ID", "c"),
            ("CSeq", "1 REGISTER"),
        ],
    )

    def outcome(read):
        try:
            return read(parse_message(resp.to_bytes()))
        except SipParseError:
            return "SipParseError"

    assert outcome(p._top_branch) == outcome(lambda m: (m.via[0].branch, len(m.via)))


def _expires_zero_by_parsing(request) -> bool:
    """The de-registration rule on the parsed contacts (RFC 3261 §10.2.2): every
    contact expires 0 (its own expires, else the Expires header), or one is `*`."""
    try:
        contacts, default = request.contacts, request.expires
    except SipParseError:
        return False
    for c in contacts:
        if c.star:
            return True
        if (default if c.expires is None else c.expires) != 0:
            return False
    return bool(contacts)


_CONTACTS = [
    "<sip:127.0.0.1:1357>;expires=600000",
    "<sip:127.0.0.1:1357>;expires=0",
    "<sip:127.0.0.1:1357>;expires=000",
    "<sip:127.0.0.1:1357>",
    "*",
    "<sip:bad uri>;expires=5",
    "<sip:a@b;expires=0>;expires=7",
    "<sip:a@b>;expires=99999999999",
    "<sip:a@b>;Expires=0",
    '"A" <sip:a@b>;expires=3',
]


@given(
    st.lists(st.sampled_from(_CONTACTS), max_size=3),
    st.sampled_from([None, "0", "600", "x"]),
)
def test_expires_zero_as_parsing_gives(contacts, expires):
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
        ("From", "<sip:a@home1.net>;tag=1"),
        ("To", "<sip:a@home1.net>"),
        ("Call-ID", "c"),
        ("CSeq", "1 REGISTER"),
        *[("Contact", c) for c in contacts],
    ]
    if expires is not None:
        headers.append(("Expires", expires))
    request = Request("REGISTER", "sip:registrar.home1.net", headers)
    assert _outcome(PcscfCore._expires_zero, request) == _outcome(_expires_zero_by_parsing, request)


def test_retransmission_in_flight_is_absorbed_and_timer_e_sends_the_first_copy():
    """RFC 3261 §17.2.2 / §17.1.2.2: a retransmitted REGISTER whose answer is not in yet
    is absorbed; the P-CSCF's own client transaction sends the very request forwarded
    first (same branch, same icid) at T1, 2·T1 and 4·T1 after it, and its context keeps
    the first copy's lifetime (Timer F)."""
    p = core()
    (first,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    assert p.next_deadline() == 0.5  # Timer E
    assert p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.4) == []
    assert p.counters["retransmission-absorbed"] == 1 and p.open_transactions() == 1
    sent = []
    for at, next_at in ((0.5, 1.5), (1.5, 3.5), (3.5, 7.5)):
        assert p.next_deadline() == at
        (again,) = p.handle_timer(at)
        assert p.next_deadline() == next_at
        sent.append(again)
    assert all(a is first for a in sent) and p.counters["retransmitted"] == 3
    # a late wake-up sends one copy, and the next one counts from it (T2 from here on)
    (late,) = p.handle_timer(20.0)
    assert late is first and p.next_deadline() == 24.0
    # Timer F ends it (the end of life on the 2·T1 grid; no copy after it)
    assert [a for a in p.handle_timer(32.0) if isinstance(a, Forward)] == []
    assert p.open_transactions() == 0 and p.next_deadline() is None
    # answered: no Timer E, and a further copy gets the cached 401
    p = core()
    (first,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    acts = _answer(p, first, 401, [CHALLENGE], 0.2)
    assert any(isinstance(a, InstallSecurityAssociations) for a in acts)
    assert p.open_transactions() == 0
    assert not [a for a in p.handle_timer(0.5) if isinstance(a, Forward)]
    (reply,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 3.0)
    assert isinstance(reply, Reply) and reply.message.status == 401


@settings(max_examples=400)
@given(_credentials(), st.sampled_from(["", ", ck=abc", ', ik="0a", CK="1b"', ",ck=x,ik=y", ","]))
def test_challenge_without_keys_is_what_the_parsed_view_gives(text, keys):
    """The 401's challenge cut as text (TS 24.229 §5.2.2.1: ck and ik never reach the
    UE) is `str(DigestCredentials.parse(text).without("ck", "ik"))`, and the keys read
    are `.ck` / `.ik`, for every text it accepts; the others go the parser's way."""
    text += keys
    fast = _without_keys(text)
    if fast is None:
        return
    ch = DigestCredentials.parse(text)
    assert fast == (str(ch.without("ck", "ik")), ch.ck, ch.ik)


def test_challenge_without_keys_as_the_s_cscf_writes_it():
    stripped, ck, ik = _without_keys(CHALLENGE[1]) or ("", None, None)
    assert stripped == 'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5'
    assert ck == "ffeeddccbbaa11223344556677889900" and ik == "00112233445566778899aabbccddeeff"
    # spellings left to the parser: escapes, a trailing comma, blanks around "="
    for text in ('Digest a="x\\"y", ck=1', "Digest a=b, ck=1,", "Digest a = b, ck=1"):
        assert _without_keys(text) is None, text


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "sip:127.0.0.1:1357",
                    "sip:u@h.net",
                    "sips:u@h:65535",
                    "sip:u@h:0",
                    "sip:u@h:70000",
                    "sip:u@[::1]:5",
                    "sip:u@h;transport=udp",
                    "",
                ]
            ),
            st.sampled_from(["0", "1", "600000", "999999999", "-1", "x"]),
        ),
        max_size=3,
    ),
    st.sampled_from([None, "0", "300", "x"]),
    st.booleans(),
)
def test_granted_expiry_read_off_the_contacts_is_what_parsing_gives(contacts, expires, lines):
    """The 200 OK's granted expiry (RFC 3261 §10.3 step 8) read off Contacts
    `<sip:...>;expires=N` is what the parsed Contacts give, for any Contact set."""
    values = [f"<{uri}>;expires={n}" for uri, n in contacts]
    # a complete 200 (without From/To/Call-ID/CSeq both sides only fail to parse)
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
        ("From", "<sip:u@home1.net>;tag=1"),
        ("To", "<sip:u@home1.net>;tag=2"),
        ("Call-ID", "c1"),
        ("CSeq", "2 REGISTER"),
    ]
    if lines:
        headers += [("Contact", v) for v in values]
    elif values:
        headers.append(("Contact", ", ".join(values)))
    if expires is not None:
        headers.append(("Expires", expires))
    resp = Response(200, "OK", headers)
    assert _outcome(PcscfCore._granted_expires, resp) == _outcome(_granted_by_parsing, resp)
