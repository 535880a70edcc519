"""A UE registers again right after a network-initiated de-registration (RTR from the
HSS, the S-CSCF's terminated reg-event NOTIFYs, RFC 3680; TS 24.229 §5.1.1.7, §5.2.3),
through the whole core on loopback. The P-CSCF ends the registration the network ended,
and only that one: the new registration's temporary SA set is not taken with it.

Before, the P-CSCF kept one record per IMPI and applied the termination to whatever it
held when the NOTIFY came: with the UE's new initial REGISTER open it marked the record
terminated and released the new temporary set with the 401 (the UE's challenge
response then met an unknown SPI and the registration ended in 408); with the release
waiting for the UE's own terminated NOTIFY, a new challenge joined the ended record and
went with it. Found by a seeded lifecycle run under 20 % loss on every leg."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow


class _Gate:
    """Keeps back, at the P-CSCF's input, while told to: the NOTIFYs of one Call-ID, the
    401s to initial REGISTERs (CSeq 1), the challenge responses (CSeq 2) and their 200s."""

    def __init__(self, pcscf) -> None:
        self.incoming = pcscf._incoming
        self.call_id = b""
        self.notify_on = False
        self.challenge_on = False
        self.response_on = False  # the UE's challenge response (CSeq 2), on its way in
        self.ok_on = False  # the 200 OKs to REGISTERs, from upstream
        # the UE's 200 to its terminated NOTIFY: unseen, the P-CSCF does not know the
        # UE was told (lost, or the UE answered it and went on at once)
        self.answer_on = False
        self.answers: list = []
        self.notifies: list = []
        self.challenges: list = []
        self.responses: list = []
        self.oks: list = []

    def __call__(self, data: bytes, arrival) -> None:
        head = data.split(b"\r\n\r\n", 1)[0]
        for on, start, mark, kept in (
            (self.notify_on, b"NOTIFY ", self.call_id, self.notifies),
            (self.challenge_on, b"SIP/2.0 401", b"1 REGISTER", self.challenges),
            (self.response_on, b"REGISTER ", b"2 REGISTER", self.responses),
            (self.ok_on, b"SIP/2.0 200", b" REGISTER\r\n", self.oks),
            (self.answer_on, b"SIP/2.0 200", b" NOTIFY\r\n", self.answers),
        ):
            if on and head.startswith(start) and mark in head:
                kept.append((data, arrival))
                return
        self.incoming(data, arrival)

    def let_through(self, kept: list) -> None:
        while kept:
            self.incoming(*kept.pop(0))


@asynccontextmanager
async def _scene(net, subscriber) -> AsyncIterator[tuple[_Gate, UeClient]]:
    """A registered UE, both its and the P-CSCF's reg-event subscriptions up, behind a
    gate at the P-CSCF's input (set for the P-CSCF's own NOTIFYs); both undone after."""
    core = net.pcscf.core
    gate = _Gate(net.pcscf)
    net.pcscf._incoming = gate
    ue = UeClient(net.ue_config(subscriber), observers=[net.trace])
    try:
        await ue.start()
        assert (await ue.register(10)).ok
        assert await eventually(lambda: core.counters["reg-subscribed"] >= 1 and ue.subscribed)
        gate.call_id = core._subscribed[subscriber.impi].encode()
        yield gate, ue
    finally:
        net.pcscf._incoming = gate.incoming
        await ue.close()


async def _registers_and_refreshes(ue: UeClient, result) -> None:
    assert result.ok and result.protected, result
    again = await ue.reregister(10)
    assert again.ok and again.protected, again
    assert (await ue.deregister(10)).ok


async def test_the_network_end_meets_the_ues_new_initial_register_open(home_network, subscribers):
    """The UE learns of the de-registration from its own NOTIFY and registers anew;
    the P-CSCF's own terminated NOTIFY (its first copies lost) arrives while that
    initial REGISTER is open."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        first_call_id = gate.call_id.decode()
        gate.notify_on = gate.answer_on = True
        old = core.registrations[impi]
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        gate.challenge_on = True
        task = asyncio.ensure_future(ue.register(15))
        assert await eventually(lambda: bool(gate.challenges)), "no 401 to the new REGISTER"
        assert core._register_open(impi) and gate.notifies
        assert core.registrations[impi] is old and old.sa is not None  # nothing ended yet
        gate.notify_on = False
        gate.let_through(gate.notifies)
        assert await eventually(lambda: first_call_id not in core.subscriptions)
        gate.challenge_on = gate.answer_on = False
        gate.let_through(gate.challenges)
        gate.let_through(gate.answers)
        await _registers_and_refreshes(ue, await task)
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0


