"""The S-CSCF's text fast paths give what the parses give, for the forms they accept, and
fall back to the parses (same values, same SipParseError) for the others."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf import scscf
from imsaka.cscf.registrar import plain_tagged
from imsaka.cscf.scscf import register_request_from_sip
from imsaka.sip import SipParseError, parse_message


def _mostly(plain, odd):
    """`plain` nine times in ten, `odd` else."""
    return st.integers(0, 9).flatmap(lambda n: odd if n == 9 else plain)


_NAMES = [
    "username",
    "realm",
    "nonce",
    "uri",
    "response",
    "algorithm",
    "qop",
    "nc",
    "cnonce",
    "auts",
    "integrity-protected",
    "Username",
    "NONCE",
    "x-extra",
]
_token = st.text(st.sampled_from(list("aZ09-.!%*_+`'~/=")), min_size=1, max_size=10)
_quoted_plain = st.text(st.sampled_from(list("aZ09 ,;:@=/-_.'~\t")), max_size=12)
_quoted_odd = st.text(st.sampled_from(list('a\\" ,\x85')), max_size=6)


@st.composite
def _param(draw) -> str:
    name = draw(_mostly(st.sampled_from(_NAMES), st.sampled_from(["", "a b", "n@me", "é"])))
    eq = draw(_mostly(st.sampled_from(["=", "=", " = ", "\t="]), st.sampled_from(["", "=="])))
    value = draw(
        _mostly(
            st.one_of(_token, _quoted_plain.map(lambda v: f'"{v}"')),
            st.one_of(
                _quoted_odd.map(lambda v: f'"{v}"'), st.sampled_from(['"', "", "a b", '"a"b'])
            ),
        )
    )
    return f"{name}{eq}{value}"


@st.composite
def _authorization(draw) -> str:
    scheme = draw(
        _mostly(
            st.sampled_from(["Digest ", "digest ", "DIGEST  ", "Digest\t"]),
            st.sampled_from(["Basic ", "Digest", "Dig est ", "", "Digest ,"]),
        )
    )
    params = draw(st.lists(_param(), min_size=0, max_size=6))
    seps = [
        draw(_mostly(st.sampled_from([", ", ",", " , ", ",\t"]), st.sampled_from([",,", " ", ""])))
        for _ in params
    ]
    text = scheme + "".join(p + s for p, s in zip(params, seps, strict=True))
    if params:
        text = text[: -len(seps[-1])] if seps[-1] else text
    return text + draw(_mostly(st.just(""), st.sampled_from([",", " ,", " x"])))


def _request(method: str, uri: str, *lines: str) -> bytes:
    head = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
        "Call-ID: c1",
        *lines,
        "Content-Length: 0",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def _register(authorizations: list[str]) -> bytes:
    return _request(
        "REGISTER",
        "sip:scscf1.home1.net",
        "From: <sip:u@home1.net>;tag=1",
        "To: <sip:u@home1.net>",
        "CSeq: 2 REGISTER",
        "Contact: <sip:127.0.0.1:5070>;expires=600",
        *(f"Authorization: {a}" for a in authorizations),
    )


def _read(data: bytes, fast: bool):
    real = scscf._plain_digest
    if not fast:
        scscf._plain_digest = lambda request: None
    try:
        return register_request_from_sip(parse_message(data))
    except SipParseError as exc:
        return ("error", exc.reason)
    finally:
        scscf._plain_digest = real


@settings(max_examples=300, deadline=None)
@given(st.lists(_authorization(), min_size=0, max_size=2))
def test_plain_authorization_read_as_the_parse_reads_it(authorizations):
    try:
        data = _register(authorizations)
        parse_message(data)
    except SipParseError:
        return  # not a message at all: nothing reaches the S-CSCF
    assert _read(data, fast=True) == _read(data, fast=False)


def test_a_ues_authorization_takes_the_fast_path():
    value = (
        'Digest username="u_private@home1.net", realm="home1.net", nonce="bm9uY2U=", '
        'algorithm=AKAv1-MD5, uri="sip:home1.net", response="0123abcd", '
        'integrity-protected="yes"'
    )
    request = parse_message(_register([value]))
    assert scscf._UE_CREDENTIALS(value) is not None  # the UE's order: its own match
    params = scscf._plain_digest(request)
    assert params is not None and params.integrity_protected == "yes"
    assert params.algorithm == "AKAv1-MD5" and params.nonce == "bm9uY2U="
    assert _read(_register([value]), True) == _read(_register([value]), False)


_ue_quoted = _mostly(_quoted_plain, _quoted_odd)


@st.composite
def _ue_authorization(draw) -> str:
    """The UE's order (imsaka.ue: username, realm, nonce, [algorithm,] uri, response,
    [qop, nc, cnonce,] and the P-CSCF's integrity-protected), now and then bent."""
    q = lambda: f'"{draw(_ue_quoted)}"'  # noqa: E731
    parts = [f"username={q()}", f"realm={q()}", f"nonce={q()}"]
    if draw(st.booleans()):
        algorithm = draw(_mostly(_token, st.sampled_from(["", "a b", '"a"'])))
        parts.append(f"algorithm={algorithm}")
    parts += [f"uri={q()}", f"response={q()}"]
    if draw(st.booleans()):
        parts += [f"qop={draw(_token)}", f"nc={draw(_token)}", f"cnonce={q()}"]
    if draw(st.booleans()):
        parts.append(f"integrity-protected={q()}")
    if draw(_mostly(st.just(False), st.just(True))):
        i = draw(st.integers(0, len(parts) - 1))
        parts[i] = draw(
            st.sampled_from([parts[i].upper(), parts[i].replace("=", " = "), "x=y", "auts=a"])
        )
    sep = draw(_mostly(st.just(", "), st.sampled_from([",", " , ", ",\t", ",,"])))
    scheme = draw(_mostly(st.just("Digest "), st.sampled_from(["digest ", "Digest  "])))
    return scheme + sep.join(parts)


