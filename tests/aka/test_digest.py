"""HTTP Digest AKA (RFC 2617, RFC 3310, RFC 4169), cross-checked by an independent
computation written here with hashlib/hmac directly."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.aka import digest
from imsaka.aka.digest import (
    Challenge,
    DigestError,
    compute_response,
    decode_auts,
    encode_auts,
    make_nonce,
    password_for,
    split_nonce,
    verify_response,
)


def md5hex(*parts: bytes) -> str:
    return hashlib.md5(b":".join(parts)).hexdigest()


def reference_response(
    user, realm, pw: bytes, method, uri, nonce, qop=None, nc=None, cnonce=None, body=b""
):
    """RFC 2617 §3.2.2 written out independently of imsaka.aka.digest."""
    a1 = md5hex(user.encode(), realm.encode(), pw)
    if qop == "auth-int":
        a2 = md5hex(method.encode(), uri.encode(), hashlib.md5(body).hexdigest().encode())
    else:
        a2 = md5hex(method.encode(), uri.encode())
    if qop is None:
        return md5hex(a1.encode(), nonce.encode(), a2.encode())
    return md5hex(
        a1.encode(), nonce.encode(), nc.encode(), cnonce.encode(), qop.encode(), a2.encode()
    )


def reference_akav2_password(res: bytes, ik: bytes, ck: bytes) -> bytes:
    mac = hmac.new(res + ik + ck, b"http-digest-akav2-password", hashlib.md5).digest()
    return base64.b64encode(mac)


RES = bytes.fromhex("a54211d5e3ba50bf")
IK = bytes.fromhex("f769bcd751044604127672711c6d3441")
CK = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")


def test_rfc2617_published_example():
    # RFC 2617 §3.5 example (also the response value shown in the seed paper's packets).
    resp = compute_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password=password_for("MD5", password="Circle Of Life"),
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert resp == "6629fae49393a05397450978507c4ef1"


def test_nonce_round_trip_and_layout():
    rand, autn = bytes(range(16)), bytes(range(16, 32))
    nonce = make_nonce(rand, autn, b"srv")
    assert base64.b64decode(nonce) == rand + autn + b"srv"
    assert split_nonce(nonce) == (rand, autn, b"srv")
    assert split_nonce(make_nonce(rand, autn)) == (rand, autn, b"")


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"\x00" * 31).decode(), "YQ", 5])
def test_bad_nonce(bad):
    with pytest.raises(DigestError, match=r"^nonce:"):
        split_nonce(bad)


def test_make_nonce_checks_lengths():
    with pytest.raises(DigestError, match=r"^rand:"):
        make_nonce(b"\x00" * 15, b"\x00" * 16)
    with pytest.raises(DigestError, match=r"^autn:"):
        make_nonce(b"\x00" * 16, b"\x00" * 17)


def test_auts_parameter():
    auts = bytes(range(14))
    assert decode_auts(encode_auts(auts)) == auts
    with pytest.raises(DigestError, match=r"^auts:"):
        decode_auts(base64.b64encode(b"\x00" * 13).decode())
    with pytest.raises(DigestError, match=r"^auts:"):
        encode_auts(b"\x00" * 15)


def test_passwords():
    assert password_for("AKAv1-MD5", res=RES) == RES
    assert password_for("akav1-md5", res=RES) == RES
    assert password_for("AKAv2-MD5", res=RES, ik=IK, ck=CK) == reference_akav2_password(RES, IK, CK)
    assert password_for("AKAv2-MD5", res=RES, ik=IK, ck=CK) != RES
    assert password_for("MD5", password="secret") == b"secret"
    assert password_for("AKAv1-MD5", res=b"") == b""  # resync: the empty password
    assert password_for("AKAv2-MD5", res=b"") == b""


def test_res_with_zero_octets_is_not_truncated():
    res = b"\x12\x00\x34\x00\x00\x56\x78\x00"
    common = dict(username="u@d", realm="d", method="REGISTER", uri="sip:d", nonce="n")
    r = compute_response(
        algorithm="AKAv1-MD5", password=password_for("AKAv1-MD5", res=res), **common
    )
    assert r == reference_response("u@d", "d", res, "REGISTER", "sip:d", "n")
    truncated = compute_response(algorithm="AKAv1-MD5", password=res[:1], **common)
    assert r != truncated


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"algorithm": "SHA-256", "res": RES}, "algorithm"),
        ({"algorithm": "AKAv1-MD5"}, "res"),
        ({"algorithm": "AKAv1-MD5", "res": b"\x00" * 17}, "res"),
        ({"algorithm": "AKAv1-MD5", "res": RES.hex()}, "res"),
        ({"algorithm": "AKAv2-MD5", "res": RES, "ck": CK}, "ik"),
        ({"algorithm": "AKAv2-MD5", "res": RES, "ik": IK}, "ck"),
        ({"algorithm": "AKAv2-MD5", "res": RES, "ik": IK, "ck": CK[:8]}, "ck"),
        ({"algorithm": "MD5"}, "password"),
    ],
)
def test_password_errors_name_field_without_secret(kwargs, field):
    with pytest.raises(DigestError) as ei:
        password_for(**kwargs)
    msg = str(ei.value)
    assert msg.startswith(field + ":")
    for secret in (RES, IK, CK):
        assert secret.hex() not in msg and repr(secret) not in msg


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=30)
hexnc = st.integers(1, 0xFFFFFFFF).map(lambda n: f"{n:08x}")


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(["AKAv1-MD5", "AKAv2-MD5"]),
    res=st.binary(min_size=4, max_size=16),
    ik=st.binary(min_size=16, max_size=16),
    ck=st.binary(min_size=16, max_size=16),
    user=texts,
    realm=texts,
    uri=texts,
    method=st.sampled_from(["REGISTER", "INVITE", "MESSAGE"]),
    qop=st.sampled_from([None, "auth", "auth-int"]),
    nc=hexnc,
    cnonce=st.text(alphabet="0123456789abcdef", min_size=1, max_size=16),
    body=st.binary(max_size=200),
    rand=st.binary(min_size=16, max_size=16),
    autn=st.binary(min_size=16, max_size=16),
)
def test_response_matches_independent_computation(
    algorithm, res, ik, ck, user, realm, uri, method, qop, nc, cnonce, body, rand, autn
):
    nonce = make_nonce(rand, autn)
    pw = password_for(algorithm, res=res, ik=ik, ck=ck)
    ref_pw = res if algorithm == "AKAv1-MD5" else reference_akav2_password(res, ik, ck)
    q = {} if qop is None else {"qop": qop, "nc": nc, "cnonce": cnonce}
    got = compute_response(
        algorithm=algorithm,
        username=user,
        realm=realm,
        password=pw,
        method=method,
        uri=uri,
        nonce=nonce,
        body=body,
        **q,
    )
    want = reference_response(user, realm, ref_pw, method, uri, nonce, qop, nc, cnonce, body)
    assert got == want
    args = dict(
        algorithm=algorithm,
        username=user,
        realm=realm,
        method=method,
        uri=uri,
        nonce=nonce,
        body=body,
        **q,
    )
    assert verify_response(response=want, password=pw, **args)
    assert verify_response(response=want.upper(), password=pw, **args)
    # a wrong RES, the AKAv1 password used for AKAv2 (the Kamailio bug), a flipped digit
    wrong_res = bytes([res[0] ^ 1]) + res[1:]
    assert not verify_response(
        response=want, password=password_for(algorithm, res=wrong_res, ik=ik, ck=ck), **args
    )
    if algorithm == "AKAv2-MD5":
        assert not verify_response(response=want, password=res, **args)
    flipped = ("0" if want[0] != "0" else "1") + want[1:]
    assert not verify_response(response=flipped, password=pw, **args)
    if qop == "auth-int":
        assert not verify_response(response=want, password=pw, **{**args, "body": body + b"x"})


def test_verify_rejects_malformed_peer_input_without_raising():
    base = dict(
        algorithm="AKAv1-MD5",
        username="u",
        realm="r",
        password=RES,
        method="REGISTER",
        uri="sip:r",
        nonce="n",
    )
    good = compute_response(**base, qop="auth", nc="00000001", cnonce="abc")
    assert verify_response(response=good, **base, qop="auth", nc="00000001", cnonce="abc")
    assert not verify_response(response=good, **base, qop="auth", nc=None, cnonce="abc")
    assert not verify_response(response=good, **base, qop="auth", nc="1", cnonce="abc")
    assert not verify_response(response=good, **base, qop="auth-conf", nc="00000001", cnonce="abc")
    assert not verify_response(response="é" * 32, **base, qop="auth", nc="00000001", cnonce="abc")
    assert not verify_response(response=None, **base, qop="auth", nc="00000001", cnonce="abc")  # type: ignore[arg-type]
    assert not verify_response(
        response=good,
        **{**base, "algorithm": "SHA-512-256"},
        qop="auth",
        nc="00000001",
        cnonce="abc",
    )


def test_compute_requires_nc_cnonce_with_qop():
    base = dict(
        algorithm="MD5", username="u", realm="r", password=b"p", method="M", uri="u", nonce="n"
    )
    with pytest.raises(DigestError, match=r"^nc:"):
        compute_response(**base, qop="auth", cnonce="c")
    with pytest.raises(DigestError, match=r"^cnonce:"):
        compute_response(**base, qop="auth", nc="00000001")
    with pytest.raises(DigestError, match=r"^qop:"):
        compute_response(**base, qop="bogus", nc="00000001", cnonce="c")
    with pytest.raises(DigestError, match=r"^password:"):
        compute_response(**{**base, "password": "p"})


def test_challenge_header_and_repr():
    ch = Challenge(
        realm="ims.test",
        nonce=make_nonce(b"\x01" * 16, b"\x02" * 16),
        qop=("auth", "auth-int"),
        ck=CK,
        ik=IK,
    )
    value = ch.to_header_value()
    assert value.startswith('Digest realm="ims.test", nonce="')
    assert "algorithm=AKAv1-MD5" in value and 'qop="auth,auth-int"' in value
    assert f'ck="{CK.hex()}"' in value and f'ik="{IK.hex()}"' in value
    assert CK.hex() not in repr(ch) and IK.hex() not in repr(ch)
    assert "ck=" not in Challenge(realm="r", nonce="n").to_header_value()
    assert digest.ALGORITHMS == ("AKAv1-MD5", "AKAv2-MD5", "MD5")
