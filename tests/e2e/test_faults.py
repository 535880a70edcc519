"""Faults of issue 7 through the whole core on loopback (UE → P-CSCF → I-CSCF →
S-CSCF → HSS, IPsec on Gm): a wrong K on the UE, the HSS killed (SIGKILL of a real
``imsaka run hss`` process) and restarted mid-run, the S-CSCF restarted on Redis
bindings, random UDP loss on every SIP leg, a UE that vanishes after the 401.

(SQN out of sync and 20 % loss on Gm alone: tests/e2e/test_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from imsaka.network import Network, NetworkOptions, TestSubscriber, make_subscribers
from imsaka.ue.client import UeClient
from imsaka.ue.core import NETWORK_AUTH_FAILED, RetryScheduled
from tests.polling import eventually

pytestmark = pytest.mark.slow


def count(net: Network, prefix: str, kind: str = "diameter") -> int:
    return sum(1 for r in net.trace.messages(kind) if r.summary.startswith(prefix))


def leftovers(net: Network) -> dict[str, int]:
    """What the core still holds: SA sets, P-CSCF registrations, S-CSCF challenges."""
    p = net.pcscf.stats()
    s = net.scscf.census()
    return {
        "pcscf_sa_sets": p["sa_sets"],
        "pcscf_registrations": p["registrations"],
        "scscf_challenges": s.get("challenges", 0),
    }


@asynccontextmanager
async def _on_redis(redis_url: str, subs: list[TestSubscriber]) -> AsyncIterator[tuple]:
    """The whole core with the S-CSCF's bindings in Redis under a prefix of its own, and
    a UE of `subs[0]` (started): yields (network, UE, restart), `restart()` restarting
    the S-CSCF on that prefix (`restart(crash=True)`: without the drain of a stop asked
    for, so its open challenges are lost). The keys go, and everything stops, after the block."""
    from imsaka.cscf.registrar import RedisBindingStore

    prefix = f"imsaka:e2e:{os.getpid()}:{os.urandom(4).hex()}:"
    net = Network(subs, NetworkOptions(extra={"scscf": {"binding_store": redis_url}}))
    await net.start()
    ue = UeClient(net.ue_config(subs[0]), observers=[net.trace])

    async def restart(crash: bool = False) -> None:
        await net.restart_scscf(RedisBindingStore(redis_url, prefix=prefix), crash=crash)

    try:
        await restart()  # on the test's own prefix
        await ue.start()
        yield net, ue, restart
    finally:
        await ue.close()
        cleanup = RedisBindingStore(redis_url, prefix=prefix)
        await cleanup.clear()
        await cleanup.close()
        await net.stop()


async def test_wrong_k_on_the_ue_is_network_authentication_failed(home_network, subscribers):
    """TS 33.102 §6.3.3 / TS 24.229 §5.1.1.5.3: a UE whose K differs from the HSS's finds
    AUTN's MAC wrong, answers with an empty response and no auts, sets up no SAs and
    stops; the S-CSCF spends the challenge (403) and the core keeps serving."""
    net = home_network
    sub = subscribers[1]
    wrong = TestSubscriber(impi=sub.impi, impus=sub.impus, k=os.urandom(16), opc=sub.opc)
    ue = UeClient(net.ue_config(wrong), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
    finally:
        await ue.close()
    assert not res.ok and res.reason == NETWORK_AUTH_FAILED, res
    assert not ue.table.sets()
    from_ue = [r for r in net.trace.messages("sip") if r.src_name == "UE"]
    assert len(from_ue) == 2
    auth = dict(from_ue[1].headers)["Authorization"]
    assert 'response=""' in auth and "auts" not in auth
    assert count(net, "MAR") == 1 and count(net, "SAR") == 0
    # The S-CSCF answers the empty response with 403 and forgets the challenge; the
    # P-CSCF's temporary set goes once that answer went out (or with its lifetime).
    assert await eventually(
        lambda: any(
            r.summary.startswith("403") for r in net.trace.messages("sip") if r.src_name == "S-CSCF"
        )
    )
    assert await eventually(lambda: net.scscf.census().get("challenges", 0) == 0)
    # The right K registers through the same core.
    good = UeClient(net.ue_config(sub), observers=[net.trace])
    await good.start()
    try:
        res = await good.register(10)
        assert res.ok and res.protected, res
        assert (await good.deregister(10)).ok
    finally:
        await good.close()
    assert await eventually(lambda: leftovers(net)["pcscf_sa_sets"] == 0), leftovers(net)


async def test_hss_killed_and_restarted_mid_run():
    """The HSS runs as its own ``imsaka run hss`` process and is killed with SIGKILL
    while UEs are registered and others register. The I-CSCF answers 480 and the
    S-CSCF 504, both with Retry-After; the UEs wait that long and try again (bounded).
    After the HSS process is started again on the same database, the Diameter clients
    reconnect by themselves and every registration completes — the CSCFs are never
    restarted."""
    subs = make_subscribers(3, seed=77)
    net = Network(
        subs,
        NetworkOptions(
            hss_process=True,
            extra={
                "icscf": {"retry_after": 1, "diameter": {"timeout": 1.0}},
                "scscf": {"retry_after": 1, "diameter": {"timeout": 1.0}},
            },
        ),
    )
    await net.start()
    ues = [UeClient(net.ue_config(s, max_retries=20), observers=[net.trace]) for s in subs]
    cscfs = (net.pcscf, net.icscf, net.scscf)
    try:
        for u in ues:
            await u.start()
        assert (await ues[0].register(15)).ok
        first_pid = net.hss_proc.pid
        assert net.kill_hss() == -9  # SIGKILL: no clean Diameter disconnect
        # During the outage: a new UE registers, a registered one refreshes.
        newcomer = asyncio.create_task(ues[1].register(60))
        refresh = asyncio.create_task(ues[0].reregister(60))
        await asyncio.sleep(3.0)
        assert not newcomer.done() and not refresh.done()
        waits = [e for u in ues[:2] for e in u.events if isinstance(e, RetryScheduled)]
        assert waits and {e.status for e in waits} <= {480, 500, 504}, waits
        assert all(e.after == 1.0 for e in waits)
        await net.start_hss_process()
        assert net.hss_proc.pid != first_pid
        res_new, res_refresh = await asyncio.gather(newcomer, refresh)
        assert res_new.ok and res_new.protected, res_new
        assert res_refresh.ok and res_refresh.protected, res_refresh
        # A UE that starts after the restart registers at once.
        res = await ues[2].register(15)
        assert res.ok and res.protected, res
        assert (net.pcscf, net.icscf, net.scscf) == cscfs  # never restarted
        results = await asyncio.gather(*(u.deregister(15) for u in ues))
        assert all(r.ok for r in results), results
        assert await eventually(lambda: leftovers(net)["pcscf_sa_sets"] == 0), leftovers(net)
        assert leftovers(net) == {
            "pcscf_sa_sets": 0,
            "pcscf_registrations": 0,
            "scscf_challenges": 0,
        }
    finally:
        for u in ues:
            await u.close()
        await net.stop()
    assert net.hss_proc is None


@pytest.mark.redis
# A REGISTER in flight when the old S-CSCF stops must not leave a coroutine never awaited.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("error:coroutine .* was never awaited:RuntimeWarning")
async def test_scscf_restart_with_redis_bindings_keeps_registrations(redis_url):
    """The S-CSCF stores its bindings in Redis before each 200 OK leaves. Restarted, it
    reads them back: the UE's protected re-REGISTER (integrity-protected="yes") is
    accepted without AKA (no MAR, no 401) and the de-registration goes through."""
    async with _on_redis(redis_url, make_subscribers(2, seed=91)) as (net, ue, restart):
        assert (await ue.register(10)).ok
        mars, challenges = count(net, "MAR"), count(net, "401", "sip")
        old = net.scscf
        await restart()
        assert net.scscf is not old
        assert net.scscf.census()["bindings"] >= 1
        res = await ue.reregister(10)
        assert res.ok and res.protected, res
        assert count(net, "MAR") == mars and count(net, "401", "sip") == challenges
        assert count(net, "SAR") >= 2  # REGISTRATION, then RE_REGISTRATION
        assert (await ue.deregister(10)).ok
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0)


# Each datagram the loss below drops, one INFO line (the chaos runner's ladders show
# them: a loss is otherwise seen nowhere, the trace being written below it).
LOSS_LOG = logging.getLogger("lifecycle_chaos.loss")
_USER = re.compile(rb"user\d+_")


def note_lost(who: str, args: tuple) -> None:
    """Log what a lossy `send` of `who` dropped: the SIP start line, CSeq and the
    subscribers it names (`userN_`)."""
    if not LOSS_LOG.isEnabledFor(logging.INFO):
        return
    data = next((bytes(a) for a in args if isinstance(a, (bytes, bytearray, memoryview))), b"")
    head = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")[:80]
    m = re.search(rb"(?im)^CSeq:[ \t]*([^\r\n]*)", data)
    cseq = m.group(1).decode("utf-8", "replace") if m else ""
    users = " ".join(sorted({u.decode() for u in _USER.findall(data)}))
    LOSS_LOG.info("lost %s: %s | %s | %s", who, head, cseq, users)


def _lose_a_fifth(net: Network, ues: list[UeClient], seed: int) -> dict[str, int]:
    """20 % of the UDP datagrams on Gm (clear and ESP, both ways) and on Mw (P-CSCF ⇄
    I-CSCF ⇄ S-CSCF) are lost from now on; returns the count of those lost."""
    rng = random.Random(seed)
    dropped = {"n": 0}

    def lossy(send, who: str = ""):
        def wrapper(*args, **kwargs):
            if rng.random() < 0.2:
                dropped["n"] += 1
                note_lost(who, args)
                return True
            return send(*args, **kwargs)

        return wrapper

    def lossy_socket(transport, who: str) -> None:
        # Loss below the SIP transport (the asyncio datagram socket): the transaction
        # layer sees nothing of it, as with a real lossy link.
        transport._transport.sendto = lossy(transport._transport.sendto, who)

    lossy_socket(net.pcscf.udp, "P-CSCF")  # Gm clear answers and Mw towards the I-/S-CSCF
    net.pcscf.send_protected = lossy(net.pcscf.send_protected, "P-CSCF (ESP)")  # Gm ESP
    for name, server in (
        ("I-CSCF", net.icscf),
        ("S-CSCF", net.scscf),
        *((f"S-CSCF#{n}", s) for n, s in enumerate(net.scscf_others, 2)),
    ):
        for transport in server.endpoint.transports:
            if transport.name == "udp":
                lossy_socket(transport, name)
    for u in ues:
        name = getattr(u, "name", "UE")
        u.send_clear = lossy(u.send_clear, name)
        u.send_protected = lossy(u.send_protected, f"{name} (ESP)")
    return dropped


async def test_random_udp_loss_on_every_sip_leg():
    """RFC 3261 §17: 20 % of the UDP datagrams on Gm (clear and ESP, both ways) and on
    Mw (P-CSCF ⇄ I-CSCF ⇄ S-CSCF) are lost; the transactions' retransmissions complete
    registration and de-registration, and nothing is left behind."""
    subs = make_subscribers(3, seed=5)
    net = Network(subs)
    await net.start()
    ues = [UeClient(net.ue_config(s)) for s in subs]
    try:
        for u in ues:
            await u.start()
        dropped = _lose_a_fifth(net, ues, 2026)
        results = await asyncio.gather(*(u.register(60) for u in ues))
        assert all(r.ok and r.protected for r in results), results
        results = await asyncio.gather(*(u.deregister(60) for u in ues))
        assert all(r.ok for r in results), results
        assert dropped["n"] >= 5
        assert await eventually(lambda: leftovers(net)["pcscf_sa_sets"] == 0, 10)
        assert leftovers(net)["pcscf_registrations"] == 0
        assert net.scscf.census()["bindings"] == 0
    finally:
        for u in ues:
            await u.close()
        await net.stop()


async def test_random_udp_loss_with_every_register_challenged():
    """The same loss with the S-CSCF's `reauthenticate = "always"`: the re-registration
    and the de-registration are challenged too, so each moves the UE to a new SA set while
    retransmissions still travel over the old one. The P-CSCF keeps the replaced set for
    Timer F and the answered set for Timer J: no retransmission meets an SA it no longer
    knows, and every step completes."""
    subs = make_subscribers(3, seed=6)
    net = Network(subs, NetworkOptions(extra={"scscf": {"reauthenticate": "always"}}))
    await net.start()
    ues = [UeClient(net.ue_config(s)) for s in subs]
    try:
        for u in ues:
            await u.start()
        dropped = _lose_a_fifth(net, ues, 4)
        for step in (UeClient.register, UeClient.reregister, UeClient.deregister):
            results = await asyncio.gather(*(step(u, 60) for u in ues))
            assert all(r.ok for r in results), (step.__name__, results)
        assert dropped["n"] >= 15
        assert await eventually(lambda: leftovers(net)["pcscf_sa_sets"] == 0, 10)
        assert leftovers(net)["pcscf_registrations"] == 0
        assert net.scscf.census()["bindings"] == 0
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0, net.pcscf.backend.drops
    finally:
        for u in ues:
            await u.close()
        await net.stop()


async def test_ue_vanishing_after_the_401_leaves_neither_sas_nor_a_challenge():
    """The UE takes its 401 and disappears. With short configured lifetimes, the
    P-CSCF's temporary SA set goes after `temporary_sa_lifetime` and the S-CSCF's
    challenge after `reg_await_auth` (the HSS is told: SAR AUTHENTICATION_TIMEOUT)."""
    subs = make_subscribers(2, seed=13)
    net = Network(
        subs,
        NetworkOptions(
            extra={"pcscf": {"temporary_sa_lifetime": 1}, "scscf": {"reg_await_auth": 1}}
        ),
    )
    await net.start()
    ue = UeClient(net.ue_config(subs[0]), observers=[net.trace])
    await ue.start()
    ue.send_protected = lambda sa, data: True  # gone: the challenge response never leaves
    try:
        res = await ue.register(timeout=0.5)
        assert not res.ok
        assert net.pcscf.stats()["sa_sets"] == 1
        assert net.scscf.census()["challenges"] == 1
        assert await eventually(lambda: leftovers(net) == dict.fromkeys(leftovers(net), 0), 4)
        assert await eventually(lambda: count(net, "SAR") == 1)  # AUTHENTICATION_TIMEOUT
        # The same subscriber registers afresh (a new challenge, a new vector).
        again = UeClient(net.ue_config(subs[0]), observers=[net.trace])
        await again.start()
        try:
            res = await again.register(10)
            assert res.ok and res.protected, res
        finally:
            await again.close()
    finally:
        await ue.close()
        await net.stop()


def _wrong_response(ue: UeClient) -> None:
    """Make the UE's challenge responses wrong (a bad RES), the rest untouched."""
    import re

    original = ue.core._build_register

    def tampered(**kw):
        kw["authorization"] = re.sub(
            r'response="[0-9a-f]{32}"', 'response="' + "0" * 32 + '"', kw["authorization"]
        )
        return original(**kw)

    ue.core._build_register = tampered


