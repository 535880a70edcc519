"""Hostile input at the S-CSCF: a counted error answer, never a crash, and the core keeps serving."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imsaka.cscf.scscf import register_request_from_sip
from imsaka.cscf.scscf_core import (
    AskVectors,
    ContactSpec,
    DigestParams,
    RegisterRequest,
    RegistrarCore,
    RegistrarPolicy,
    Reply,
)
from imsaka.sip import SipParseError, parse_message

from .conftest import REALM
from .test_home_network import empty_auth, register, send

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
maybe = st.one_of(st.none(), texts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    username=texts,
    realm=texts,
    nonce=texts,
    response=maybe,
    auts=maybe,
    integrity=maybe,
    qop=maybe,
    nc=maybe,
    expires=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32 - 1)),
    star=st.booleans(),
)
def test_core_answers_any_authorization(
    username, realm, nonce, response, auts, integrity, qop, nc, expires, star
):
    core = RegistrarCore(RegistrarPolicy(realm=REALM, service_route="<sip:orig@s;lr>"))
    req = RegisterRequest(
        impu="sip:u@home1.net",
        call_id="c",
        cseq=1,
        auth=DigestParams(
            username=username,
            realm=realm,
            nonce=nonce,
            response=response,
            auts=auts,
            integrity_protected=integrity,
            qop=qop,
            nc=nc,
        ),
        contacts=() if star else (ContactSpec("sip:1.2.3.4", expires),),
        star=star,
        expires=expires,
    )
    actions = core.handle_register(1, req, 1000.0)
    assert len(actions) == 1
    assert isinstance(actions[0], Reply | AskVectors)


HEADERS = [
    "Authorization: Digest username=",
    "Authorization: Basic dXNlcjpwYXNz",
    "Authorization: Digest ,,,",
    'Authorization: Digest username="a", nonce="\\"',
    "Contact: <sip:1.2.3.4>;expires=abc",
    "Contact: <sip:1.2.3.4>;expires=-1",
    "Contact: garbage<<",
    "Expires: soon",
    "To: <>",
    "CSeq: x REGISTER",
]


def base_register(extra: str) -> bytes:
    lines = [
        "REGISTER sip:home1.net SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1",
        "From: <sip:u@home1.net>;tag=1",
        "To: <sip:u@home1.net>",
        "Call-ID: c",
        "CSeq: 1 REGISTER",
        "Contact: <sip:1.2.3.4>",
    ]
    name = extra.split(":", 1)[0].lower()
    lines = [line for line in lines if line.split(":", 1)[0].lower() != name]
    return ("\r\n".join([*lines, extra, "Content-Length: 0", "", ""])).encode()


def test_edge_reader_raises_only_sip_parse_error():
    for extra in HEADERS:
        try:
            req = parse_message(base_register(extra))
        except SipParseError:
            continue
        try:
            register_request_from_sip(req)
        except SipParseError:
            pass


async def test_malformed_registers_get_400_and_the_scscf_keeps_serving(home):
    import asyncio
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    port = sock.getsockname()[1]
    statuses = []
    try:
        for extra in HEADERS:
            data = base_register(extra).replace(b"127.0.0.1:5999", f"127.0.0.1:{port}".encode())
            data = data.replace(b"branch=z9hG4bK1", f"branch=z9hG4bK{os.urandom(4).hex()}".encode())
            await loop.sock_sendto(sock, data, ("127.0.0.1", home.scscf_port))
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
            except TimeoutError:
                statuses.append(None)  # dropped as unanswerable (counted by the endpoint)
                continue
            statuses.append(int(reply.split(b" ", 2)[1]))
        invite = (
            base_register("Subject: x")
            .replace(b"REGISTER sip", b"INVITE sip")
            .replace(b"1 REGISTER", b"1 INVITE")
            .replace(b"127.0.0.1:5999", f"127.0.0.1:{port}".encode())
        )
        await loop.sock_sendto(sock, invite, ("127.0.0.1", home.scscf_port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
        assert reply.startswith(b"SIP/2.0 ")
        assert int(reply.split(b" ", 2)[1]) in (100, 501)
    finally:
        sock.close()
    assert all(s is None or 400 <= s < 500 for s in statuses), statuses
    assert statuses.count(400) >= 5, statuses
    # Still serving: a proper REGISTER is challenged.
    r = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    assert r.status == 401
