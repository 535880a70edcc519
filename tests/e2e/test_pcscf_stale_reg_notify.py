"""The P-CSCF's reg-event subscription belongs to one registration (TS 24.229 §5.2.3,
RFC 3680), through the whole core on loopback: a UE de-registers and at once
registers again; the S-CSCF's terminated NOTIFY on the subscription of the registration
that ended reaches the P-CSCF late (its first copies lost), while the new registration
is under way or done. That NOTIFY is answered and ends nothing: the new registration
keeps its SAs and gets a subscription of its own.

Before, the P-CSCF kept its subscriptions by IMPI: the late NOTIFY marked the new
registration terminated by the network, whose SAs went with the 200 OK of its own
REGISTER, and it never subscribed for it (the old subscription still stood for the
IMPI). The UE, registered as far as it knew, was then heard by nobody. Found by a
seeded lifecycle run under 20 % loss on every leg."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("late", ["while-registering", "after-registering"])
async def test_a_late_terminated_notify_of_the_ended_registration_spares_the_new_one(
    home_network, subscribers, late
):
    net = home_network
    pcscf = net.pcscf
    core = pcscf.core
    impi = subscribers[0].impi
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    held: list = []
    hold = {"on": False, "ok": False, "call_id": b""}
    incoming = pcscf._incoming

    def hook(data: bytes, arrival) -> None:
        head = data.split(b"\r\n\r\n", 1)[0]
        # the S-CSCF's NOTIFYs on the P-CSCF's own subscription of the first
        # registration: lost while `on` (the S-CSCF sends them again, Timer E)
        if hold["on"] and head.startswith(b"NOTIFY ") and hold["call_id"] in head:
            held.append(data)
            return
        if hold["ok"] and head.startswith(b"SIP/2.0 200") and b"2 REGISTER" in head:
            # the new registration's 200, kept until the late NOTIFY was taken
            late_ok.append((data, arrival))
            return
        incoming(data, arrival)

    late_ok: list = []
    pcscf._incoming = hook
    try:
        await ue.start()
        assert (await ue.register(10)).ok
        assert await eventually(lambda: core.counters["reg-subscribed"] == 1)
        first_call_id = core._subscribed[impi]
        hold.update(on=True, call_id=first_call_id.encode())
        assert (await ue.deregister(10)).ok
        assert await eventually(lambda: bool(held)), "no terminated NOTIFY from the S-CSCF"
        if late == "while-registering":
            hold["ok"] = True
            task = asyncio.ensure_future(ue.register(10))
            # the new registration's second REGISTER is open when the NOTIFY gets through
            assert await eventually(lambda: bool(late_ok))
            assert any(p.kind[:8] == "register" for _, p in core._open_of(impi))
            hold["on"] = False
            assert await eventually(lambda: first_call_id not in core.subscriptions, 10)
            hold["ok"] = False
            for data, arrival in late_ok:
                incoming(data, arrival)
            result = await task
        else:
            result = await ue.register(10)
            assert result.ok
            hold["on"] = False
            assert await eventually(lambda: first_call_id not in core.subscriptions, 10)
        assert result.ok and result.protected, result
        reg = core.registrations.get(impi)
        assert reg is not None and reg.sa is not None, "the new registration lost its SAs"
        assert not reg.network_terminated and not reg.release_at
        # a subscription of its own, on a new dialog
        assert await eventually(lambda: core._subscribed.get(impi, first_call_id) != first_call_id)
        assert await eventually(lambda: core.counters["reg-subscribed"] == 2)
        # and the UE is still heard: its refresh goes through over the new set
        again = await ue.reregister(10)
        assert again.ok and again.protected, again
        assert (await ue.deregister(10)).ok
    finally:
        pcscf._incoming = incoming
        await ue.close()
