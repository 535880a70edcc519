"""Interoperability: our UE, P-CSCF, S-CSCF and HSS with Kamailio's IMS I-CSCF (5.6,
Debian's `kamailio-ims-modules`) in place of ours, over real UDP and Diameter on
loopback.

What it checks against the real peer: our HSS's CEA and UAA (a first registration's
Server-Capabilities, then the assigned Server-Name; TS 29.228 §6.1.1) as Kamailio's
cdp and ims_icscf take them, and our S-CSCF as the registrar behind an I-CSCF of
another make: the REGISTERs it relays (its Via and Route, our P-CSCF's Path kept),
the 401 and 200 it relays back, and a de-registration through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imsaka.network import Network
from imsaka.ports import free_port
from imsaka.ue.client import UeClient
from tests.e2e.kamailio import KamailioIcscf, available, core_with, diameter
from tests.polling import eventually

pytestmark = pytest.mark.slow

HOME = "home1.net"


@pytest.fixture
async def core(tmp_path) -> AsyncIterator[tuple[Network, KamailioIcscf]]:
    """Our HSS, S-CSCF and P-CSCF; Kamailio as the I-CSCF the P-CSCF routes to.

    Kamailio resolves names with the system's resolver (no DNS here), so our S-CSCF's
    Server-Name, which the UAA names and Kamailio relays to, is `localhost` (as the
    HSS's Diameter identity is, `kamailio._peering`)."""
    assert available(), ".ci/run installs kamailio, kamailio-ims-modules, kamailio-presence-modules"
    hss_port = free_port(udp=False, tcp=True)
    scscf_port = free_port()
    server_name = f"sip:localhost:{scscf_port}"
    kam = KamailioIcscf(tmp_path / "kamailio", hss_port=hss_port, realm=HOME, scscfs=(server_name,))
    extra = {
        "pcscf": {"routes": [{"domain": HOME, "icscf": kam.name}]},
        # ours starts too (Network always does) but no REGISTER reaches it; its S-CSCF
        # list is what the P-CSCF trusts requests to UEs from (its reg-event NOTIFYs)
        "icscf": {"scscfs": [{"name": server_name, "address": "127.0.0.1", "port": scscf_port}]},
        "scscf": {"port": scscf_port, "server_name": server_name},
    }
    async with core_with(kam, extra, seed=2612) as net:
        yield net, kam


def _sip(net: Network, src: str, dst: str, start: str) -> list:
    return [
        r
        for r in net.trace.messages("sip")
        if r.src_name == src and r.dst_name == dst and r.summary.startswith(start)
    ]


async def test_registration_and_deregistration_through_kamailio_icscf(core):
    net, kam = core
    sub = net.subscribers[0]
    ue = UeClient(net.ue_config(sub), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.protected, (res, kam.tail())
        assert res.associated_uris == tuple(f"<{u}>" for u in sub.impus)
        # Kamailio asked our HSS (UAR from its Diameter identity) and relayed both
        # REGISTERs to our S-CSCF, our P-CSCF's Path kept
        uars = diameter(net, "UAR")
        assert uars and uars[0].diameter["user_name"] == sub.impi
        assert uars[0].diameter["public_identity"] == sub.impus[0]
        first = diameter(net, "UAA")[0].diameter
        assert first.get("experimental_result_code") == 2001  # DIAMETER_FIRST_REGISTRATION
        to_scscf = _sip(net, f"127.0.0.1:{kam.sip_port}", "S-CSCF", "REGISTER")
        assert len(to_scscf) == 2
        headers = dict(to_scscf[0].headers)
        assert headers["Path"].startswith("<sip:term@")
        assert f"127.0.0.1:{kam.sip_port}" in to_scscf[0].headers[0][1]  # its Via on top
        sar = diameter(net, "SAR")
        assert [r.diameter["server_assignment_type"] for r in sar] == ["REGISTRATION"]
        assert sar[0].diameter["server_name"] == net.config.scscf.server_name
        assert net.pcscf.stats()["sa_sets"] == 1
        assert await ue.wait_subscribed(5)  # the UE's reg event, from our S-CSCF

        res = await ue.reregister(10)
        assert res.ok and res.protected, (res, kam.tail())
        # the S-CSCF took it without a new AKA run (integrity-protected="yes")
        assert len(diameter(net, "MAR")) == 1

        res = await ue.deregister(10)
        assert res.ok, (res, kam.tail())
        assert diameter(net, "SAR")[-1].diameter["server_assignment_type"] == (
            "USER_DEREGISTRATION"
        )
        stats = net.pcscf.stats
        assert await eventually(
            lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0
        ), stats()
    finally:
        await ue.close()