@pytest.mark.parametrize("when", ["response-open", "response-on-its-way"])
async def test_the_network_end_after_the_401_to_the_ues_new_registration(
    home_network, subscribers, when
):
    """As above, but the P-CSCF's own NOTIFY arrives after the 401 to the new initial
    REGISTER, whose temporary set joined the record of the registration that ended:
    while the challenge response is open (its 200 not back yet), or before the response
    reached the P-CSCF. The S-CSCF answers that response after the de-registration it
    made, so the new registration stands: its set stays, the ended one's goes."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        first_call_id = gate.call_id.decode()
        old_set = core.registrations[impi].sa
        gate.notify_on = gate.answer_on = True
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        if when == "response-open":
            gate.ok_on = True
            task = asyncio.ensure_future(ue.register(15))
            assert await eventually(lambda: bool(gate.oks)), "no 200 to the challenge response"
        else:
            gate.response_on = True
            task = asyncio.ensure_future(ue.register(15))
            assert await eventually(lambda: bool(gate.responses)), "no challenge response"
        reg = core.registrations[impi]
        assert reg.started_over and reg.temporary is not None and reg.sa is old_set
        gate.notify_on = False
        gate.let_through(gate.notifies)
        assert await eventually(lambda: first_call_id not in core.subscriptions)
        assert core.registrations.get(impi) is reg and reg.sa is None
        assert not reg.network_terminated and reg.temporary is not None
        gate.ok_on = gate.response_on = False
        gate.let_through(gate.responses)
        gate.let_through(gate.oks)
        gate.answer_on = False
        gate.let_through(gate.answers)
        await _registers_and_refreshes(ue, await task)
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0


async def test_a_new_challenge_while_the_release_awaits_the_ues_notify(home_network, subscribers):
    """The P-CSCF learns first (its own NOTIFY) and waits for the UE's terminated
    NOTIFY before the SAs go; that one is lost for now, and the subscriber registers
    afresh from a new UE instance (initial REGISTER in the clear). Its challenge gets a
    record of its own, and the ended registration goes at once."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        # the UE's own NOTIFYs travel on the UE's dialog: kept back by its Call-ID
        gate.call_id = ue.core.subscription.call_id.encode()
        gate.notify_on = True
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await eventually(lambda: core.registrations[impi].release_at > 0)
        old = core.registrations[impi]
        fresh = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
        try:
            await fresh.start()
            result = await fresh.register(15)
            assert core.registrations.get(impi) is not old
            await _registers_and_refreshes(fresh, result)
            assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0
        finally:
            await fresh.close()


async def test_the_ues_terminated_notify_ends_the_registration_when_ours_never_comes(
    home_network, subscribers
):
    """The P-CSCF's own NOTIFY never arrives (lost every time; as when its SUBSCRIBE
    reached the S-CSCF after the de-registration and was refused): the UE's terminated
    NOTIFY, answered by the UE, is the S-CSCF's word that the registration ended, and
    the P-CSCF releases its sets then instead of holding them until the registration's
    expiry."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        gate.notify_on = True  # ours, for good
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        assert await eventually(lambda: impi not in core.registrations, 5)
        assert core.counters["network-deregistration-seen-in-ue-notify"] == 1
        assert await eventually(lambda: net.pcscf.census()["sa_sets"] == 0, 5)
        assert gate.notifies  # ours was sent, and kept from the P-CSCF


async def test_the_network_end_arriving_after_the_new_registration_is_up(home_network, subscribers):
    """The P-CSCF learns nothing of the end before the UE has registered again over
    the same record (its own NOTIFY lost for now, the UE's answer to its NOTIFY too):
    the new registration is up, refreshes (challenged: `reauthenticate` is not asked
    here, the refresh's REGISTER is what is open), and only then does the late NOTIFY
    of the subscription made for the registration before arrive. It ends nothing: the
    new registration subscribed for itself when it came up.

    Before, the late NOTIFY found a REGISTER of the UE open and marked the record
    terminated; its answer took the new registration's sets with it."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        first_call_id = gate.call_id.decode()
        gate.notify_on = gate.answer_on = True
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        result = await ue.register(15)
        assert result.ok and result.protected, result
        reg = core.registrations[impi]
        assert reg.sa is not None and reg.previous is not None  # the old set, draining
        # a subscription of its own for the new registration
        assert await eventually(lambda: core._subscribed.get(impi, first_call_id) != first_call_id)
        # the refresh is open when the late NOTIFY comes
        gate.ok_on = True
        task = asyncio.ensure_future(ue.reregister(15))
        assert await eventually(lambda: core._register_open(impi, over_sa=True))
        gate.notify_on = gate.answer_on = False
        gate.let_through(gate.notifies)
        gate.let_through(gate.answers)
        assert await eventually(lambda: first_call_id not in core.subscriptions)
        assert core.registrations.get(impi) is reg and not reg.network_terminated
        gate.ok_on = False
        gate.let_through(gate.oks)
        again = await task
        assert again.ok and again.protected, again
        assert core.registrations.get(impi) is reg and reg.sa is not None
        assert (await ue.deregister(10)).ok
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0


async def test_the_ues_answer_to_its_notify_after_its_new_challenge(home_network, subscribers):
    """The P-CSCF's own NOTIFY never arrives; the UE, told by its NOTIFY, registers
    afresh over the same record, and the 200 it sent to that NOTIFY reaches the P-CSCF
    only after the new challenge (lost, then sent again): it ends the registration
    before, not the new one whose challenge response is on its way over the new
    temporary set."""
    net = home_network
    core = net.pcscf.core
    impi = subscribers[0].impi
    async with _scene(net, subscribers[0]) as (gate, ue):
        gate.notify_on = True  # ours, for good
        gate.answer_on = True  # the UE's 200 to its terminated NOTIFY, for now
        assert (await net.hss.deregister_impi(impi)).get("ok")
        assert await ue.wait_network_deregistration(10) == "rejected"
        assert await eventually(lambda: bool(gate.answers))
        gate.response_on = True
        task = asyncio.ensure_future(ue.register(15))
        assert await eventually(lambda: bool(gate.responses))
        reg = core.registrations[impi]
        assert reg.started_over and reg.temporary is not None
        gate.answer_on = False
        gate.let_through(gate.answers)
        assert core.counters["network-deregistration-seen-in-ue-notify"] == 1
        assert core.registrations.get(impi) is reg and reg.temporary is not None
        assert reg.sa is None  # the ended registration's set went
        gate.response_on = False
        gate.let_through(gate.responses)
        await _registers_and_refreshes(ue, await task)
        assert net.pcscf.backend.drops.get("esp-unknown-spi", 0) == 0
