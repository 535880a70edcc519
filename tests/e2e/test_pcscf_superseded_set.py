"""A transaction open over the SA set a challenged re-registration replaced (TS 33.203
§7.4; TS 24.229 §5.1.1.5.1 at the UE, mirrored at the P-CSCF), through the whole core on
loopback with the userspace ESP backend.

The registered UE refreshes its reg-event SUBSCRIBE over its set; the 2xx to it is held
back at the P-CSCF's core-side input while the UE re-registers, is challenged (the
S-CSCF's `reauthenticate = "always"`) and moves to a new set. The 2xx then reaches the
P-CSCF: it goes to the UE over the old set, protected. Before, the old set went with the
200 OK to the re-REGISTER and that 2xx left in the clear towards the UE's protected
client port. The old set is released once its drain (shortened here) has run.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from imsaka.network import Network, NetworkOptions
from imsaka.sip import parse_message
from imsaka.ue.client import UeClient
from imsaka.ue.core import Subscribed
from tests.e2e.test_faults import eventually

pytestmark = pytest.mark.slow

DRAIN = 5.0  # past the census reads below on a loaded machine


@pytest.fixture
async def reauthenticating_network(subscribers):
    net = Network(
        subscribers,
        NetworkOptions(visited=False, extra={"scscf": {"reauthenticate": "always"}}),
    )
    await net.start()
    try:
        yield net
    finally:
        await net.stop()


def _hold_subscribe_answers(net):
    """Answers to SUBSCRIBEs that come to the P-CSCF from the core (the first and the
    S-CSCF's retransmissions of it) are kept back until `let_in()`, which lets the
    first of them in and every later one pass. Returns (held, let_in)."""
    pcscf = net.pcscf
    original = pcscf._incoming
    held: list = []
    open_ = [False]

    def incoming(data, arrival):
        answer = arrival.spi is None and data.startswith(b"SIP/2.0 2")
        if answer and not open_[0] and b" SUBSCRIBE\r\n" in data:
            held.append((data, arrival))
            return
        original(data, arrival)

    def let_in():
        open_[0] = True
        original(*held[0])

    pcscf._incoming = incoming
    return held, let_in


@contextlib.asynccontextmanager
async def _subscribed_ue(net, subscriber):
    """A UE registered with its reg-event subscription up, and the list of its
    events; closed after, also on failure."""
    seen: list = []
    ue = UeClient(net.ue_config(subscriber), observers=[net.trace])
    ue.on_event = seen.append
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        yield ue, seen
    finally:
        await ue.close()


async def _refresh_held_back(net, ue: UeClient):
    """The registered UE refreshes its reg-event SUBSCRIBE over its set; the 2xx is
    held back at the P-CSCF (`_hold_subscribe_answers`). Returns `let_in`."""
    held, let_in = _hold_subscribe_answers(net)
    now = asyncio.get_running_loop().time()
    ue._apply([ue.core._build_subscribe(ue.core.subscription, now)])
    ue._drain(now)
    assert await eventually(lambda: len(held) >= 1, 5.0)
    return let_in


def _subscribe_answers_to_ue(net) -> list:
    """The answers to SUBSCRIBEs the P-CSCF sent the UE, in order."""
    return [
        r
        for r in net.trace.messages("sip")
        if r.src_name == "P-CSCF"
        and r.dst_name == "UE"
        and any(k.lower() == "cseq" and v.endswith(" SUBSCRIBE") for k, v in r.headers)
    ]


async def test_the_answer_to_a_request_over_the_replaced_set_goes_back_over_it(
    reauthenticating_network, subscribers
):
    net = reauthenticating_network
    net.pcscf.core.superseded_drain = DRAIN
    async with _subscribed_ue(net, subscribers[0]) as (ue, seen):
        old_spi = ue.core.sa.spi_uc  # the UE's inbound SPI at its client port
        let_in = await _refresh_held_back(net, ue)
        before = len([e for e in seen if isinstance(e, Subscribed)])
        res = await ue.reregister(10)
        assert res.ok and res.protected, res
        assert ue.core.sa.spi_uc != old_spi  # challenged: a new set
        census = net.pcscf.census()
        assert census["sa_sets"] == 1 and census["sa_sets_in_grace"] == 1, census
        assert census["sas_in_grace_records"] == 1, census
        let_in()
        refreshed = lambda: len([e for e in seen if isinstance(e, Subscribed)]) > before  # noqa: E731
        assert await eventually(refreshed, 5.0), seen[-5:]
        answers = _subscribe_answers_to_ue(net)
        assert answers[-1].esp_spi == old_spi, answers[-1]
        assert all(r.esp_spi is not None for r in answers), answers
        stats = net.pcscf.stats()
        assert "reply-over-removed-sa" not in stats["drops"], stats["drops"]
        # the drain runs out: the old set goes, in the table and the core, once
        assert await eventually(lambda: net.pcscf.census()["sa_sets_in_grace"] == 0, DRAIN + 3)
        census = net.pcscf.census()
        assert census["sa_sets"] == 1 and census["sas_in_grace_records"] == 0, census
        assert len(net.pcscf.table.sets()) == 1 and not net.pcscf._held
        assert net.pcscf.internal_errors == 0


async def test_the_answer_goes_back_over_a_set_replaced_twice_meanwhile(
    reauthenticating_network, subscribers
):
    """As above with two challenged re-registrations while the 2xx is held back: the
    first set, replaced twice within its drain, is held for the SUBSCRIBE still open
    over it, and the 2xx reaches the UE over it (before: the second re-registration
    released it at once, the 2xx went nowhere, `reply-over-removed-sa`, and the UE's
    refresh ran out; chaos seed 10152)."""
    net = reauthenticating_network
    net.pcscf.core.superseded_drain = DRAIN
    async with _subscribed_ue(net, subscribers[0]) as (ue, seen):
        old_spi = ue.core.sa.spi_uc  # the UE's inbound SPI at its client port
        let_in = await _refresh_held_back(net, ue)
        before = len([e for e in seen if isinstance(e, Subscribed)])
        for _ in range(2):
            res = await ue.reregister(10)
            assert res.ok and res.protected, res
        census = net.pcscf.census()
        assert census["sa_sets"] == 1 and census["sa_sets_in_grace"] == 2, census
        assert net.pcscf.core.counters["superseded-set-held-for-open-transaction"] == 1
        let_in()
        refreshed = lambda: len([e for e in seen if isinstance(e, Subscribed)]) > before  # noqa: E731
        assert await eventually(refreshed, 5.0), seen[-5:]
        answers = _subscribe_answers_to_ue(net)
        assert answers[-1].esp_spi == old_spi, answers[-1]
        assert "reply-over-removed-sa" not in net.pcscf.stats()["drops"]
        assert net.pcscf.internal_errors == 0


async def test_a_notify_answered_before_a_challenged_refresh_is_answered_again_over_the_new_set(
    reauthenticating_network, subscribers
):
    """The UE's 200 to a NOTIFY over its set is lost; the UE then re-registers, is
    challenged and moves to a new set, deleting the old one (nothing of its own open on
    it). The P-CSCF's Timer E copy of the NOTIFY takes the new set (the old one is
    gone at the UE), the UE's transaction sends its 200 again, over the new set, and the
    S-CSCF's NOTIFY transaction ends with it. Before, the copies went into the old
    set's SPI, then (P-CSCF fixed) the UE's answer was "not sent: SA set removed"."""
    net = reauthenticating_network
    ue = UeClient(net.ue_config(subscribers[1]), observers=[net.trace])
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        old_spi = ue.core.sa.spi_us  # the UE's inbound SPI at its server port
        dropping = [True]
        lost: list = []
        send = ue.send_protected

        lost_spi: list = []

        def lossy(sa, data):
            if dropping[0] and data.startswith(b"SIP/2.0 200") and b" NOTIFY\r\n" in data:
                lost.append(data)
                lost_spi.append(sa.spi)
                return True
            return send(sa, data)

        ue.send_protected = lossy
        before = len(_notifies_to_ue(net))
        # the UE refreshes its subscription: the S-CSCF's NOTIFY follows the 200
        loop = asyncio.get_running_loop()
        now = loop.time()
        ue._apply([ue.core._build_subscribe(ue.core.subscription, now)])
        ue._drain(now)
        assert await eventually(lambda: lost, 5.0)
        res = await ue.reregister(10)
        assert res.ok and res.protected, res
        assert ue.core.sa.spi_us != old_spi  # challenged: a new set, the old one gone
        dropping[0] = False
        # the P-CSCF's next copy goes over the new set; the UE's 200 reaches the S-CSCF
        assert await eventually(
            lambda: any(r.esp_spi == ue.core.sa.spi_us for r in _notifies_to_ue(net)[before:]),
            8.0,
        ), [(r.time, r.esp_spi) for r in _notifies_to_ue(net)[before:]]
        lost_msg = parse_message(lost[0])
        key = (lost_msg.call_id, lost_msg.get("cseq"))
        assert await eventually(lambda: _answers_from_ue(net, key), 8.0), (
            key,
            [(r.time, r.summary, r.esp_spi) for r in net.trace.messages("sip")[-30:]],
        )
        # it came over the new set (the P-CSCF's inbound SPI at its client port)
        assert _answers_from_ue(net, key)[-1].esp_spi != lost_spi[0]
        assert net.pcscf.core.counters["retransmitted-over-new-set"] >= 1
        assert net.pcscf.internal_errors == 0
    finally:
        await ue.close()


def _notifies_to_ue(net) -> list:
    return [
        r
        for r in net.trace.messages("sip")
        if r.src_name == "P-CSCF" and r.dst_name == "UE" and r.summary.startswith("NOTIFY")
    ]


def _answers_from_ue(net, key) -> list:
    """The UE's answers (UE → P-CSCF) to the NOTIFY with this (Call-ID, CSeq)."""
    out = []
    for r in net.trace.messages("sip"):
        if r.src_name == "UE" and r.dst_name == "P-CSCF" and r.summary.startswith("200"):
            h = {k.lower(): v for k, v in r.headers}
            if (h.get("call-id"), h.get("cseq")) == key:
                out.append(r)
    return out
