"""UE simulator edge (imsaka.ue.client) over the whole core on loopback: what a load
test that runs thousands of UEs in one process relies on."""

from __future__ import annotations

import gc
import weakref

from imsaka.ue.client import UeClient
from imsaka.ue.core import SendRequest, SetUpSecurityAssociations


async def test_a_closed_ue_is_freed_without_the_cycle_collector(home_network, subscribers):
    ue = UeClient(home_network.ue_config(subscribers[0]))
    await ue.start()
    assert (await ue.register(10)).ok
    await ue.close()
    client, core = weakref.ref(ue), weakref.ref(ue.core)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del ue
        # Reference counting alone: a callback still bound to the client (socket
        # receiver, ESP delivery, port and SPI allocation) would keep both alive.
        assert client() is None and core() is None
    finally:
        if was_enabled:
            gc.enable()


async def test_events_are_those_of_the_last_run(home_network, subscribers):
    ue = UeClient(home_network.ue_config(subscribers[1]))
    await ue.start()
    try:
        first = await ue.register(10)
        assert first.ok
        assert any(isinstance(e, SetUpSecurityAssociations) for e in first.events)
        again = await ue.reregister(10)
        assert again.ok and again.protected
        # No AKA run in the refresh, and the first run's REGISTERs are not kept.
        assert not any(isinstance(e, SetUpSecurityAssociations) for e in again.events)
        assert ue.events == again.events
        assert sum(isinstance(e, SendRequest) for e in ue.events) == 1
        assert first.events[0] not in ue.events
    finally:
        await ue.close()
