"""The P-CSCF's own reg-event subscription outlives the S-CSCF's grant (TS 24.229
§5.2.3: refreshed before it expires) and ends nothing when only the subscription ends
(RFC 6665 §4.1.3: `reason=timeout` with a reginfo that still shows the registration
active is the subscription's end, not the registration's)."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.network import Network, NetworkOptions
from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow


def _subscribes_from_pcscf(net: Network) -> list:
    return [
        r
        for r in net.trace.messages("sip")
        if r.summary.startswith("SUBSCRIBE")
        and any(k.lower() == "from" and "pcscf" in v for k, v in r.headers)
    ]


async def test_pcscf_refreshes_its_subscription_and_the_registration_lives_on(subscribers):
    # The S-CSCF grants subscriptions no longer than registrations (max_expires 4 s);
    # the UE refreshes its registration every 2 s and so stays registered for 7 s.
    net = Network(
        subscribers,
        NetworkOptions(extra={"scscf": {"min_expires": 1, "max_expires": 4, "default_expires": 4}}),
    )
    await net.start()
    ue = UeClient(net.ue_config(subscribers[0], expires=4), observers=[net.trace])
    await ue.start()
    try:
        res = await ue.register(10)
        assert res.ok and res.expires == 4, res
        await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)
        await asyncio.sleep(7.0)
        stats = net.pcscf.stats()
        assert stats["registrations"] == 1 and stats["sa_sets"] >= 1, stats
        assert not stats.get("network-deregistered"), stats
        # refreshed in-dialog before the 4 s grant ran out, more than once in 7 s
        subs = _subscribes_from_pcscf(net)
        assert len(subs) >= 3, [r.summary for r in subs]
        call_ids = {dict(r.headers)["Call-ID"] for r in subs}
        assert len(call_ids) == 1, call_ids
        assert net.pcscf.census()["reg_subscriptions"] == 1
        # still the network's end reaches the P-CSCF through the refreshed subscription
        result = await net.hss.deregister_impi(subscribers[0].impi)
        assert result.get("ok"), result
        await eventually(lambda: net.pcscf.stats()["registrations"] == 0)
        assert net.pcscf.stats().get("network-deregistered") == 1
    finally:
        await ue.close()
        await net.stop()


async def test_a_fresh_registration_ends_the_subscription_of_the_one_it_replaced(
    home_network, subscribers
):
    """The UE starts over (an initial REGISTER, e.g. after a reboot) while the S-CSCF
    still holds its registration: the new registration subscribes for itself and the
    old subscription is ended at the S-CSCF (Expires: 0, RFC 6665 §4.1.2.3), which
    would otherwise keep it, and NOTIFY it, as long as the IMPU stays registered."""
    net = home_network
    sub = subscribers[0]

    def from_pcscf() -> list:
        return [s for s in net.scscf.scscf.subscriptions if "pcscf" in s.remote_uri]

    before = UeClient(net.ue_config(sub), observers=[net.trace])
    await before.start()
    after = UeClient(net.ue_config(sub), observers=[net.trace])
    try:
        assert (await before.register(10)).ok
        core = net.pcscf.core
        assert await eventually(lambda: core.counters["reg-subscribed"] == 1)
        (old_call_id,) = core.subscriptions
        await after.start()
        res = await after.register(10)
        assert res.ok and res.protected, res
        assert await eventually(lambda: core.counters["reg-subscribed"] == 2)
        assert await eventually(lambda: len(from_pcscf()) == 1)
        assert from_pcscf()[0].call_id != old_call_id
        assert core.counters["reg-unsubscribed"] == 1
        assert await eventually(lambda: list(core.subscriptions) != [old_call_id])
        assert len(core.subscriptions) == 1 and old_call_id not in core.subscriptions
        assert (await after.deregister(10)).ok
        assert await eventually(lambda: net.pcscf.census()["reg_subscriptions"] == 0)
        assert not from_pcscf()
    finally:
        await after.close()
        await before.close()


async def test_a_detached_subscription_whose_end_never_comes_is_given_up(
    home_network, subscribers, monkeypatch
):
    """The S-CSCF restarts on its memory store (registrations and subscriptions lost);
    the UE's de-REGISTER is answered 200 by the new one (nothing registered) and the
    P-CSCF's subscription, detached from the ended registration, waits for a terminated
    NOTIFY no S-CSCF will send. It was kept for ever (`lifecycle_chaos --scscf-restarts
    --hss-restarts`, seed 6102: one left at the end); after `DETACHED_WAIT` it is now
    ended from here (Expires: 0, which the new S-CSCF refuses: it never knew it) and
    forgotten."""
    import imsaka.cscf.pcscf as pcscf_module

    monkeypatch.setattr(pcscf_module, "DETACHED_WAIT", 1.0, raising=False)
    net = home_network
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        core = net.pcscf.core
        assert await eventually(lambda: core.counters["reg-subscribed"] == 1)
        await net.restart_scscf()  # the memory store: nothing survives
        assert (await ue.deregister(10)).ok
        assert net.pcscf.census()["reg_subscriptions"] == 1  # detached, waiting
        assert await eventually(lambda: net.pcscf.census()["reg_subscriptions"] == 0, 10)
        assert core.counters["reg-subscription-given-up"] == 1
        ending = [s for s in _subscribes_from_pcscf(net) if dict(s.headers).get("Expires") == "0"]
        assert len(ending) == 1
    finally:
        await ue.close()
