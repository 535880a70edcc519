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

import pytest

from imsaka.network import Network, NetworkOptions
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


async def test_the_answer_to_a_request_over_the_replaced_set_goes_back_over_it(
    reauthenticating_network, subscribers
):
    net = reauthenticating_network
    net.pcscf.core.superseded_drain = DRAIN
    seen: list = []
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    ue.on_event = seen.append
    await ue.start()
    try:
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(5)
        old_spi = ue.core.sa.spi_uc  # the UE's inbound SPI at its client port
        held, let_in = _hold_subscribe_answers(net)
        loop = asyncio.get_running_loop()
        now = loop.time()
        ue._apply([ue.core._build_subscribe(ue.core.subscription, now)])  # the refresh
        ue._drain(now)
        assert await eventually(lambda: len(held) >= 1, 5.0)
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
        answers = [
            r
            for r in net.trace.messages("sip")
            if r.src_name == "P-CSCF"
            and r.dst_name == "UE"
            and any(k.lower() == "cseq" and v.endswith(" SUBSCRIBE") for k, v in r.headers)
        ]
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
    finally:
        await ue.close()
