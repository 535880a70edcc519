"""A SUBSCRIBE to a user's reg event entering at the I-CSCF (TS 24.229 §5.3.2.1), as a
P-CSCF of another make or an application server sends it: the whole core on loopback
sockets, a raw UDP peer as the watcher. The I-CSCF asks the HSS where the user is
served (LIR, TS 29.228 §6.3), hands the SUBSCRIBE to that S-CSCF with its URI as the top
Route, and relays the S-CSCF's 200; the S-CSCF's NOTIFYs (the registration, then its
end after an RTR) go straight to the watcher's Contact. Users unknown or not
registered are answered at the I-CSCF from the LIA (404, 480)."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.sip import make_response, parse_message
from imsaka.ue.client import UeClient
from tests.e2e.test_bad_input import RawUe

pytestmark = pytest.mark.slow


class Watcher(RawUe):
    """A UDP socket that sends hand-written requests and reads what comes back."""

    def send(self, data: bytes, dest) -> None:
        self.sock.sendto(data, dest)

    async def receive(self, wait: float = 3.0):
        data, addr = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recvfrom(self.sock, 65535), wait
        )
        return parse_message(data), addr

    async def final(self, wait: float = 3.0):
        while True:
            msg, _ = await self.receive(wait)
            if getattr(msg, "status", 0) >= 200:
                return msg


def subscribe(impu: str, watcher: Watcher, call_id: str) -> bytes:
    return (
        f"SUBSCRIBE {impu} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{watcher.port};branch=z9hG4bK{call_id}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{impu}>;tag=w-{call_id}\r\n"
        f"To: <{impu}>\r\n"
        f"Call-ID: {call_id}@watcher\r\n"
        "CSeq: 1 SUBSCRIBE\r\n"
        "Event: reg\r\n"
        "Accept: application/reginfo+xml\r\n"
        "Expires: 600\r\n"
        f"Contact: <sip:watcher@127.0.0.1:{watcher.port}>\r\n"
        # the user's own identity: one the S-CSCF lets watch (§5.4.2.1.1)
        f"P-Asserted-Identity: <{impu}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_subscribe_through_the_icscf_reaches_the_serving_scscf(home_network, subscribers):
    net = home_network
    icscf = (net.config.icscf.address, net.config.icscf.port)
    sub = subscribers[0]
    impu = sub.impus[0]
    ue = UeClient(net.ue_config(sub, subscribe_reg_event=False), observers=[net.trace])
    await ue.start()
    watcher = Watcher()
    try:
        assert (await ue.register(10)).ok
        watcher.send(subscribe(impu, watcher, "t1"), icscf)
        ok = None
        notify = None
        while ok is None or notify is None:  # the NOTIFY may overtake the relayed 200
            msg, addr = await watcher.receive()
            if getattr(msg, "method", None) == "NOTIFY":
                notify = msg
                watcher.send(make_response(msg, 200, "OK").to_bytes(), addr)
            elif msg.status >= 200:
                ok = msg
        assert ok.status == 200 and len(ok.get_all("via")) == 1, ok
        assert ok.get("expires") == "600"
        body = notify.body.decode()
        assert notify.get("subscription-state").startswith("active")
        assert 'state="active"' in body and impu in body
        lir = [r for r in net.trace.messages("diameter") if r.summary.startswith("LIR")]
        assert len(lir) == 1 and lir[0].diameter["public_identity"] == impu
        assert net.scscf.census()["subscriptions"] == 2  # the P-CSCF's and the watcher's

        # An RTR ends the registration: the watcher hears of it from the S-CSCF.
        assert (await net.hss.deregister_impi(sub.impi)).get("ok")
        msg, addr = await watcher.receive()
        assert msg.method == "NOTIFY" and msg.get("subscription-state").startswith("terminated")
        assert 'state="terminated"' in msg.body.decode()
        watcher.send(make_response(msg, 200, "OK").to_bytes(), addr)
    finally:
        watcher.close()
        await ue.close()


async def test_users_unknown_or_unregistered_are_answered_at_the_icscf(home_network, subscribers):
    net = home_network
    icscf = (net.config.icscf.address, net.config.icscf.port)
    watcher = Watcher()
    try:
        watcher.send(subscribe("sip:nobody@home1.net", watcher, "t2"), icscf)
        resp = await watcher.final()
        assert resp.status == 404, resp
        # never registered, no services while unregistered: HSS 5003 → 480
        watcher.send(subscribe(subscribers[1].impus[0], watcher, "t3"), icscf)
        resp = await watcher.final()
        assert resp.status == 480, resp
        assert net.scscf.census()["subscriptions"] == 0
    finally:
        watcher.close()
