"""Registration lifecycle across the whole core: protected re-registration without a
new AKA run (TS 24.229 §5.4.1.2.2), a re-registration the S-CSCF challenges
(new SA set, TS 33.203 §7.4), de-registration over the SAs with the SAs removed only
after the 200 OK went out, several UEs at once with nothing left behind."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.network import Network, NetworkOptions, make_subscribers
from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow

# UEs registering at once. The HSS store answers 5012 under more concurrent Cx load on
# SQLite (pool checkout outside a task, reported to the HSS engineer); 5 exercise the
# interleaving without that.
N_UES = 5


async def test_reregistration_without_new_aka_then_deregistration(home_network, subscribers):
    net = home_network
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        mars = lambda: sum(1 for r in net.trace.messages("diameter") if r.summary.startswith("MAR"))  # noqa: E731
        before = mars()
        res = await ue.reregister(10)
        assert res.ok and res.protected, res
        assert mars() == before  # no new vector spent
        re_reg = [r for r in net.trace.messages("sip") if r.src_name == "UE"][-1]
        assert re_reg.esp_spi is not None
        assert net.pcscf.stats()["sa_sets"] == 1
        res = await ue.deregister(10)
        assert res.ok, res
        last = [r for r in net.trace.messages("sip") if r.dst_name == "UE"][-1]
        assert last.summary.startswith("200") and last.esp_spi is not None  # 200 went out protected
        stats = net.pcscf.stats
        assert await eventually(lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0)
    finally:
        await ue.close()


async def test_challenged_reregistration_gets_a_new_sa_set(subscribers):
    net = Network(subscribers, NetworkOptions(extra={"scscf": {"reauthenticate": "always"}}))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[1]), observers=[net.trace])
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        first = {s.id for s in ue.table.sets()}
        pcscf_first = {s.pcscf_spis for s in net.pcscf.table.sets()}
        mars = sum(1 for r in net.trace.messages("diameter") if r.summary.startswith("MAR"))
        res = await ue.reregister(10)
        assert res.ok and res.protected, res
        live = lambda: [s for s in ue.table.sets() if s.state.value != "removed"]  # noqa: E731
        # the old one went: the 200 OK arrived over the new set
        assert await eventually(lambda: len(live()) == 1)
        assert {s.id for s in live()} - first  # a new set is established
        # The P-CSCF serves exactly the new set (new SPIs, same protected ports); the
        # old one stays out of service for the transactions that may still be open over
        # it (TS 33.203 §7.4, `pcscf.SUPERSEDED_DRAIN`).
        pcscf_sets = [s for s in net.pcscf.table.sets() if s not in net.pcscf._held.values()]
        assert len(pcscf_sets) == 1 and pcscf_sets[0].state.value == "established"
        assert net.pcscf.census()["sa_sets_in_grace"] == 1
        assert pcscf_sets[0].pcscf_spis not in pcscf_first
        assert pcscf_sets[0].pcscf_ports == live()[0].pcscf_ports
        # A new AKA run (reauthenticate = "always"): a second 401 reached the UE.
        challenges = [
            r
            for r in net.trace.messages("sip")
            if r.summary.startswith("401") and r.dst_name == "UE"
        ]
        assert len(challenges) == 2
        assert mars <= sum(1 for r in net.trace.messages("diameter") if r.summary.startswith("MAR"))
        assert net.pcscf.stats()["registrations"] == 1
        assert (await ue.deregister(10)).ok
    finally:
        await ue.close()
        await net.stop()


async def test_many_ues_register_and_deregister_leaving_nothing_behind():
    subs = make_subscribers(N_UES, seed=7)
    net = Network(subs)
    await net.start()
    # the sets held for the de-REGISTERs' retransmissions go 1 s after their 200 OK
    net.pcscf.core.dereg_grace = 1.0
    ues = [UeClient(net.ue_config(s)) for s in subs]
    try:
        for u in ues:
            await u.start()
        results = await asyncio.gather(*(u.register(20) for u in ues))
        assert all(r.ok and r.protected for r in results), [r for r in results if not r.ok]
        assert net.pcscf.stats()["sa_sets"] == N_UES
        results = await asyncio.gather(*(u.deregister(20) for u in ues))
        assert all(r.ok for r in results)
        stats = net.pcscf.stats
        assert await eventually(lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0)
        census = net.pcscf.census()
        held = census["sa_sets_in_grace"]
        assert held == census["sas_in_grace_records"] <= N_UES, census
        # the held sets' SPIs stay allocated (no new set gets them) until they go
        assert net.pcscf.table.spis.live_count == 2 * held
        for _ in range(100):
            if not net.pcscf.table.sets():
                break
            await asyncio.sleep(0.05)
        assert net.pcscf.census()["sas_in_grace_records"] == 0
        assert net.pcscf.table.spis.live_count == 0 and not net.pcscf.table.sets()
        assert all(not u.table.sets() for u in ues)
    finally:
        for u in ues:
            await u.close()
        await net.stop()


async def test_registration_completes_with_20_percent_loss_on_gm(subscribers):
    """Issue 7: 20% random UDP loss on the Gm leg (both directions, clear and ESP);
    the transaction retransmissions (RFC 3261 §17.1.2) complete the registration."""
    import random

    net = Network(subscribers)
    await net.start()
    rng = random.Random(42)
    dropped = {"n": 0}

    def lossy(send):
        def wrapper(*args, **kwargs):
            if rng.random() < 0.2:
                dropped["n"] += 1
                return True
            return send(*args, **kwargs)

        return wrapper

    net.pcscf.send_clear = lossy(net.pcscf.send_clear)  # responses to UEs only
    net.pcscf.send_protected = lossy(net.pcscf.send_protected)
    ues = [UeClient(net.ue_config(s)) for s in subscribers]
    try:
        for u in ues:
            await u.start()
            u.send_clear = lossy(u.send_clear)
            u.send_protected = lossy(u.send_protected)
        results = await asyncio.gather(*(u.register(60) for u in ues))
        assert all(r.ok and r.protected for r in results), results
        assert dropped["n"] > 0
    finally:
        for u in ues:
            await u.close()
        await net.stop()


async def test_sqn_out_of_sync_resynchronises(home_network, subscribers):
    """The ISIM is ahead of the HSS (a restored HSS database): the UE answers the first
    challenge with AUTS (RFC 3310 §3.4), the S-CSCF resynchronises through MAR, and the
    second challenge succeeds."""
    net = home_network
    ue = UeClient(net.ue_config(subscribers[2], sqn=(1 << 20) << 5), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(15)
    finally:
        await ue.close()
    assert res.ok and res.protected, res
    sip = [r for r in net.trace.messages("sip") if r.src_name == "UE"]
    auths = [dict(r.headers).get("Authorization", "") for r in sip]
    assert any("auts=" in a for a in auths)
    assert sum(1 for r in net.trace.messages("diameter") if r.summary.startswith("MAR")) == 2


async def test_ue_vanishing_after_401_leaves_no_sa(subscribers):
    """The temporary SA set of a 401 that is never answered goes after its lifetime."""
    net = Network(subscribers, NetworkOptions(extra={"pcscf": {"temporary_sa_lifetime": 1}}))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0]))
    await ue.start()
    ue.send_protected = lambda sa, data: True  # the UE vanishes: phase 2 never leaves
    try:
        res = await ue.register(timeout=0.5)
        assert not res.ok
        assert net.pcscf.stats()["sa_sets"] == 1
        stats = net.pcscf.stats
        assert await eventually(
            lambda: stats()["sa_sets"] == 0 and stats()["registrations"] == 0, timeout=6.0
        ), stats()
    finally:
        await ue.close()
        await net.stop()


async def test_ue_refreshes_before_expiry(subscribers):
    """TS 24.229 §5.1.1.4.1: re-REGISTER at half a short granted expiry, over the SAs."""
    net = Network(subscribers, NetworkOptions(extra={"scscf": {"min_expires": 1}}))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[1], expires=4), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.expires == 4, res
        (first,) = ue.table.sets()
        lifetime_before = first.expires_at
        await asyncio.sleep(3.0)

        # the UE's reg-event SUBSCRIBE/NOTIFY (§5.1.1.3) share the trace: REGISTERs only
        def register_cseq(r) -> bool:
            return any(k.lower() == "cseq" and v.endswith("REGISTER") for k, v in r.headers)

        from_ue = [r for r in net.trace.messages("sip") if r.src_name == "UE" and register_cseq(r)]
        assert len(from_ue) == 3 and from_ue[-1].esp_spi is not None  # the refresh, protected
        oks = [
            r
            for r in net.trace.messages("sip")
            if r.dst_name == "UE" and r.summary.startswith("200") and register_cseq(r)
        ]
        assert len(oks) == 2
        assert net.pcscf.stats()["registrations"] == 1
        # the same set, its lifetime moved with the refresh (§5.1.1.4.1: + 30 s)
        assert ue.table.sets() == [first] and first.expires_at >= lifetime_before + 1.5
    finally:
        await ue.close()
        await net.stop()


async def test_home_pcscf_routes_straight_to_the_scscf(subscribers):
    """Seed step 3: in the home network the P-CSCF may send the REGISTER directly to the
    S-CSCF ([[pcscf.routes]] scscf = ...), with no I-CSCF hop and no UAR."""
    net = Network(subscribers, NetworkOptions(pcscf_to_scscf=True))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.protected, res
        hops = {(r.src_name, r.dst_name) for r in net.trace.messages("sip")}
        assert ("P-CSCF", "S-CSCF") in hops and not any("I-CSCF" in h for h in hops)
        assert not [r for r in net.trace.messages("diameter") if r.summary.startswith("UAR")]
    finally:
        await ue.close()
        await net.stop()


async def test_ipv6_loopback_visited(subscribers):
    """The seed's UE is on IPv6: the whole core on ::1, SAs over IPv6, de-registration."""
    net = Network(subscribers, NetworkOptions(host="::1", visited=True))
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.protected, res
        first = next(r for r in net.trace.messages("sip"))
        assert first.src[0] == "::1" and "[::1]" in dict(first.headers)["Via"]
        assert (await ue.deregister(10)).ok
    finally:
        await ue.close()
        await net.stop()


