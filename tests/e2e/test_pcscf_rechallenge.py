"""A new challenge to the challenge response (TS 24.229 §5.2.2.1, §5.1.1.5.1; TS 33.203
§7.4), through the whole core on loopback: the S-CSCF restarts between its 401 and the
UE's answer, so it no longer knows the nonce and challenges again (MAR, 401). The
P-CSCF sends that 401 over the temporary set the challenge response came on, with a
Security-Server for a new temporary set keyed from the new CK/IK; the UE runs AKA again
and registers over the new set.

Before, the P-CSCF kept no Security-Client of a challenge response: it passed the new
401 on without Security-Server (its CK/IK only stripped), and the UE gave up ("401
without a usable Security-Server"). Found by `lifecycle_chaos --scscf-restarts`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from imsaka.network import make_subscribers
from imsaka.ue.client import UeClient
from tests.e2e.pcscf_gate import first_held
from tests.e2e.test_faults import _on_redis
from tests.polling import eventually


def _count(net, prefix: str, kind: str = "diameter") -> int:
    return sum(1 for r in net.trace.messages(kind) if r.summary.startswith(prefix))


@asynccontextmanager
async def _rechallenged(
    net,
    subscriber,
    keep: Callable[[bytes], bool] | None = None,
    restart: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[UeClient, object, object]]:
    """A UE of `subscriber` registers; its first challenge response is kept back at the
    P-CSCF's input until the S-CSCF has restarted (the challenge gone with it), so that
    it is challenged again. Yields (the UE, its registration's result, the first
    temporary set). `keep(head)`: other datagrams to the P-CSCF kept back from then on
    (while the gate is in place: until the end of the block). `restart`: how the
    S-CSCF restarts (default `net.restart_scscf()`: the memory store keeps no
    challenge; on Redis only a crash loses it)."""

    def challenge_response(head: bytes) -> bool:
        return head.startswith(b"REGISTER ") and b"\r\nCSeq: 2 REGISTER" in head

    async with first_held(net, subscriber, challenge_response, 15, keep) as (
        ue,
        task,
        held,
        incoming,
    ):
        first_set = net.pcscf.core.registrations[subscriber.impi].temporary
        await (restart or net.restart_scscf)()
        incoming(*held)
        yield ue, await task, first_set


async def test_a_second_401_gets_a_temporary_set_of_its_own(home_network, subscribers):
    net = home_network
    core = net.pcscf.core
    async with _rechallenged(net, subscribers[0]) as (ue, result, first_set):
        assert result.ok and result.protected, result
        assert _count(net, "MAR") == 2 and _count(net, "401", "sip") >= 2
        assert core.counters["challenge-response-rechallenged"] == 1
        reg = core.registrations[subscribers[0].impi]
        assert reg.sa is not None and reg.sa.spi_ps != first_set.spi_ps
        # the set the second 401 went over was held for that REGISTER, then goes
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0
        # requests to the UE (its reg-event NOTIFY) go over the new set too
        assert await eventually(lambda: ue.subscribed and ue.core.subscription.version >= 0)
        assert not ue.backend.drops.get("esp-icv-mismatch", 0), ue.backend.drops
        again = await ue.reregister(10)
        assert again.ok and again.protected, again
        assert (await ue.deregister(10)).ok
        assert await eventually(lambda: net.pcscf.stats()["sa_sets"] == 0, 40)


async def test_the_second_401_lost_once_comes_again_over_the_first_set(home_network, subscribers):
    """As above, and the second 401 is lost on its way to the UE: the UE sends its
    challenge response again over the first temporary set, and the P-CSCF answers with
    that 401 again over that very set, not over the new one (both have the UE's SPIs:
    by SPI alone the answer went out under the new keys and the UE dropped it)."""
    net = home_network
    lost: list = []
    send_protected = net.pcscf.send_protected

    def lossy(sa, data: bytes, final: bool = False) -> bool:
        if data.startswith(b"SIP/2.0 401") and not lost:
            lost.append(data)  # the second 401's first copy
            return True
        return send_protected(sa, data, final)

    net.pcscf.send_protected = lossy
    try:
        async with _rechallenged(net, subscribers[0]) as (ue, result, _):
            assert result.ok and result.protected, result
            assert lost and net.pcscf.core.counters["challenge-response-rechallenged"] == 1
            assert net.pcscf.core.counters["answered-again-in-grace"] >= 1
            assert (await ue.deregister(10)).ok
    finally:
        net.pcscf.send_protected = send_protected


async def test_the_networks_end_reaches_the_ue_over_the_new_set(home_network, subscribers):
    """After the new challenge the HSS de-registers the UE (RTR) at once, while the set
    the second 401 went over is still held: the UE's terminated NOTIFY goes over the
    set the registration holds, also when that one is held too (awaiting the UE's
    answer) and both have the UE's SPIs. Before, the NOTIFY went out by SPI over the
    first held one, under its keys: the UE dropped it ("esp-icv-mismatch") until Timer
    F and never learned of the end (lifecycle_chaos --scscf-restarts seed 2012)."""
    net = home_network
    kept: list = []  # the S-CSCF's 200 to the UE's SUBSCRIBE, kept from the P-CSCF

    def keep(head: bytes) -> bool:
        answer_to_ue = head.startswith(b"SIP/2.0 200") and b" SUBSCRIBE\r\n" in head
        if answer_to_ue and b"\r\nFrom: <sip:pcscf" not in head:
            kept.append(head)
            return True
        return False

    async with _rechallenged(net, subscribers[0], keep) as (ue, result, _):
        assert result.ok and result.protected, result
        # the UE's subscription is up at the S-CSCF (its first NOTIFY came), its
        # SUBSCRIBE still open at the P-CSCF: the set is held for it when the end comes
        assert await eventually(lambda: bool(kept) and ue.core.subscription.remote_tag)
        assert net.pcscf.core.in_grace() >= 1  # the first temporary set, held
        assert (await net.hss.deregister_impi(subscribers[0].impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        assert not ue.backend.drops.get("esp-icv-mismatch", 0), ue.backend.drops


async def test_a_restarted_ue_whose_challenge_a_restart_lost_registers(redis_url):
    """The UE restarts (new ports: a new contact) while its old contact lives on in
    Redis, and the S-CSCF restarts between the new 401 and the answer. That answer comes
    integrity-protected (over the temporary set) with a contact not registered before:
    refused 403 before (TS 24.229 §5.4.1.2.2 step 2), so the UE could not register until
    its old contact lapsed (`lifecycle_chaos --expires 60 --scscf-restarts`, seed 5105).
    Now it is challenged again (step 1) and registers."""
    subs = make_subscribers(1, seed=94)
    async with _on_redis(redis_url, subs) as (net, old_ue, restart):
        assert (await old_ue.register(10)).ok

        async def crash() -> None:  # (a restart asked for would keep the challenge)
            await restart(crash=True)

        async with _rechallenged(net, subs[0], restart=crash) as (ue, result, _):
            assert result.ok and result.protected, result
            core = net.scscf.scscf.core
            assert core.counters["new_contact_reauthenticated"] == 1
            assert _count(net, "MAR") == 2 and _count(net, "401", "sip") >= 2
            assert len(core.registrations[subs[0].impus[0]].contacts) == 2
            assert (await ue.deregister(10)).ok
