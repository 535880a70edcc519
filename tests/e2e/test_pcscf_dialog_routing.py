"""The UE's reg-event subscription through the P-CSCF over real sockets and the
userspace ESP backend (TS 24.229 §5.1.1.3, §5.2.6.3, §5.2.6.4, §5.1.1.7; RFC 3680,
RFC 6665, RFC 3261 §12/§16).

A UE registers (UeClient, its own reg-event subscription switched off where the client
has one); then this test's hand speaks for it over its SA set: the SUBSCRIBE from UE
port-c to P-CSCF port-s, the S-CSCF's NOTIFYs arriving at UE port-s from P-CSCF
port-c, the 200s back over that pair. Checked: the P-CSCF's Record-Route names its
port-s towards the UE, the S-CSCF holds the UE's subscription, an in-dialog refresh
gets through, and a network de-registration (RTR) reaches the UE as a terminated
NOTIFY before its SAs go; after a de-REGISTER the S-CSCF's NOTIFY is answered 404 by
the P-CSCF at once. Nothing is left pending anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from imsaka.ipsec.sa import SaState
from imsaka.sip import Request, Response, make_response, parse_message
from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow

_branches = itertools.count(1)


class Hand:
    """Speaks SIP for a registered UeClient over its established SA set."""

    def __init__(self, ue: UeClient, net, service_route: tuple[str, ...]) -> None:
        self.ue = ue
        self.net = net
        self.service_route = service_route
        self.sa_set = next(s for s in ue.table.sets() if s.state is SaState.ESTABLISHED)
        self.inbox: asyncio.Queue = asyncio.Queue()
        ue.backend.on_message = self.inbox.put_nowait  # this hand takes over the SAs
        self.host = ue.config.local_host
        self.port_c = self.sa_set.local_ports.port_c
        self.port_s = self.sa_set.local_ports.port_s
        cfg = net.config.pcscf
        self.pcscf_port_c, self.pcscf_port_s = net.pcscf.protected_ports
        self.pcscf_host = cfg.address
        self.pcscf_name = cfg.name
        self.impu = ue.config.impus[0]
        self.contact = f"sip:{self.host}:{self.port_s}"

    def subscribe(self, *, call_id: str, cseq: int, to_tag: str | None = None,
                  target: str | None = None, route: tuple[str, ...] | None = None,
                  expires: int = 600000) -> str:  # fmt: skip
        branch = f"z9hG4bKhand{next(_branches)}"
        if route is None:  # initial: the P-CSCF, then the Service-Route (§5.1.2A.1.1)
            route = (f"<sip:{self.pcscf_host}:{self.pcscf_port_s};lr>", *self.service_route)
        headers = [
            ("Via", f"SIP/2.0/UDP {self.host}:{self.port_s};branch={branch}"),
            ("Max-Forwards", "70"),
            *[("Route", r) for r in route],
            ("From", f"<{self.impu}>;tag=hand1"),
            ("To", f"<{self.impu}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} SUBSCRIBE"),
            ("Event", "reg"),
            ("Expires", str(expires)),
            ("Accept", "application/reginfo+xml"),
            ("Contact", f"<{self.contact}>"),
            ("Content-Length", "0"),
        ]
        req = Request("SUBSCRIBE", target or self.impu, headers)
        assert self.ue.backend.send(self.sa_set.client_sa(), req.to_bytes())
        return branch

    async def receive(self, timeout: float = 5.0):
        msg = await asyncio.wait_for(self.inbox.get(), timeout)
        return parse_message(msg.data), msg

    async def expect(self, kind: type, timeout: float = 5.0):
        """The next message of `kind` (Request/Response); others are kept for later."""
        kept = []
        try:
            while True:
                sip, raw = await self.receive(timeout)
                if isinstance(sip, kind):
                    return sip, raw
                kept.append(raw)
        finally:
            for raw in kept:
                self.inbox.put_nowait(raw)

    def answer(self, notify: Request, raw, status: int = 200) -> None:
        ok = make_response(notify, status)
        assert self.ue.backend.send_reply(raw.sa, ok.to_bytes())


async def _register(net, sub) -> tuple[UeClient, Hand]:
    cfg = net.ue_config(sub)
    if hasattr(cfg, "subscribe_reg_event"):
        cfg = dataclasses.replace(cfg, subscribe_reg_event=False)  # the hand subscribes
    ue = UeClient(cfg, observers=[net.trace])
    await ue.start()
    res = await ue.register(10)
    assert res.ok and res.protected, res
    # the P-CSCF's own reg-event SUBSCRIBE (TS 24.229 §5.2.3) is in place first
    assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] >= 1)
    return ue, Hand(ue, net, tuple(res.service_route))


def _nothing_pending(net) -> bool:
    c = net.pcscf.census()
    return c["pending_forwarded"] == 0 and c["pending_to_ue"] == 0


async def test_ue_reg_subscription_notify_over_sa_then_network_deregistration(
    home_network, subscribers
):
    net = home_network
    ue, hand = await _register(net, subscribers[0])
    try:
        hand.subscribe(call_id="hand-sub-1", cseq=1)
        ok, raw_ok = await hand.expect(Response)
        assert ok.status == 200 and ok.cseq.method == "SUBSCRIBE"
        # over the SA pair the SUBSCRIBE used: P-CSCF port-s -> UE port-c
        assert raw_ok.local[1] == hand.port_c and raw_ok.peer[1] == hand.pcscf_port_s
        # RFC 3261 §12.1.2: the route set, the P-CSCF at its protected server port
        rr = ok.get_all("Record-Route")
        assert rr == [f"<sip:{hand.pcscf_name}:{hand.pcscf_port_s};lr>"]
        scscf_contact = ok.contacts[0].uri
        to_tag = ok.to.tag
        # the first NOTIFY: P-CSCF port-c -> UE port-s, addressed to the UE's contact
        notify, raw = await hand.expect(Request)
        assert notify.method == "NOTIFY" and notify.uri == hand.contact
        assert raw.local[1] == hand.port_s and raw.peer[1] == hand.pcscf_port_c
        assert notify.get("Route") is None and notify.via[0].port == hand.pcscf_port_c
        assert notify.get("Subscription-State").startswith("active")
        assert b"<reginfo" in notify.body and hand.contact.encode() in notify.body
        hand.answer(notify, raw)
        # the S-CSCF holds the UE's subscription, its NOTIFY transaction answered
        scscf = net.scscf.scscf
        assert await eventually(lambda: net.scscf.census()["transactions_waiting"] == 0)
        ue_subs = [s for s in scscf.subscriptions if s.remote_target == hand.contact]
        assert len(ue_subs) == 1 and ue_subs[0].route_set == (
            f"<sip:{hand.pcscf_name}:{net.pcscf.address[1]};lr>",
        )
        assert net.scscf.census()["subscriptions"] == 2  # the P-CSCF's and the UE's
        assert await eventually(lambda: _nothing_pending(net))
        # an in-dialog refresh: to the S-CSCF's Contact along the route set
        hand.subscribe(call_id="hand-sub-1", cseq=2, to_tag=to_tag, target=scscf_contact,
                       route=tuple(rr))  # fmt: skip
        ok2, _ = await hand.expect(Response)
        assert ok2.status == 200 and ok2.to.tag == to_tag
        notify2, raw2 = await hand.expect(Request)
        assert notify2.cseq.seq == notify.cseq.seq + 1
        hand.answer(notify2, raw2)
        assert await eventually(lambda: net.scscf.census()["transactions_waiting"] == 0)
        assert net.scscf.census()["subscriptions"] == 2
        # network-initiated de-registration (RTR): the UE learns it from its NOTIFY,
        # which the P-CSCF lets through before it removes the SAs (§5.1.1.7, §5.2.3)
        result = await net.hss.deregister_impi(subscribers[0].impi)
        assert result.get("ok"), result
        final, raw3 = await hand.expect(Request)
        assert final.method == "NOTIFY"
        assert final.get("Subscription-State").startswith("terminated")
        assert b'state="terminated"' in final.body
        assert net.pcscf.stats()["sa_sets"] == 1  # still up: the UE has not answered
        hand.answer(final, raw3)
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0)
        stats = net.pcscf.stats()
        assert stats["registrations"] == 0 and stats["network-deregistered"] == 1
        assert await eventually(lambda: net.scscf.census()["transactions_waiting"] == 0)
        assert net.scscf.census()["subscriptions"] == 0
        assert await eventually(lambda: _nothing_pending(net))
        assert not net.pcscf.core.drops and net.pcscf.internal_errors == 0
    finally:
        await ue.close()


async def test_notify_after_de_register_is_answered_by_the_pcscf(home_network, subscribers):
    net = home_network
    ue, hand = await _register(net, subscribers[1])
    try:
        hand.subscribe(call_id="hand-sub-2", cseq=1)
        ok, _ = await hand.expect(Response)
        assert ok.status == 200
        notify, raw = await hand.expect(Request)
        hand.answer(notify, raw)
        assert await eventually(lambda: net.scscf.census()["transactions_waiting"] == 0)
        # the UE client takes its SAs back and de-registers (Expires 0 over them)
        ue.backend.on_message = ue._protected
        res = await ue.deregister(10)
        assert res.ok, res

        # The S-CSCF's terminated NOTIFY goes straight to the P-CSCF, the 200 OK back
        # through the I-CSCF: the NOTIFY arrives after the SAs went (answered 404 by
        # the P-CSCF) or overtakes the 200 (taken to the UE, then answered 404 by the
        # P-CSCF when the SAs go, unless the UE's answer got through before). Either
        # way the S-CSCF's transaction ends at once, not at Timer F.
        def notify_answered() -> list:
            return [
                r
                for r in net.trace.messages("sip")
                if r.src_name == "P-CSCF"
                and r.dst_name == "S-CSCF"
                and dict(r.headers).get("Call-ID") == "hand-sub-2"
                and dict(r.headers).get("CSeq", "").endswith("NOTIFY")
                and r.summary[:1] in "2456"
            ]

        assert await eventually(lambda: len(notify_answered()) >= 2, 2.0)
        counters = net.pcscf.core.counters
        assert counters["terminating-not-registered"] + counters[
            "terminating-answered-for-gone-ue"
        ] >= 1 or notify_answered()[-1].summary.startswith("4")
        assert await eventually(lambda: net.scscf.census()["transactions_waiting"] == 0, 2.0)
        assert net.scscf.census()["subscriptions"] == 0
        stats = net.pcscf.stats()
        assert stats["sa_sets"] == 0 and stats["registrations"] == 0
        assert await eventually(lambda: _nothing_pending(net))
    finally:
        await ue.close()
