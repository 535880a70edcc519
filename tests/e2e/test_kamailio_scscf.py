"""Interoperability: our UE, P-CSCF, I-CSCF and HSS with Kamailio's IMS S-CSCF (5.6,
Debian's `kamailio-ims-modules`) in place of ours, over real UDP and Diameter on loopback.

What it checks against the real peer rather than our reading of it: our HSS's CEA, MAA
(AKA vector, resynchronisation from RAND‖AUTS), SAA with User-Data and RTR as Kamailio's
cdp, ims_auth and ims_registrar_scscf take them (PITFALLS.md, "What Kamailio's IMS
S-CSCF needs"); our P-CSCF's sec-agree around another S-CSCF's 401 (ck/ik taken out,
qop=auth kept), its reg-event subscription (RFC 3680) to a notifier of another make, and
the release of the UE's SAs on de-registration and on a network-initiated one (TS 24.229
§5.2.3, §5.1.1.7; TS 29.228 §6.1.3); our UE's IMS AKA with digest qop=auth (RFC 3310).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from imsaka.network import Network
from imsaka.ports import free_port
from imsaka.ue.client import UeClient
from tests.e2e.kamailio import SCSCF_HOST, KamailioScscf, available, core_with, diameter
from tests.polling import eventually

pytestmark = pytest.mark.slow

HOME = "home1.net"


@pytest.fixture
async def core(tmp_path) -> AsyncIterator[tuple[Network, KamailioScscf]]:
    """Our HSS, I-CSCF and P-CSCF; Kamailio as the S-CSCF the I-CSCF picks.

    Kamailio resolves names with the system's resolver (no DNS here), so the P-CSCF's
    host, which the Path and Record-Route its NOTIFYs to the UE follow, is `localhost`
    (as the HSS's Diameter identity is, `kamailio._peering`)."""
    assert available(), ".ci/run installs kamailio, kamailio-ims-modules, kamailio-presence-modules"
    hss_port = free_port(udp=False, tcp=True)
    kam = KamailioScscf(tmp_path / "kamailio", hss_port=hss_port, realm=HOME)
    extra = {
        "pcscf": {"name": "localhost"},
        # ours starts too (Network always does) but no REGISTER reaches it
        "icscf": {"scscfs": [{"name": kam.name, "address": "127.0.0.1", "port": kam.sip_port}]},
    }
    async with core_with(kam, extra, seed=2611) as net:
        yield net, kam


def _ue(net: Network, index: int, **overrides) -> UeClient:
    # The realm of the first, empty Authorization is the home domain (TS 24.229
    # §5.1.1.2.1): Kamailio reads the IMPI from the credentials of that realm.
    sub = net.subscribers[index]
    return UeClient(net.ue_config(sub, registrar="", **overrides), observers=[net.trace])


async def test_ims_aka_registration_through_kamailio(core):
    net, kam = core
    ue = _ue(net, 0)
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.protected, (res, kam.tail())
        # Kamailio built its Service-Route and took the implicit set from our SAA's
        # User-Data (three IMPUs, registered one first)
        assert res.service_route == (f"<sip:orig@{SCSCF_HOST}:{kam.sip_port};lr>",)
        assert res.associated_uris == tuple(f"<{u}>" for u in net.subscribers[0].impus)
        mar, maa = diameter(net, "MAR"), diameter(net, "MAA")
        assert len(mar) == 1 and maa[0].diameter.get("result_code") == 2001
        assert mar[0].diameter["user_name"] == net.subscribers[0].impi
        sar, saa = diameter(net, "SAR"), diameter(net, "SAA")
        assert [r.diameter["server_assignment_type"] for r in sar] == ["REGISTRATION"]
        assert saa[0].diameter.get("result_code") == 2001
        assert sar[0].diameter["server_name"] == kam.name
        # the 401 reached the UE without ck/ik, with Kamailio's qop=auth, which the UE's
        # challenge response used
        to_ue = [r for r in net.trace.messages("sip") if r.dst_name == "UE"]
        challenge = dict(next(r for r in to_ue if r.summary.startswith("401")).headers)
        assert "qop=" in challenge["WWW-Authenticate"]
        assert "ck=" not in challenge["WWW-Authenticate"]
        assert "ik=" not in challenge["WWW-Authenticate"]
        responses = [
            dict(r.headers).get("Authorization", "")
            for r in net.trace.messages("sip")
            if r.src_name == "UE" and r.summary.startswith("REGISTER")
        ]
        assert "nc=00000001" in responses[-1] and "cnonce=" in responses[-1]
        assert net.pcscf.stats()["sa_sets"] == 1
        # both reg-event subscriptions hold at Kamailio: the P-CSCF's (TS 24.229
        # §5.2.3) and the UE's, whose NOTIFY came to it over the SAs
        assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)
        assert await ue.wait_subscribed(5)
    finally:
        await ue.close()


