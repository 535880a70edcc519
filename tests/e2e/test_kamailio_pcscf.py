"""Interoperability: our UE (without sec-agree), I-CSCF, S-CSCF and HSS with Kamailio's
IMS P-CSCF (5.6, Debian's `kamailio-ims-modules`) in place of ours, over real UDP and
Diameter on loopback.

What it checks against the real peer: our I-CSCF and S-CSCF behind a P-CSCF of
another make (its Path, Require and P-Visited-Network-ID; TS 24.229 §5.2.2.1), our
401 as its configuration edits it (ck/ik taken out by a pattern on our header's text),
our 200 (Path, Service-Route, P-Associated-URI) as its `pcscf_save` takes it, and a
re-registration and a de-registration through it. Kamailio's IPsec module needs the
kernel's XFRM, which this machine lacks, so the UE registers without sec-agree: each
of its REGISTERs is challenged (TS 24.229 §5.4.1.2.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imsaka.diameter import cx
from imsaka.network import Network
from imsaka.ports import free_port
from imsaka.ue.client import UeClient
from tests.e2e.kamailio import PCSCF_HOST, KamailioPcscf, available, core_with, diameter
from tests.polling import eventually

pytestmark = pytest.mark.slow

HOME = "home1.net"


@pytest.fixture(params=[False], ids=["plain"])
async def core(request, tmp_path) -> AsyncIterator[tuple[Network, KamailioPcscf]]:
    """Our HSS, I-CSCF and S-CSCF; Kamailio as the P-CSCF the UE registers through
    (subscribing to the reg event when the parameter says so)."""
    assert available(), ".ci/run installs kamailio, kamailio-ims-modules, kamailio-presence-modules"
    icscf_port = free_port()
    kam = KamailioPcscf(
        tmp_path / "kamailio",
        hss_port=free_port(udp=False, tcp=True),
        realm=HOME,
        icscf=f"sip:127.0.0.1:{icscf_port}",
        reginfo=request.param,
    )
    # ours starts too (Network always does) but no UE talks to it
    extra = {"icscf": {"port": icscf_port}}
    async with core_with(kam, extra, seed=2613) as net:
        yield net, kam


async def _ue_behind(net: Network, kam: KamailioPcscf, sub) -> UeClient:
    """Our UE for `sub`, started, registering through Kamailio without sec-agree and
    without a reg-event subscription of its own."""
    config = net.ue_config(
        sub, pcscf=("127.0.0.1", kam.sip_port), sec_agree=False, subscribe_reg_event=False
    )
    ue = UeClient(config, observers=[net.trace])
    await ue.start()
    return ue


async def test_registration_through_kamailio_pcscf(core):
    net, kam = core
    sub = net.subscribers[0]
    ue = await _ue_behind(net, kam, sub)
    try:
        res = await ue.register(10)
        assert res.ok and not res.protected, (res, kam.tail())
        assert res.associated_uris == tuple(f"<{u}>" for u in sub.impus)
        assert res.service_route and net.config.scscf.name in res.service_route[0]
        # our S-CSCF stored Kamailio's Path (its terminating route to the UE) and
        # returned it in the 200 (RFC 3327)
        sip = net.trace.messages("sip")
        ok = next(r for r in sip if r.src_name == "S-CSCF" and r.summary.startswith("200"))
        assert dict(ok.headers)["Path"] == f"<sip:term@{PCSCF_HOST}:{kam.sip_port};lr>"
        # the I-CSCF took Kamailio's P-Visited-Network-ID (a token) for the UAR
        assert diameter(net, "UAA")[0].diameter.get("experimental_result_code") == 2001
        # Kamailio's edit of our 401 left no ck/ik for the UE (PITFALLS: phones stall)
        challenge = next(
            r for r in sip if r.dst_name == "UE" and r.summary.startswith("401")
        ).headers
        www = dict(challenge)["WWW-Authenticate"]
        assert "ck=" not in www and "ik=" not in www and "AKAv1-MD5" in www
        sar = diameter(net, "SAR")
        assert [r.diameter["server_assignment_type"] for r in sar] == ["REGISTRATION"]

        res = await ue.reregister(10)
        assert res.ok, (res, kam.tail())
        res = await ue.deregister(10)
        assert res.ok, (res, kam.tail())
        assert diameter(net, "SAR")[-1].diameter["server_assignment_type"] == (
            "USER_DEREGISTRATION"
        )
        assert await eventually(lambda: net.scscf.census()["bindings"] == 0), net.scscf.census()
    finally:
        await ue.close()


@pytest.mark.parametrize("core", [True], ids=["reginfo"], indirect=True)
async def test_kamailio_pcscf_subscribes_through_our_icscf_and_hears_of_an_rtr(core):
    """Its reg-event SUBSCRIBE enters at our I-CSCF (LIR, TS 24.229 §5.3.2.1), our
    S-CSCF takes it (Kamailio is in the registration's Path) and notifies it; after an
    RTR our S-CSCF's terminated reginfo makes it drop the UE's contact.

    The RTR asks for SERVER_CHANGE: the contact's event is then "deactivated". After a
    PERMANENT_TERMINATION it is "rejected" (TS 24.229 §5.4.1.5, RFC 3680 §5.1.2), an
    event Kamailio's P-CSCF (5.6.3, and its master branch as of 2026) does not know: it
    logs "Unknown Event rejected" and keeps the contact until it expires."""
    net, kam = core
    sub = net.subscribers[1]
    ue = await _ue_behind(net, kam, sub)
    try:
        res = await ue.register(10)
        assert res.ok, (res, kam.tail())
        assert await eventually(lambda: net.scscf.census()["subscriptions"] == 1), kam.tail()
        sip = net.trace.messages("sip")
        subscribe = next(r for r in sip if r.summary.startswith("SUBSCRIBE"))
        assert subscribe.dst_name == "I-CSCF" and subscribe.src[1] == kam.sip_port
        (lir,) = diameter(net, "LIR")
        assert lir.diameter["public_identity"] == sub.impus[0]
        assert diameter(net, "LIA")[0].diameter.get("result_code") == 2001

        def notify_answers() -> list[str]:
            return [
                r.summary
                for r in net.trace.messages("sip")
                if r.dst_name == "S-CSCF" and "NOTIFY" in dict(r.headers).get("CSeq", "")
            ]

        assert await eventually(lambda: len(notify_answers()) == 1), kam.tail()
        assert notify_answers()[0].startswith("200"), kam.tail()
        assert kam.contacts() == 1

        result = await net.hss.deregister_impi(sub.impi, reason=cx.ReasonCode.SERVER_CHANGE)
        assert result.get("ok"), result
        assert await eventually(lambda: len(notify_answers()) == 2), kam.tail()
        assert notify_answers()[1].startswith("200"), kam.tail()
        assert await eventually(lambda: kam.contacts() == 0), kam.tail()
        assert net.scscf.census()["subscriptions"] == 0
    finally:
        await ue.close()