async def test_network_initiated_deregistration_removes_the_sas(home_network, subscribers):
    """RTR from the HSS (TS 29.228 §6.1.3) → the S-CSCF ends the registration and NOTIFYs
    the reg event as terminated → the P-CSCF, subscribed since the 200 OK (TS 24.229
    §5.2.3), removes the UE's SAs and registration."""
    net = home_network
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        for _ in range(50):  # the SUBSCRIBE goes out after the 200 OK
            if net.pcscf.core.counters["reg-subscribed"]:
                break
            await asyncio.sleep(0.02)
        # The SUBSCRIBE's 200 (only our Via in it) is taken, not dropped as a stray answer.
        assert net.pcscf.core.counters["reg-subscribed"] == 1
        assert not net.pcscf.core.drops
        assert net.pcscf.stats()["sa_sets"] == 1
        result = await net.hss.deregister_impi(subscribers[0].impi)
        assert result.get("ok"), result
        for _ in range(100):
            if net.pcscf.stats()["sa_sets"] == 0:
                break
            await asyncio.sleep(0.02)
        stats = net.pcscf.stats()
        assert stats["sa_sets"] == 0 and stats["registrations"] == 0, stats
        assert stats.get("network-deregistered") == 1
        notifies = [r for r in net.trace.messages("sip") if r.summary.startswith("NOTIFY")]
        assert any("terminated" in dict(r.headers).get("Subscription-State", "") for r in notifies)
    finally:
        await ue.close()


