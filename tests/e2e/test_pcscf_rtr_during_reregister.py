"""A network-initiated de-registration (RTR from the HSS → the S-CSCF's terminated
reg-event NOTIFYs, RFC 3680) while the UE's re-REGISTER is open at the P-CSCF, through
the whole core on loopback with the userspace ESP backend (TS 33.203 §7.4, TS 24.229
§5.2.2): the 200 OK to that re-REGISTER, held back upstream of the P-CSCF until the
NOTIFYs have passed, still leaves over the UE's SA; then the set is held for the
re-REGISTER's retransmissions (`dereg_grace`, shortened here) and released once.
Before, the set was released with that 200 and nothing answered a retransmission.
With the UE's own terminated NOTIFY held back too and let through after the 200, it
still reaches the UE, over the held set (TS 24.229 §5.1.1.7)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow

GRACE = 2.0


@dataclass
class _Race:
    """What the P-CSCF's input hook kept back once `armed`: the first 200 OK to a
    REGISTER from upstream, and (with `notify`) the UE's own terminated NOTIFY."""

    notify: bool
    armed: bool = False
    ok: list = field(default_factory=list)
    ue_notify: list = field(default_factory=list)

    def keeps(self, data: bytes, arrival: Any) -> bool:
        if not self.armed:
            return False
        head = data.split(b"\r\n\r\n", 1)[0]
        if not self.ok and head.startswith(b"SIP/2.0 200") and b" REGISTER" in head:
            self.ok.append((data, arrival))
            return True
        # the UE's NOTIFY is routed through us (Route: our Record-Route); ours is not
        if (
            self.notify
            and head.startswith(b"NOTIFY ")
            and b"terminated" in head
            and b"\r\nRoute:" in head
        ):
            self.ue_notify.append((data, arrival))
            return True
        return False


@asynccontextmanager
async def _re_register_during_rtr(net, subscriber, notify: bool) -> AsyncIterator[tuple]:
    """A registered UE re-registers; its 200 (and with `notify` its own terminated
    NOTIFY) is kept back at the P-CSCF's input; the HSS de-registers it, and the
    P-CSCF's own terminated NOTIFY goes through while the re-REGISTER is open. Yields
    (ue, race, the re-REGISTER's task, the P-CSCF's real input)."""
    pcscf = net.pcscf
    pcscf.core.dereg_grace = GRACE
    impi = subscriber.impi
    ue = UeClient(net.ue_config(subscriber), observers=[net.trace])
    race = _Race(notify)
    incoming = pcscf._incoming

    def hook(data: bytes, arrival) -> None:
        if not race.keeps(data, arrival):
            incoming(data, arrival)

    pcscf._incoming = hook
    rereg = None
    try:
        await ue.start()
        assert (await ue.register(10)).ok
        assert await eventually(lambda: pcscf.core.counters["reg-subscribed"] == 1)
        if notify:
            assert await eventually(lambda: ue.subscribed)
        race.armed = True
        rereg = asyncio.ensure_future(ue.reregister(4))
        assert await eventually(lambda: bool(race.ok)), "the re-REGISTER's 200 never came"
        result = await net.hss.deregister_impi(impi)
        assert result.get("ok"), result
        if notify:
            assert await eventually(lambda: bool(race.ue_notify)), "the UE's NOTIFY never came"
        assert await eventually(
            lambda: (
                impi in pcscf.core.registrations
                and pcscf.core.registrations[impi].network_terminated
            )
        )
        yield ue, race, rereg, incoming
    finally:
        pcscf._incoming = incoming
        if rereg is not None and not rereg.done():
            await asyncio.wait([rereg], timeout=5)
        await ue.close()


async def test_rtr_during_a_re_register_its_200_leaves_protected_then_the_set_is_held(
    home_network, subscribers
):
    net = home_network
    pcscf = net.pcscf
    async with _re_register_during_rtr(net, subscribers[0], notify=False) as (_, race, _t, inp):
        assert pcscf.census()["sa_sets"] == 1
        sent_before = len(net.trace.messages("sip"))
        inp(*race.ok[0])
        answers = [
            r
            for r in net.trace.messages("sip")[sent_before:]
            if r.src_name == "P-CSCF" and r.dst_name == "UE" and r.summary.startswith("200")
        ]
        assert len(answers) == 1 and answers[0].esp_spi is not None, answers
        census = pcscf.census()
        assert census["registrations"] == 0 and census["sa_sets"] == 0, census
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 1, census
        assert await eventually(lambda: not pcscf.table.sets(), GRACE + 3.0)
        census = pcscf.census()
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 0, census
        assert not pcscf._held and not pcscf._held_outbound and not pcscf._sets
        assert pcscf.internal_errors == 0


async def test_rtr_during_a_re_register_the_ues_own_notify_after_the_200_still_reaches_it(
    home_network, subscribers
):
    """The UE, which has just had its re-REGISTER accepted, learns of the network's
    de-registration from its own NOTIFY over the held set (it had been answered 404)."""
    net = home_network
    pcscf = net.pcscf
    async with _re_register_during_rtr(net, subscribers[0], notify=True) as (ue, race, rereg, inp):
        inp(*race.ok[0])  # the 200 first: the set is held after it
        assert (await asyncio.wait_for(rereg, 5)).ok
        assert pcscf.census()["registrations"] == 0
        inp(*race.ue_notify[0])  # then the UE's own NOTIFY
        assert await ue.wait_network_deregistration(5.0)
        assert pcscf.core.counters["terminating-end-over-held-set"] == 1
        assert pcscf.core.counters["terminating-not-registered"] == 0
        assert await eventually(lambda: pcscf.core.pending_to_ue() == 0)
        assert await eventually(lambda: not pcscf.table.sets(), GRACE + 3.0)
        assert pcscf.internal_errors == 0