async def test_failed_attempts_lock_the_impi_out():
    """After `max_failed_attempts` wrong responses (403 each, the temporary SAs gone
    after the 403 went out over them) the IMPI is refused without a challenge for
    `lockout` seconds — a right response cannot be tried — then served again."""
    subs = make_subscribers(2, seed=31)
    net = Network(subs, NetworkOptions(extra={"scscf": {"max_failed_attempts": 2, "lockout": 3}}))
    await net.start()
    try:
        for _ in range(2):
            ue = UeClient(net.ue_config(subs[0]), observers=[net.trace])
            await ue.start()
            _wrong_response(ue)
            try:
                res = await ue.register(10)
            finally:
                await ue.close()
            assert not res.ok and res.status == 403, res
        mars = count(net, "MAR")
        ue = UeClient(net.ue_config(subs[0]), observers=[net.trace])
        await ue.start()
        try:
            res = await ue.register(10)  # a right K, but locked out
            assert not res.ok and res.status == 403, res
            assert count(net, "MAR") == mars  # refused before any vector is spent
            assert net.scscf.scscf.core.counters["refused_locked"] == 1
            other = UeClient(net.ue_config(subs[1]))  # another IMPI is not affected
            await other.start()
            try:
                assert (await other.register(10)).ok
            finally:
                await other.close()
            assert net.scscf.census()["failure_records"] == 1
            # the record goes with the lock, by the S-CSCF's own timer
            assert await eventually(lambda: net.scscf.census()["failure_records"] == 0, 8.0)
            res = await ue.register(10)
            assert res.ok and res.protected, res
        finally:
            await ue.close()
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 2)  # the two registered
    finally:
        await net.stop()


