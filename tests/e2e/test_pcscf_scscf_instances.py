"""The P-CSCF in front of an S-CSCF that runs as two instances on Redis
(``[[scscf.instances]]``; the P-CSCF's ``scscf_instances`` come from the same
document): a request to the instance that registered the UE, stopped, goes on to the
other after ``[pcscf].scscf_timeout`` (RFC 3263 §4.3, as to the next target of one
name), and the silent one is passed over for the next requests (TS 24.229 §5.2.3: the
P-CSCF's reg-event subscription). Before 2026-11-28 such a request waited out Timer F
and failed, and a new subscription along the Service-Route went to the stopped
instance again."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from imsaka.cscf.pcscf_store import PcscfStateStore
from imsaka.cscf.registrar import RedisBindingStore
from imsaka.network import Network, NetworkOptions
from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.redis

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)


@asynccontextmanager
async def _first_instance_crashed(
    subscribers, redis_url, down: float = 60.0
) -> AsyncIterator[tuple]:
    """Two S-CSCF instances and a P-CSCF on Redis; a UE registered and subscribed
    through the first, which holds both subscriptions (the UE's and the P-CSCF's) and
    then crashes, started again `down` s later. Yields (net, ue, the second instance's
    Scscf)."""
    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    extra = {
        "scscf": {"binding_store": redis_url, "binding_store_prefix": prefix},
        "icscf": {"scscf_timeout": 1.0},
        "pcscf": {"state_store": redis_url, "state_interval": 0.2, "scscf_timeout": 1.0},
    }
    net = Network(subscribers[:1], NetworkOptions(extra=extra, scscf_instances=2))
    await net.start()
    own = net.pcscf._own()
    store = PcscfStateStore(redis_url, f"{net.config.pcscf.name}@{own['address']}:{own['port']}")
    restart = None
    try:
        async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
            assert (await ue.register(10)).ok
            assert await ue.wait_subscribed()
            first, other = net.scscf.scscf, net.scscf_others[0].scscf
            assert await eventually(lambda: len(first.subscriptions) == 2)
            assert not other.subscriptions
            await asyncio.sleep(0.6)  # the P-CSCF's store written since
            later = net.restart_scscf(instance=1, crash=True, down=down)
            restart = asyncio.ensure_future(later)
            assert await eventually(lambda: net.scscf is None)
            yield net, ue, other
    finally:
        if restart is not None:
            restart.cancel()
            await asyncio.gather(restart, return_exceptions=True)
        await net.stop()
        await store.clear()
        await store.close()
        bindings = RedisBindingStore(redis_url, prefix=prefix)
        await bindings.clear()  # (the instances' registrations and subscriptions)
        await bindings.close()


async def test_a_pcscf_restarted_with_the_registering_instance_down_subscribes_at_the_other(
    subscribers, redis_url
):
    """The P-CSCF crashes right after the instance that registered the UE and held
    both subscriptions. The P-CSCF's successor audits what it took back: its refresh
    goes to the stopped instance's Contact, is silent for 1 s and moves to the other
    instance, which does not hold that subscription and does not see the first stopped
    yet (481); the new subscription along the Service-Route, which names the stopped
    instance, goes straight to the other (passed over) and is set up there. The UE
    stays registered and refreshes."""
    async with _first_instance_crashed(subscribers, redis_url) as (net, ue, other):
        await net.restart_pcscf(0.1)  # a crash: the store as last written

        counters = net.pcscf.core.counters
        assert net.pcscf.restored == 1
        assert await eventually(lambda: counters["reg-subscribed"] == 1, 8), counters
        assert counters["reg-subscription-audited"] == 1
        assert counters["scscf-instance-failover"] == 1
        assert counters["reg-resubscribed"] == 1
        assert other.core.counters["subscribe_unknown_dialog"] == 1  # the 481
        assert len(other.subscriptions) == 1  # the P-CSCF's, made anew there
        refresh = await ue.reregister(10)
        assert refresh.ok and refresh.protected, refresh


async def test_a_refresh_moved_to_the_other_instance_is_taken_over_there(subscribers, redis_url):
    """As above, but the P-CSCF comes back once the other instance sees the first
    stopped (its heartbeat gone for 5 s): the moved refresh makes it take the first's
    subscriptions to the IMPU from the store at once, the P-CSCF's answered 200 in its
    own dialog (no 481, no new subscription) and the UE's told in its dialog (a NOTIFY
    with the other's Contact), long before the take-over after 30 s."""
    async with _first_instance_crashed(subscribers, redis_url) as (net, ue, other):
        assert await eventually(lambda: bool(other._peers.stopped), 8)
        await net.restart_pcscf(0.1)

        counters = net.pcscf.core.counters
        assert await eventually(lambda: counters["scscf-instance-failover"] == 1, 5), counters
        seen = other.core.counters
        assert await eventually(lambda: seen["refresh_taken_from_stopped_notifier"] == 1)
        assert seen["taken_from_stopped_notifier"] == 1  # the UE's, told in its dialog
        assert not seen["subscribe_unknown_dialog"]
        assert len(other.subscriptions) == 2
        assert not counters["reg-resubscribed"] and counters["reg-subscribe-refused"] == 0
        (sub,) = net.pcscf.core.subscriptions.values()
        # the next refresh goes there, once the 200 that names it has reached the P-CSCF
        # (the instance counts the refresh it took before it answers)
        port = str(other_port(net))
        assert await eventually(lambda: port in sub.remote_target, 5), sub.remote_target
        refresh = await ue.reregister(10)
        assert refresh.ok and refresh.protected, refresh


async def test_the_instance_passed_over_is_probed_and_used_again_once_back(subscribers, redis_url):
    """The first instance is back 4 s after its crash: the P-CSCF, which passed it over
    when its refresh moved, asks it with an OPTIONS every 5 s and takes it back at its
    first answer: nothing is passed over any more, so a Service-Route leads to it again."""
    async with _first_instance_crashed(subscribers, redis_url, down=4.0) as (net, _ue, _other):
        await net.restart_pcscf(0.1)
        counters = net.pcscf.core.counters
        assert await eventually(lambda: counters["scscf-instance-failover"] == 1, 5), counters
        assert await eventually(lambda: counters["scscf-instance-up"] == 1, 12), counters
        assert counters["scscf-probe-sent"] >= 1
        assert not net.pcscf.core._down
        assert net.scscf is not None  # (back)


def other_port(net) -> int:
    return net.config.scscf.instances[0].port