@settings(max_examples=400, deadline=None)
@given(_ue_authorization())
def test_a_ues_order_read_as_the_parse_reads_it(value):
    try:
        data = _register([value])
        parse_message(data)
    except SipParseError:
        return
    assert _read(data, fast=True) == _read(data, fast=False)


def test_ue_order_generator_reaches_both_matches():
    seen = set()

    @settings(max_examples=300)
    @given(_ue_authorization())
    def probe(value):
        try:
            request = parse_message(_register([value]))
        except SipParseError:
            return
        seen.add(
            (scscf._UE_CREDENTIALS(value) is not None, scscf._plain_digest(request) is not None)
        )

    probe()
    assert seen >= {(True, True), (False, True), (False, False)}


def test_fast_path_generator_reaches_both_paths():
    """The property test above is not vacuous: its documents take either path."""
    seen = set()

    @settings(max_examples=300)
    @given(_authorization())
    def probe(value):
        try:
            request = parse_message(_register([value]))
        except SipParseError:
            return
        seen.add(scscf._plain_digest(request) is not None)

    probe()
    assert seen == {True, False}


_uris = st.one_of(
    st.from_regex(
        r"(sip|sips|SIP):([a-z0-9_.]{1,8}@)?[a-z0-9]{1,6}(\.[a-z0-9-]{1,5}){0,2}(:[0-9]{1,6})?",
        fullmatch=True,
    ),
    st.sampled_from(["sip:[::1]:5060", "tel:+123", "sip:a;lr", "sip:a b", "sip:-x", "sip:x-"]),
)
_tags = st.one_of(
    st.text(st.sampled_from(list("aZ09-.!%*_+`'~")), min_size=1, max_size=8),
    st.sampled_from(["", "a;b", '"q"', "a b", "é"]),
)


@st.composite
def _name_addr(draw) -> str:
    uri = draw(_uris)
    text = draw(_mostly(st.just(f"<{uri}>"), st.sampled_from([uri, f'"Bob" <{uri}>', f"< {uri}>"])))
    for _ in range(draw(_mostly(st.just(1), st.integers(0, 2)))):
        text += draw(
            _mostly(
                _tags.map(lambda t: f";tag={t}"),
                st.sampled_from([";expires=60", ";TAG=a", ";x=y", ";tag", " ;tag=a"]),
            )
        )
    return text


@settings(max_examples=500)
@given(_name_addr())
def test_plain_from_read_as_the_parse_reads_it(text):
    from imsaka.sip.headers import NameAddr

    got = plain_tagged(text)
    if got is None:
        return
    parsed = NameAddr.parse(text)
    assert got == (parsed.uri, parsed.tag)


def test_plain_from_generator_reaches_both_paths():
    seen = set()

    @settings(max_examples=300)
    @given(_name_addr())
    def probe(text):
        seen.add(plain_tagged(text) is not None)

    probe()
    assert seen == {True, False}
    assert plain_tagged("<sip:pcscf1.home1.net:5060>;tag=s1") == (
        "sip:pcscf1.home1.net:5060",
        "s1",
    )


def _subscribe(asserted: list[str]) -> bytes:
    return _request(
        "SUBSCRIBE",
        "sip:u@home1.net",
        "From: <sip:pcscf1.home1.net:5060>;tag=1",
        "To: <sip:u@home1.net>",
        "CSeq: 1 SUBSCRIBE",
        "Event: reg",
        *(f"P-Asserted-Identity: {a}" for a in asserted),
    )


@settings(max_examples=300)
@given(st.lists(st.one_of(_name_addr(), st.sampled_from(["<sip:a>, <sip:b>", "x<"])), max_size=2))
def test_asserted_identities_read_as_the_parse_reads_them(asserted):
    try:
        request = parse_message(_subscribe(asserted))
    except SipParseError:
        return
    try:
        expected = [na.uri for na in parse_message(_subscribe(asserted)).asserted_identities]
    except SipParseError:
        expected = []
    assert scscf.asserted_uris(request) == expected
