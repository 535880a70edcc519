"""A 200 OK to a de-REGISTER lost on Gm after it left the P-CSCF (RFC 3261 §17.2.2,
TS 33.203 §7.4), through the whole core on loopback with the userspace ESP backend.

The P-CSCF's ESP layer sends the protected 200 and counts it sent; the datagram never
reaches the UE. The UE retransmits its de-REGISTER over its SA at T1. The P-CSCF holds
that SA set for the de-REGISTER's retransmissions (`pcscf.DEREGISTER_GRACE`, Timer J)
outside its routing: the retransmission arrives over it and gets the cached 200 over
it, the UE ends de-registered with 200 (not 408 after Timer F), and the set goes when
the grace has run (shortened here to 4 s). Before, the set went with the first copy
and the retransmission hit `esp-unknown-spi`.
"""

from __future__ import annotations

import pytest

from imsaka.ue.client import UeClient
from tests.e2e.test_faults import eventually

pytestmark = pytest.mark.slow

GRACE = 4.0  # past the UE's retransmission (T1) on a loaded machine


class _LostOnTheWire:
    """Stands in for a protected port's socket for one datagram: `sendto` succeeds and
    the datagram is lost (as on a lossy link: the sender saw it go)."""

    def sendto(self, data: bytes, address: object) -> int:
        return len(data)


def _is_deregister_200(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.startswith(b"SIP/2.0 200") and b"REGISTER" in head and b"expires=0" in head


def _lose_first_deregister_200(net) -> list[bytes]:
    """The first protected 200 OK to a de-REGISTER leaves the P-CSCF's ESP layer (its
    table counts it sent) and is lost below it. Returns the list of lost messages."""
    return lose_first_protected(net, _is_deregister_200)


def lose_first_protected(net, chosen) -> list[bytes]:
    """The first protected message from the P-CSCF for which `chosen(data)` is true
    leaves its ESP layer (its table counts it sent) and is lost below it. Returns the
    list of lost messages."""
    pcscf = net.pcscf
    original = pcscf.send_protected
    lost: list[bytes] = []

    def send_protected(sa, data, final=False):
        if lost or not chosen(data):
            return original(sa, data, final)
        lost.append(data)
        port = pcscf.backend._ports[sa.src[1]]
        sock, port.sock = port.sock, _LostOnTheWire()
        try:
            return original(sa, data, final)
        finally:
            port.sock = sock

    pcscf.send_protected = send_protected
    return lost


async def test_dereg_200_lost_on_the_wire_is_answered_again_over_the_held_sa(
    home_network, subscribers
):
    net = home_network
    net.pcscf.core.dereg_grace = GRACE
    lost = _lose_first_deregister_200(net)
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    try:
        await ue.start()
        res = await ue.register(10)
        assert res.ok and res.protected, res
        res = await ue.deregister(10)
        # the retransmission over the old SA got the 200: not 408 / a timeout
        assert res.ok and res.status == 200, res
        assert len(lost) == 1
        stats = net.pcscf.stats()
        assert stats["deregister-answered-again-in-grace"] >= 1, stats
        assert "esp-unknown-spi" not in stats["esp_drops"], stats["esp_drops"]
        census = net.pcscf.census()
        # the set no longer serves the UE (nothing routes over it), counted apart
        assert census["sa_sets"] == 0 and census["registrations"] == 0, census
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 1, census
        assert not net.pcscf._by_outbound
        # the grace runs out: the set goes, in the table and in the core, exactly once
        assert await eventually(lambda: not net.pcscf.table.sets(), GRACE + 3.0)
        census = net.pcscf.census()
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 0, census
        assert not net.pcscf._held and not net.pcscf._held_outbound and not net.pcscf._sets
        assert net.pcscf.internal_errors == 0
        assert not ue.table.sets()
        # the same UE registers again at once (new SAs; the old SPIs are gone)
        res = await ue.register(10)
        assert res.ok and res.protected, res
        assert net.pcscf.census()["sa_sets"] == 1
    finally:
        await ue.close()
