"""Bad input at the edge, each answered as the specs say, and the core still serving.

Unknown user (UAA error → 403/404), roaming not allowed (403), wrong digest response
(403), REGISTER without `Require: sec-agree` / without Authorization under policy
"required" (421/494, RFC 3329 §2.3.1), the drop rules of seed steps 1 and 6, a bad
MAC at the UE ("network authentication failed").
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from imsaka.network import Network, NetworkOptions, TestSubscriber
from imsaka.sip import parse_message
from imsaka.ue.client import UeClient
from imsaka.ue.core import NETWORK_AUTH_FAILED
from tests.polling import eventually

pytestmark = pytest.mark.slow


async def register(net, sub, **kw):
    ue = UeClient(net.ue_config(sub, **kw), observers=[net.trace])
    await ue.start()
    try:
        return await ue.register(timeout=15), ue
    finally:
        await ue.close()


async def still_serving(net, sub):
    res, _ = await register(net, sub)
    assert res.ok and res.protected, res


class RawUe:
    """A UDP socket that sends hand-written bytes and waits for an answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def exchange(self, data: bytes, dest, wait: float = 2.0):
        loop = asyncio.get_running_loop()
        self.sock.sendto(data, dest)
        try:
            reply = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), wait)
        except TimeoutError:
            return None
        return parse_message(reply)

    def close(self) -> None:
        self.sock.close()


def register_bytes(
    port: int, *, require=True, authorization=True, security_client=True, supported="path"
) -> bytes:
    lines = [
        "REGISTER sip:registrar.home1.net SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{os.urandom(6).hex()}",
        "Max-Forwards: 70",
        "From: <sip:user1_public1@home1.net>;tag=4fa3",
        "To: <sip:user1_public1@home1.net>",
        f"Contact: <sip:127.0.0.1:{port}>;expires=600000",
        f"Call-ID: {os.urandom(8).hex()}",
    ]
    if authorization:
        lines.append(
            'Authorization: Digest username="user1_private@home1.net", realm="registrar.home1.net", '
            'nonce="", uri="sip:registrar.home1.net", response=""'
        )
    if security_client:
        lines.append(
            "Security-Client: ipsec-3gpp; alg=hmac-sha-1-96; spi-c=23456789; spi-s=12345678; port-c=2468; port-s=1357"
        )
    if require:
        lines += ["Require: sec-agree", "Proxy-Require: sec-agree"]
    lines += ["CSeq: 1 REGISTER", f"Supported: {supported}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def test_unknown_user_is_refused(home_network, subscribers):
    net = home_network
    stranger = TestSubscriber(
        impi="nobody_private@home1.net",
        impus=("sip:nobody@home1.net",),
        k=os.urandom(16),
        opc=os.urandom(16),
    )
    res, _ = await register(net, stranger)
    assert not res.ok and res.status in (403, 404), res
    await still_serving(net, subscribers[0])


async def test_roaming_not_allowed(subscribers):
    net = Network(subscribers, NetworkOptions(visited=True, visited_network_id="Forbidden Network"))
    await net.start()
    try:
        res, _ = await register(net, subscribers[0])
        assert not res.ok and res.status == 403, res
    finally:
        await net.stop()


async def test_wrong_digest_response_gets_403(home_network, subscribers):
    net = home_network
    ue = UeClient(net.ue_config(subscribers[1]), observers=[net.trace])
    await ue.start()
    original = ue.core._build_register

    def tampered(**kw):
        auth = kw["authorization"]
        if 'response=""' not in auth:
            kw["authorization"] = auth.replace('response="', 'response="0', 1).replace('0"', '"', 0)
            import re

            kw["authorization"] = re.sub(
                r'response="[0-9a-f]{32}"', 'response="' + "0" * 32 + '"', auth
            )
        return original(**kw)

    ue.core._build_register = tampered
    try:
        res = await ue.register(timeout=15)
    finally:
        await ue.close()
    assert not res.ok and res.status == 403, res
    # the temporary set went after the 403
    assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0)
    await still_serving(net, subscribers[1])


async def test_bad_mac_stops_the_ue(home_network, subscribers):
    net = home_network
    sub = subscribers[2]
    wrong = TestSubscriber(impi=sub.impi, impus=sub.impus, k=os.urandom(16), opc=sub.opc)
    res, ue = await register(net, wrong)
    assert not res.ok and res.reason == NETWORK_AUTH_FAILED
    assert not ue.table.sets()
    await still_serving(net, sub)


async def test_421_494_and_missing_authorization(home_network, subscribers):
    net = home_network
    raw = RawUe()
    try:
        dest = net.pcscf_address
        r = await raw.exchange(register_bytes(raw.port, require=False), dest)
        assert r is not None and r.status == 421
        assert "sec-agree" in r.get_all("Require") and r.get("Security-Server")
        r = await raw.exchange(
            register_bytes(raw.port, require=False, supported="path, sec-agree"), dest
        )
        assert r is not None and r.status == 494 and r.get("Security-Server")
        r = await raw.exchange(register_bytes(raw.port, authorization=False), dest)
        assert r is not None and r.status == 494
        r = await raw.exchange(register_bytes(raw.port, security_client=False), dest)
        assert r is not None and r.status == 494
    finally:
        raw.close()
    await still_serving(net, subscribers[0])


async def test_drop_rules_of_seed_steps_1_and_6(home_network, subscribers):
    net = home_network
    cfg = net.config.pcscf
    # A registered UE keeps the protected ports open (the backend binds them per live set).
    ue1, _ = await register(net, subscribers[1])
    assert ue1.ok
    raw = RawUe()
    try:
        # Step 1: an "initial REGISTER" arriving protected (ESP with no SA) is dropped.
        esp = os.urandom(4) + (1).to_bytes(4, "big") + os.urandom(64)
        assert await raw.exchange(esp, (cfg.address, cfg.port_s), wait=0.5) is None
        assert (
            await raw.exchange(register_bytes(raw.port), (cfg.address, cfg.port_s), wait=0.5)
            is None
        )
        # Step 1 at the unprotected port: ESP bytes are no SIP: dropped, not answered.
        assert await raw.exchange(esp, net.pcscf_address, wait=0.5) is None
    finally:
        raw.close()
    # Step 6: the challenge response sent in the clear is dropped.
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    from imsaka.ue.core import SendRequest

    original = ue._apply

    def clear_phase2(events):
        events = [
            SendRequest(e.request, False) if isinstance(e, SendRequest) and e.protected else e
            for e in events
        ]
        return original(events)

    ue._apply = clear_phase2
    try:
        res = await ue.register(timeout=3)
    finally:
        await ue.close()
    assert not res.ok and res.status == 408  # never answered
    stats = net.pcscf.stats()
    assert stats["drops"].get("clear-register-where-protection-due", 0) >= 1
    esp_drops = stats["esp_drops"]
    assert esp_drops.get("esp-unknown-spi", 0) >= 1 or esp_drops.get("esp-too-short", 0) >= 1
    assert esp_drops.get("clear-sip-on-protected-port", 0) >= 1
    assert stats["parse_errors"] >= 1
    await still_serving(net, subscribers[2])


async def test_421_over_tcp(home_network):
    """The P-CSCF serves clear SIP over TCP at its port too; the answer comes back on the
    same connection."""
    net = home_network
    host, port = net.pcscf_address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        local_port = writer.get_extra_info("sockname")[1]
        data = register_bytes(local_port, require=False).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        resp = parse_message(head)
        assert resp.status == 421 and resp.get("Security-Server")
    finally:
        writer.close()
        await writer.wait_closed()