async def test_binding_lapse_is_timeout_deregistration_and_the_pcscf_drops_the_sas():
    """A UE registers for 2 s and disappears without refreshing. The S-CSCF removes the
    lapsed binding (SAR TIMEOUT_DEREGISTRATION to the HSS) and NOTIFYs the reg event as
    terminated (contact event `expired`); the P-CSCF, subscribed since the 200 OK,
    removes the UE's SAs and registration."""
    subs = make_subscribers(1, seed=41)
    net = Network(subs, NetworkOptions(extra={"scscf": {"min_expires": 1}}))
    await net.start()
    ue = UeClient(net.ue_config(subs[0], expires=2), observers=[net.trace])
    try:
        await ue.start()
        res = await ue.register(10)
        assert res.ok and res.expires == 2, res
        assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)
        await ue.close()  # gone: no refresh at half the expiry
        sars = lambda: [  # noqa: E731
            r for r in net.trace.messages("diameter") if r.summary.startswith("SAR")
        ]
        assert len(sars()) == 1
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 5.0)
        stats = net.pcscf.stats()
        assert stats["registrations"] == 0 and stats.get("network-deregistered") == 1, stats
        assert len(sars()) == 2
        assert "TIMEOUT_DEREGISTRATION" in str(sars()[-1].summary) + str(sars()[-1].headers)
        notify = [r for r in net.trace.messages("sip") if r.summary.startswith("NOTIFY")][-1]
        assert "terminated" in dict(notify.headers).get("Subscription-State", "")
        assert net.scscf.census()["bindings"] == 0
    finally:
        await ue.close()
        await net.stop()


