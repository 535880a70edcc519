"""A P-CSCF restart under registered UEs (TS 24.229 §5.1.1.4.1, §5.2.2; TS 33.203 §7.4),
through the whole core on loopback.

The P-CSCF keeps its SAs, registrations and reg-event subscriptions in memory: a new
one knows none of them, and drops the ESP that comes over the old SAs (it has no SA to
answer over). The UE's refresh then times out (Timer F), and the UE registers anew: a
fresh AKA run and SA set through the new P-CSCF, with the same contact (its port-s),
which replaces the binding at the S-CSCF. The binding made anew (another Call-ID) is a
change its reg-event subscribers are told of, and the old P-CSCF's subscription ends
with the 481 of the new P-CSCF. The UE's old one ends too: its NOTIFY reaches the new
P-CSCF before the UE is registered there, from the S-CSCF, a node the P-CSCF trusts
from its start (`[pcscf].trusted_nodes`), and is answered 404, the end of that dialog
usage (RFC 5057 §5.1). (Before, the P-CSCF trusted only the S-CSCFs that Service-Routes
had named to it, refused that NOTIFY 403 as a UE's request, and the subscription
stayed until the registration ended.)"""

from __future__ import annotations

import asyncio

from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from imsaka.ue.core import RegisteringAnew
from tests.polling import eventually

# Timer F = 64·T1 = 3.2 s instead of 32 s: the refresh over lost SAs ends sooner.
FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)


async def test_a_ue_registers_anew_after_a_pcscf_restart(home_network, subscribers):
    net = home_network
    impu = subscribers[0].impus[0]
    scscf = net.scscf.scscf
    async with UeClient(net.ue_config(subscribers[0]), observers=[net.trace], timers=FAST) as ue:
        assert (await ue.register(10)).ok
        contact = ue.core.contact_uri(protected=True).strip("<>")
        # the UE's and the P-CSCF's reg-event subscriptions, both up
        assert await eventually(lambda: len(scscf.subscriptions) == 2)
        (old_pcscf,) = [s for s in scscf.subscriptions if s.remote_target != contact]
        (old_ue,) = [s for s in scscf.subscriptions if s.remote_target == contact]
        await net.restart_pcscf()
        result = await ue.reregister(20)
        assert result.ok and result.protected, result
        anew = [e for e in result.events if isinstance(e, RegisteringAnew)]
        assert len(anew) == 1 and "timeout" in anew[0].reason, result.events
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) >= 1
        assert list(scscf.core.registrations[impu].contacts) == [contact]
        census = net.pcscf.census()
        assert census["registrations"] == 1 and census["sa_sets"] == 1, census
        assert scscf.core.counters["notify_contacts_changed"] == 1
        assert await eventually(lambda: old_pcscf not in set(scscf.subscriptions))
        assert net.pcscf.core.counters["notify-unknown-subscription"] == 1
        # the UE's old one: its NOTIFY met the new P-CSCF before the UE was registered
        # there, from a node it trusts from the start (`trusted_nodes`): 404, and gone
        assert await eventually(lambda: old_ue not in set(scscf.subscriptions))
        assert net.pcscf.core.counters["terminating-not-registered"] == 1
        # the new P-CSCF's and the UE's new subscriptions
        assert await eventually(lambda: net.pcscf.census()["reg_subscriptions"] == 1)
        assert await eventually(lambda: ue.core.subscription.remote_tag)
        assert (await ue.deregister(10)).ok
    assert impu not in scscf.core.registrations
    assert await eventually(lambda: not scscf.subscriptions, timeout=10)
    assert await eventually(lambda: net.pcscf.census()["registrations"] == 0)


async def test_a_retransmission_through_the_restarted_pcscf_is_not_challenged_anew(
    home_network, subscribers
):
    """The 401 to the UE's first REGISTER is lost, and the P-CSCF restarts before the
    UE sends it again. The new P-CSCF forwards the retransmission under the branch the
    old one used (the branch is a digest of the UE's, keyed by the P-CSCF's own name and
    port, not by a secret of the process), so the I-CSCF answers it from its
    transaction: the one challenge, no second vector spent, none left to lapse at
    reg-await-auth (`lifecycle_chaos --pcscf-restarts`, seeds 9000 and 9001)."""
    net = home_network
    core = net.scscf.scscf.core
    lost: list[bytes] = []
    incoming = net.pcscf._incoming

    def gate(data: bytes, arrival) -> None:
        if not lost and data.startswith(b"SIP/2.0 401"):
            lost.append(data)
            return
        incoming(data, arrival)

    net.pcscf._incoming = gate
    async with UeClient(net.ue_config(subscribers[0]), observers=[net.trace]) as ue:
        task = asyncio.ensure_future(ue.register(20))
        assert await eventually(lambda: bool(lost))
        await net.restart_pcscf()
        result = await task
        assert result.ok and result.protected, result
        assert core.counters["register"] == 2  # the first REGISTER and the answer
        assert core.pending_counts()["challenges"] == 0
        assert (await ue.deregister(10)).ok