async def test_reregistration_and_deregistration_through_kamailio(core):
    net, kam = core
    ue = _ue(net, 1)
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        # Kamailio challenges every REGISTER: a re-registration is a new AKA run and
        # a new SA set (TS 33.203 §7.4), the old one gone once the new one carries
        res = await ue.reregister(10)
        assert res.ok and res.protected, (res, kam.tail())
        assert len(diameter(net, "MAR")) == 2
        assert [r.diameter["server_assignment_type"] for r in diameter(net, "SAR")] == [
            "REGISTRATION",
            "RE_REGISTRATION",
        ]
        stats = net.pcscf.stats
        assert await eventually(lambda: stats()["sa_sets"] == 1)
        res = await ue.deregister(10)
        assert res.ok, (res, kam.tail())
        assert diameter(net, "SAR")[-1].diameter["server_assignment_type"] == (
            "USER_DEREGISTRATION"
        )
        # the 200 to the de-REGISTER left over the SAs, then they went
        last = [r for r in net.trace.messages("sip") if r.dst_name == "UE"][-1]
        assert last.summary.startswith("200") and last.esp_spi is not None
        assert await eventually(
            lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0
        ), stats()
    finally:
        await ue.close()


async def test_sqn_resynchronisation_through_kamailio(core):
    """The ISIM is ahead of our HSS: the UE answers with AUTS, Kamailio asks our HSS
    again with RAND‖AUTS in SIP-Authorization, our HSS checks MAC-S and moves SQN."""
    net, kam = core
    ue = _ue(net, 2, sqn=(1 << 20) << 5)
    await ue.start()
    try:
        res = await ue.register(15)
    finally:
        await ue.close()
    assert res.ok and res.protected, (res, kam.tail())
    auths = [
        dict(r.headers).get("Authorization", "")
        for r in net.trace.messages("sip")
        if r.src_name == "UE"
    ]
    assert any("auts=" in a for a in auths)
    maas = diameter(net, "MAA")
    assert len(maas) == 2 and all(r.diameter.get("result_code") == 2001 for r in maas)


async def test_rtr_from_our_hss_deregisters_the_ue_through_kamailio(core):
    """Network-initiated de-registration: our HSS's RTR to Kamailio, Kamailio's
    terminated reg-event NOTIFYs to our P-CSCF and UE, the UE's SAs released."""
    net, kam = core
    ue = _ue(net, 0)
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        stats = net.pcscf.stats
        started = time.monotonic()
        out = await net.hss.deregister_impi(net.subscribers[0].impi)
        assert out["ok"] and out["result"] == 2001, out
        # Kamailio tells both with reginfo "terminated" under Subscription-State
        # "active": the SAs go once the UE answered its NOTIFY, not at the 32 s
        # transaction lifetime the P-CSCF waits at most
        assert await eventually(
            lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0, timeout=10
        ), (stats(), kam.tail())
        assert time.monotonic() - started < 10
        assert net.pcscf.core.counters["network-deregistered"] == 1
        # (its registrations carry no <contact>, so no "deactivated"/"rejected" event)
        assert await ue.wait_network_deregistration(2) == "terminated"
    finally:
        await ue.close()