async def test_lost_200_to_a_deregister_is_answered_again_over_the_draining_sas(
    home_network, subscribers
):
    """The 200 OK to the de-REGISTER is lost on Gm. The SA set stays DRAINING (its last
    message is still due), the UE's retransmitted de-REGISTER arrives over it and the
    P-CSCF answers it again, protected, from the cached answer; then the set goes."""
    net = home_network
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    lost = {"n": 0}
    original = net.pcscf.send_protected

    def lose_first_final(sa, data, final=False):
        if final and not lost["n"]:
            lost["n"] += 1
            return True
        return original(sa, data, final)

    net.pcscf.send_protected = lose_first_final
    try:
        await ue.start()
        assert (await ue.register(10)).ok
        res = await ue.deregister(10)
        assert res.ok and res.status == 200, res
        assert lost["n"] == 1
        assert net.pcscf.core.counters["retransmission-answered"] >= 1
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 3)
        assert net.pcscf.stats()["registrations"] == 0
        assert not net.pcscf._by_outbound
    finally:
        await ue.close()


@pytest.mark.redis
async def test_scscf_restart_with_redis_keeps_the_reg_event_subscriptions(redis_url):
    """A registration that survives an S-CSCF restart keeps its watchers: the P-CSCF's
    and the UE's reg-event subscriptions (TS 24.229 §5.2.3, §5.1.1.3) are stored with
    it. A network-initiated de-registration (RTR from the HSS) after the restart still
    reaches both: the UE gets its terminated NOTIFY (§5.1.1.7) and the P-CSCF releases
    the UE's SAs. Before, the restarted S-CSCF had no subscriber to tell, and both kept
    a registration the network had ended."""
    subs = make_subscribers(1, seed=92)
    async with _on_redis(redis_url, subs) as (net, ue, restart):
        assert (await ue.register(10)).ok
        pcscf = net.pcscf.core
        assert await eventually(lambda: pcscf.counters["reg-subscribed"] >= 1 and ue.subscribed)
        assert net.scscf.census()["subscriptions"] == 2
        await restart()
        assert net.scscf.census()["subscriptions"] == 2
        assert (await net.hss.deregister_impi(subs[0].impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 10)
        assert subs[0].impi not in pcscf.registrations
        assert net.scscf.census()["subscriptions"] == 0


@pytest.mark.redis
async def test_an_rtr_just_before_a_restart_still_reaches_both(redis_url):
    """The S-CSCF handles an RTR, sends its terminated NOTIFYs (both lost the first
    time) and is restarted at once: it stops only once they were answered
    (`ScscfServer.drain`, as on SIGTERM), so the P-CSCF still releases the UE's SAs and
    the UE still learns of the end (TS 24.229 §5.4.1.5, §5.1.1.7). Before, the NOTIFYs'
    transactions ended with the process and neither heard of it."""
    subs = make_subscribers(1, seed=93)
    async with _on_redis(redis_url, subs) as (net, ue, restart):
        assert (await ue.register(10)).ok
        assert await eventually(
            lambda: net.pcscf.core.counters["reg-subscribed"] >= 1 and ue.subscribed
        )
        lost: list[bytes] = []
        for transport in net.scscf.endpoint.transports:
            if transport.name == "udp":
                sendto = transport._transport.sendto

                def lossy(data, *args, sendto=sendto):
                    if data.startswith(b"NOTIFY ") and len(lost) < 2:
                        lost.append(data)  # the first copy of each NOTIFY
                        return None
                    return sendto(data, *args)

                transport._transport.sendto = lossy
        assert (await net.hss.deregister_impi(subs[0].impi)).get("ok")
        await restart()
        assert len(lost) == 2
        assert await ue.wait_network_deregistration(10) == "rejected"
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 10)