async def test_pcscf_expires_a_lapsed_registration_on_its_own(subscribers):
    """Without the reg-event subscription ([pcscf].subscribe_reg_event = false) the
    P-CSCF still ends a registration the UE stopped refreshing: at the granted expiry
    (+30 s, the SA lifetime margin of TS 24.229 §5.1.1.5.1) the SAs and the
    registration go. The core is sans-I/O, so the test hands it a later `now`."""
    net = Network(
        subscribers,
        NetworkOptions(
            extra={"scscf": {"min_expires": 1}, "pcscf": {"subscribe_reg_event": False}}
        ),
    )
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0], expires=5), observers=[net.trace])
    try:
        await ue.start()
        res = await ue.register(10)
        assert res.ok and res.expires == 5, res
        await asyncio.sleep(0.1)
        # the P-CSCF subscribes to nothing (the UE's own SUBSCRIBE passes through it)
        assert not [
            r
            for r in net.trace.messages("sip")
            if r.summary.startswith("SUBSCRIBE")
            and any(k.lower() == "from" and "pcscf" in v for k, v in r.headers)
        ]
        assert not net.pcscf.core.subscriptions
        assert net.pcscf.stats()["sa_sets"] == 1
        now = asyncio.get_running_loop().time()
        net.pcscf._execute(net.pcscf.core.handle_timer(now + 4.0), now + 4.0)
        assert net.pcscf.stats()["registrations"] == 1  # not yet
        later = now + 5.0 + 30.0
        net.pcscf._execute(net.pcscf.core.handle_timer(later), later)
        stats = net.pcscf.stats()
        assert stats["sa_sets"] == 0 and stats["registrations"] == 0, stats
    finally:
        await ue.close()
        await net.stop()


