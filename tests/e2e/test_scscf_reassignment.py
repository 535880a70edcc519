"""A registered user moves to another S-CSCF, through the whole core on loopback: UE,
P-CSCF, I-CSCF, HSS and two S-CSCFs of their own Server-Names (scscf1, scscf2).

The I-CSCF loses its way to scscf1 (a partition: scscf1 runs on, its Diameter to the
HSS up); the UE's next re-REGISTER goes unanswered there, and after the I-CSCF's
`scscf_timeout` (long before the UE's Timer F) it asks the HSS with capabilities and
sends it to scscf2 (TS 24.229 §5.3.1.2), which challenges it (it
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

import pytest

from imsaka.hss.models import RegState
from imsaka.network import NetworkOptions
from imsaka.ue.client import UeClient
from imsaka.ue.core import UeState
from tests.e2e.two_scscfs import Partition, TwoScscfs
from tests.polling import eventually

pytestmark = pytest.mark.slow


async def test_a_user_moved_to_another_scscf_is_served_there_and_heard_of(subscribers):
    # (the I-CSCF gives a silent S-CSCF 2 s, not the product's 8)
    options = NetworkOptions(visited=False, extra={"icscf": {"scscf_timeout": 2.0}})
    net = TwoScscfs(subscribers, options)
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    try:
        await net.start_second()
        await ue.start()
        first, second = net.scscf.scscf.core, net.second.scscf.core
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        assert first.registrations and not second.registrations
        assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)

        partition = Partition()
        partition.install(net)
        partition.cut(net.config.scscf.port)
        res = await ue.reregister(30)
        assert res.ok, res
        counters = net.icscf.icscf.counters
        # (once: the HSS names scscf2, which holds the challenge, for its answer; before
        # 2026-11-29 it named scscf1 until scscf2's SAR, and the answer waited out
        # scscf1's silence too)
        assert partition.lost >= 1 and counters["scscf_silent"] == counters["scscf_retry"] == 1
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


async def test_the_other_device_of_a_moved_subscription_follows_it(subscribers):
    """user1's subscription has a tablet IMPI sharing its IMPUs (TS 23.228 §4.3.3.4);
    phone and tablet are registered at scscf1. The phone's re-REGISTER moves the
    subscription to scscf2 (one S-CSCF per subscription). The HSS's RTR
    NEW_SERVER_ASSIGNED names the phone as User-Name: scscf1 lets the phone's contact go
    quietly and tells the tablet `deactivated` (TS 24.229 §5.4.1.5), so the tablet
    registers afresh, which takes it to scscf2. The phone hears nothing of the tablet's
    end and keeps its registration and SAs. Before 2026-11-29 (ninth session) the
    tablet's registration went quietly too: registered nowhere, it took itself for
    registered until its next refresh (lifecycle_chaos --devices 2 --scscf-moves)."""
    from dataclasses import replace

    from imsaka.hss.subscriber import validate_subscriber

    options = NetworkOptions(visited=False, extra={"icscf": {"scscf_timeout": 2.0}})
    net = TwoScscfs(subscribers, options)
    await net.start()
    phone_sub = subscribers[0]
    tablet_sub = replace(phone_sub, impi="user1_tablet@home1.net")
    spec = validate_subscriber(
        impi=tablet_sub.impi,
        impus=list(tablet_sub.impus),
        k=tablet_sub.k.hex(),
        opc=tablet_sub.opc.hex(),
    )
    await net.hss.store.add_impi(phone_sub.impi, spec)
    phone = UeClient(net.ue_config(phone_sub), observers=[net.trace])
    tablet = UeClient(net.ue_config(tablet_sub), observers=[net.trace])
    try:
        await net.start_second()
        await phone.start()
        await tablet.start()
        first, second = net.scscf.scscf.core, net.second.scscf.core
        for ue in (phone, tablet):
            assert (await ue.register(10)).ok
            assert await ue.wait_subscribed(5)
        assert first.registrations and not second.registrations

        partition = Partition()
        partition.install(net)
        partition.cut(net.config.scscf.port)
        res = await phone.reregister(30)
        assert res.ok, res
        assert net.hss.service.counters["rtr_new_server_sent"] == 1

        # the tablet is told to register again, and does so at scscf2
        assert await tablet.wait_network_deregistration(10) == "deactivated"
        assert await eventually(lambda: tablet.core.state is UeState.REGISTERED, 20)
        assert await eventually(lambda: not first.registrations, 5)
        (record,) = second.registrations.values()
        owners = {c.owner(record.impi) for c in record.contacts.values()}
        assert owners == {phone_sub.impi, tablet_sub.impi}
        assert phone.core.state is UeState.REGISTERED and not phone.network_event
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 2, 40)
        view = await net.hss.store.get_subscriber(phone_sub.impi)
        assert view.scscf_name == net.second_name
        # no further move: the tablet's registration found the subscription at scscf2
        assert net.hss.service.counters["rtr_new_server_sent"] == 1

        # both keep refreshing at scscf2 over their own SAs, unchallenged
        for ue in (phone, tablet):
            res = await ue.reregister(10)
            assert res.ok and res.protected, res
    finally:
        await tablet.close()
        await phone.close()
        await net.stop()
