"""Hostile input: whatever a peer sends, the AKA core answers with its named error or
a failure result, never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.aka.digest import DigestError, decode_auts, split_nonce, verify_response
from imsaka.aka.isim import AkaMacFailure, Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsMacError, recover_sqn_ms

M = Milenage(bytes(range(16)), opc=bytes(range(16, 32)))
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_nonce_and_auts_parsers_raise_only_digest_error(value):
    for parse in (split_nonce, decode_auts):
        try:
            parse(value)
        except DigestError as exc:
            assert str(exc).split(":")[0] in ("nonce", "auts")


@SETTINGS
@given(rand=st.binary(min_size=16, max_size=16), autn=st.binary(min_size=16, max_size=16))
def test_random_challenge_is_a_mac_failure(rand, autn):
    assert Isim(M).authenticate(rand, autn) == AkaMacFailure("mac")


@SETTINGS
@given(rand=st.binary(min_size=16, max_size=16), auts=st.binary(min_size=14, max_size=14))
def test_random_auts_is_refused(rand, auts):
    try:
        recover_sqn_ms(M, rand, auts)
        raise AssertionError("random AUTS accepted")
    except AutsMacError:
        pass


@SETTINGS
@given(
    response=st.one_of(st.none(), st.text(max_size=40), st.binary(max_size=40)),
    qop=st.one_of(st.none(), st.text(max_size=10)),
    nc=st.one_of(st.none(), st.text(max_size=10)),
    cnonce=st.one_of(st.none(), st.text(max_size=10)),
    algorithm=st.one_of(
        st.none(), st.text(max_size=12), st.sampled_from(["AKAv1-MD5", "akav2-md5"])
    ),
)
def test_verify_response_never_raises_on_peer_fields(response, qop, nc, cnonce, algorithm):
    got = verify_response(
        response=response,
        algorithm=algorithm,
        username="u",
        realm="r",
        password=b"\x00\x01",
        method="REGISTER",
        uri="sip:r",
        nonce="n",
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    assert got is False or isinstance(response, str)


@SETTINGS
@given(
    username=st.text(st.characters(blacklist_categories=()), max_size=20),
    realm=st.text(st.characters(blacklist_categories=()), max_size=20),
    uri=st.text(st.characters(blacklist_categories=()), max_size=20),
    nonce=st.text(st.characters(blacklist_categories=()), max_size=20),
    cnonce=st.text(st.characters(blacklist_categories=()), max_size=20),
)
def test_any_text_including_lone_surrogates_is_handled(username, realm, uri, nonce, cnonce):
    args = dict(
        algorithm="AKAv1-MD5",
        username=username,
        realm=realm,
        password=b"\x00\x01",
        method="REGISTER",
        uri=uri,
        nonce=nonce,
        qop="auth",
        nc="00000001",
        cnonce=cnonce,
    )
    assert verify_response(response="0" * 32, **args) in (True, False)


def test_lone_surrogate_is_a_named_digest_error():
    import pytest

    from imsaka.aka.digest import compute_response

    with pytest.raises(DigestError, match=r"^username:"):
        compute_response(
            algorithm="MD5",
            username="\udcff",
            realm="r",
            password=b"p",
            method="M",
            uri="u",
            nonce="n",
        )
    with pytest.raises(DigestError, match=r"^cnonce:"):
        compute_response(
            algorithm="MD5",
            username="u",
            realm="r",
            password=b"p",
            method="M",
            uri="u",
            nonce="n",
            qop="auth",
            nc="00000001",
            cnonce="\ud800",
        )