async def test_a_reregister_refused_494_by_the_pcscf_registers_anew(home_network, subscribers):
    """A protected re-REGISTER whose Security-Verify is not the Security-Server the
    P-CSCF holds for the set (here the UE's copy altered, as a P-CSCF that lost or
    changed its side of the agreement would see it) is refused 494 over the SAs; the UE
    makes the agreement anew from phase 1 (before: it stopped for good) and ends
    registered over a new set, the old one gone on both sides."""
    from imsaka.ue.core import RegisteringAnew

    net = home_network
    async with UeClient(net.ue_config(subscribers[2]), observers=[net.trace]) as ue:
        assert (await ue.register(10)).ok
        old = {s.id for s in ue.table.sets()}
        pcscf_old = {s.pcscf_spis for s in net.pcscf.table.sets()}
        refused = net.pcscf.core.counters["downgrade-refused"]
        ue.core.security_server = [
            text.replace("q=0.1", "q=0.2") if "q=0.1" in text else text + ";q=0.5"
            for text in ue.core.security_server
        ]
        result = await ue.reregister(10)
        assert result.ok, result
        assert [e for e in result.events if isinstance(e, RegisteringAnew)]
        assert net.pcscf.core.counters["downgrade-refused"] == refused + 1
        answers = [r.summary[:3] for r in net.trace.messages("sip") if r.dst_name == "UE"]
        refusal = answers.index("494")
        assert answers.count("494") == 1 and "401" in answers[refusal:], answers
        live = lambda: [s for s in ue.table.sets() if s.state.value != "removed"]  # noqa: E731
        assert await eventually(lambda: len(live()) == 1)
        assert not {s.id for s in live()} & old
        serving = [s for s in net.pcscf.table.sets() if s not in net.pcscf._held.values()]
        assert len(serving) == 1 and serving[0].pcscf_spis not in pcscf_old
        assert (await ue.reregister(10)).ok
