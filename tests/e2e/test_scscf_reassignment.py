"""A registered user moves to another S-CSCF, through the whole core on loopback: UE,
P-CSCF, I-CSCF, HSS and two S-CSCFs of their own Server-Names (scscf1, scscf2).

The I-CSCF loses its way to scscf1 (a partition: scscf1 runs on, its Diameter to the
HSS up); the UE's next re-REGISTER times out there, the I-CSCF asks the HSS with
capabilities and sends it to scscf2 (TS 24.229 §5.3.1.2), which challenges it (it
holds nothing of the user): a new AKA run and a new SA set. The HSS tells scscf1 with
an RTR NEW_SERVER_ASSIGNED (TS 29.229 §6.3.17); scscf1 lets the registration go with
no SAR, its subscribers told to subscribe again (RFC 6665 "deactivated"); the P-CSCF,
whose 200 OK came with scscf2's Service-Route, moves its subscription there at once.

Then the operator de-registers the user: scscf2's NOTIFYs reach the P-CSCF and the UE,
the SAs go. Before, the HSS switched S-CSCF silently, scscf1 kept the registration
and both subscriptions (the network's de-registration at scscf2 reached nobody: the
P-CSCF kept the UE's SAs and the UE took itself for registered), and when scscf1's
binding lapsed its TIMEOUT_DEREGISTRATION SAR made the user not registered at the
HSS while scscf2 served it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imsaka.cscf.scscf import ScscfServer
from imsaka.hss.models import RegState
from imsaka.network import Network, NetworkOptions
from imsaka.ports import free_port
from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from imsaka.ue.core import UeState
from tests.polling import eventually

pytestmark = pytest.mark.slow

SCSCF2 = "scscf2.home1.net"


class TwoScscfs(Network):
    """The core with a second S-CSCF of its own Server-Name, after the first in the
    I-CSCF's list and the HSS's pool (`start_second` starts it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.second_port = free_port("127.0.0.1", udp=True, tcp=True)
        self.second_name = f"sip:{SCSCF2}:{self.second_port}"
        self.second: ScscfServer | None = None

    def build_config(self) -> dict:
        doc = super().build_config()
        doc["network"]["hosts"][SCSCF2] = "127.0.0.1"
        doc["icscf"]["scscfs"].append(
            {"name": self.second_name, "address": "127.0.0.1", "port": self.second_port}
        )
        hosts = (doc["icscf"]["diameter"]["host"], doc["scscf"]["diameter"]["host"], SCSCF2)
        doc["hss"]["peers"] = list(hosts)
        return doc

    async def start_second(self) -> None:
        cfg = self.config
        first = cfg.scscf
        self.second = ScscfServer(
            replace(
                first,
                name=SCSCF2,
                port=self.second_port,
                server_name=self.second_name,
                diameter=replace(first.diameter, host=SCSCF2),
            ),
            observers=tuple(self._observers),
            network=cfg.network,
        )
        await self.second.start()
        await self.second.node.wait_open("hss.home1.net", timeout=5)

    async def stop(self) -> None:
        if self.second is not None:
            await self.second.stop()
            self.second = None
        await super().stop()


def cut_icscf_from(net: Network, port: int) -> dict[str, int]:
    """The I-CSCF's datagrams to `port` (the first S-CSCF) are lost from now on, and
    its transactions time out 10 times sooner (Timer F 3.2 s, not 32 s)."""
    lost = {"n": 0}
    for transport in net.icscf.endpoint.transports:
        if transport.name != "udp":
            continue
        sendto = transport._transport.sendto

        def dropping(data, addr=None, _send=sendto):
            if addr is not None and addr[1] == port:
                lost["n"] += 1
                return None
            return _send(data, addr)

        transport._transport.sendto = dropping
    fast = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
    net.icscf.endpoint.layer.config = fast
    return lost


async def test_a_user_moved_to_another_scscf_is_served_there_and_heard_of(subscribers):
    net = TwoScscfs(subscribers, NetworkOptions(visited=False))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0], recovery_base_time=1), observers=[net.trace])
    try:
        await net.start_second()
        await ue.start()
        first, second = net.scscf.scscf.core, net.second.scscf.core
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        assert first.registrations and not second.registrations
        assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)

        lost = cut_icscf_from(net, net.config.scscf.port)
        res = await ue.reregister(30)
        assert res.ok, res
        assert lost["n"] >= 1 and net.icscf.icscf.counters["scscf_retry"] >= 1
        assert second.registrations
        view = await net.hss.store.get_subscriber(subscribers[0].impi)
        assert view.scscf_name == net.second_name

        # scscf1 was told and let the registration go, without a SAR
        assert await eventually(lambda: not first.registrations, 5)
        assert first.counters["rtr_removed"] >= 1
        assert net.hss.service.counters["rtr_new_server_sent"] == 1
        # the P-CSCF's subscription moved to scscf2 at once; the UE's follows once
        # scscf1 ended it ("deactivated")
        assert net.pcscf.core.counters["reg-subscription-moved"] == 1
        assert await eventually(lambda: ue.subscribed and ue.core.subscription is not None, 10)
        assert await eventually(
            lambda: len(net.second.scscf.subscriptions.of_impu(ue.config.impu)) == 2, 10
        )
        assert ue.core.state is UeState.REGISTERED
        view = await net.hss.store.get_subscriber(subscribers[0].impi)
        assert {u.reg_state for u in view.impus} == {RegState.REGISTERED}

        # the operator ends the registration: heard by the P-CSCF and the UE
        result = await net.hss.deregister_impu(ue.config.impu)
        assert result.get("ok"), result
        assert await ue.wait_network_deregistration(5) == "rejected"
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 40)
    finally:
        await ue.close()
        await net.stop()
