"""User-Data read by its text fast path (`userdata._parse_plain`) gives what the XML parse
gives, for the documents it accepts, and falls back to the parse for the others."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf import userdata
from imsaka.cscf.userdata import UserDataError, parse_user_data
from imsaka.hss.userdata import ProfileIdentities, build_user_data


def _general(xml: str | bytes):
    """The parse alone (the fast path switched off)."""
    real = userdata._parse_plain
    userdata._parse_plain = lambda text: None
    try:
        return parse_user_data(xml)
    except UserDataError:
        return "error"
    except UnicodeEncodeError:  # a lone surrogate in text given as str
        return "unencodable"
    finally:
        userdata._parse_plain = real


def _fast(xml: str | bytes):
    try:
        return parse_user_data(xml)
    except UserDataError:
        return "error"
    except UnicodeEncodeError:
        return "unencodable"


_uri = st.from_regex(r"(sip|tel):[a-z0-9_.+]{1,12}(@[a-z0-9.]{1,10})?", fullmatch=True)
_ws = st.sampled_from(["", " ", "\n", "\r\n", "\t ", "  \n  "])
# character data with what XML refuses, rewrites or escapes mixed in now and then
_text = st.text(
    st.one_of(
        st.sampled_from(list("ab1 \t\n\r&<>]'\"\x00\x01\x0b\x85\xa0\u2028\ufffe\uffff\ufffd")),
        st.characters(),
    ),
    max_size=12,
)


def _mostly(plain, odd):
    """`plain` nine times in ten, `odd` else (so that most documents take the fast path
    and the others probe its edges)."""
    return st.integers(0, 9).flatmap(lambda n: odd if n == 9 else plain)


_plain_text = st.text(st.sampled_from(list("ab1 \t\n>'\"\x85\xa0\u2028\ufffd\u00e9")), max_size=8)


@st.composite
def _documents(draw) -> str:
    ws = draw(_ws)
    decl = draw(
        _mostly(
            st.sampled_from(
                ['<?xml version="1.0" encoding="UTF-8"?>', '<?xml version="1.0"?>', ""]
            ),
            st.sampled_from(
                [
                    " ",
                    "<?xml version='1.0'?>",
                    '<?xml version="1.1"?>',
                    '<?xml version="1.0" encoding="utf-8"?>',
                ]
            ),
        )
    )
    # (blanks before the root are XML only after a declaration)
    lead = draw(_ws) if decl else draw(_mostly(st.just(""), _ws))
    parts = [decl, lead, "<IMSSubscription>", ws]
    private = draw(_mostly(_plain_text, _text))
    parts.append(f"<PrivateID>{private}</PrivateID>{draw(_ws)}")
    for _ in range(draw(st.integers(1, 3))):
        parts.append(f"<ServiceProfile>{draw(_ws)}")
        for _ in range(draw(st.integers(0, 3))):
            parts.append(f"<PublicIdentity>{draw(_ws)}")
            barring = draw(st.sampled_from(["0", "1", "true", " TRUE ", "false", "", None]))
            if barring is not None:
                parts.append(f"<BarringIndication>{barring}</BarringIndication>{draw(_ws)}")
            identity = draw(
                _mostly(st.one_of(_uri, _uri.map(lambda u: f" {u}\n"), _plain_text), _text)
            )
            parts.append(f"<Identity>{identity}</Identity>{draw(_ws)}")
            parts.append(
                draw(
                    _mostly(
                        st.just(""),
                        st.sampled_from(
                            ["<Extension/>", "<IdentityType>0</IdentityType>", "<!-- c -->"]
                        ),
                    )
                )
            )
            parts.append(f"</PublicIdentity>{draw(_ws)}")
        parts.append(
            draw(
                _mostly(
                    st.just(""),
                    st.just(
                        "<InitialFilterCriteria><Priority>0</Priority></InitialFilterCriteria>"
                    ),
                )
            )
        )
        parts.append(f"</ServiceProfile>{draw(_ws)}")
    parts.append(draw(_mostly(st.just("</IMSSubscription>"), st.just("</Other>"))))
    parts.append(
        draw(_mostly(st.sampled_from(["", "\n"]), st.sampled_from([" x", "<!-- end -->"])))
    )
    return "".join(parts)


@settings(max_examples=600)
@given(_documents())
def test_fast_path_gives_what_the_parse_gives(doc):
    assert _fast(doc) == _general(doc)
    data = doc.encode("utf-8", "surrogatepass")
    assert _fast(data) == _general(data)


@settings(max_examples=300)
@given(st.text(st.sampled_from(list("<>/?=\"' \n&;!-aIMSPDiy")), max_size=80))
def test_fragments_give_what_the_parse_gives(text):
    assert _fast(text) == _general(text)


@given(
    st.lists(
        st.lists(st.tuples(_uri, st.booleans()), min_size=1, max_size=4), min_size=1, max_size=3
    )
)
def test_the_hss_documents_take_the_fast_path(profiles):
    doc = build_user_data("u@home1.net", [ProfileIdentities(p) for p in profiles])
    expected = _general(doc)
    assert userdata._parse_plain(doc.decode()) == expected
    assert parse_user_data(doc) == expected


def test_provisioned_ifc_takes_the_parse():
    doc = build_user_data(
        "u@home1.net",
        [
            ProfileIdentities(
                [("sip:u@home1.net", False)],
                "<InitialFilterCriteria><Priority>0</Priority></InitialFilterCriteria>",
            )
        ],
    ).decode()
    assert userdata._parse_plain(doc) is None
    assert parse_user_data(doc) == ("u@home1.net", [userdata.PublicIdentity("sip:u@home1.net")])


@pytest.mark.parametrize(
    "doc",
    [
        "<IMSSubscription><PrivateID>a</PrivateID><ServiceProfile><PublicIdentity>"
        "<Identity>x&amp;y</Identity></PublicIdentity></ServiceProfile></IMSSubscription>",
        '<?xml version="1.0"?><!DOCTYPE x><IMSSubscription/>',
        "<IMSSubscription><PrivateID>a</PrivateID><ServiceProfile><PublicIdentity>"
        "<Identity>a]]>b</Identity></PublicIdentity></ServiceProfile></IMSSubscription>",
    ],
)
def test_forms_outside_the_fast_path_are_parsed(doc):
    assert userdata._parse_plain(doc) is None
    assert _fast(doc) == _general(doc)
