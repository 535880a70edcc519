"""The 403 to a failed challenge response lost on Gm after it left the P-CSCF (TS 33.203
§7.4, RFC 3261 §17.2.2), through the whole core on loopback with the userspace ESP
backend.

The UE answers the challenge over its temporary SA set with a wrong RES; the S-CSCF
answers 403; the P-CSCF's ESP layer sends it over the temporary SA and counts it sent;
the datagram never reaches the UE, which retransmits its REGISTER over the same SA at
T1. The P-CSCF holds the temporary set for that REGISTER's retransmissions as it does a
de-REGISTER's (`pcscf.DEREGISTER_GRACE`, Timer J): the retransmission gets the cached
403 over it, and the set goes once the grace has run (shortened here). Before, the set
went with the first copy and the retransmission hit `esp-unknown-spi`: the UE timed out.
"""

from __future__ import annotations

import re

import pytest

from imsaka.ue.client import UeClient
from tests.e2e.test_dereg_lost_200 import lose_first_protected
from tests.polling import eventually

pytestmark = pytest.mark.slow

GRACE = 4.0  # past the UE's retransmission (T1) on a loaded machine


def _wrong_res(ue: UeClient) -> None:
    """The UE's challenge response (the protected REGISTER with a response) carries a
    response digest that is not the one for its RES."""
    original = ue.send_protected

    def send_protected(sa, data):
        if data.startswith(b"REGISTER") and re.search(rb'response="[0-9a-f]', data):
            data = re.sub(
                rb'response="([0-9a-f])',
                lambda m: b'response="' + (b"1" if m.group(1) == b"0" else b"0"),
                data,
                count=1,
            )
        return original(sa, data)

    ue.send_protected = send_protected


async def test_lost_403_is_answered_again_over_the_held_temporary_sa(home_network, subscribers):
    net = home_network
    net.pcscf.core.dereg_grace = GRACE
    lost = lose_first_protected(net, lambda data: data.startswith(b"SIP/2.0 403"))
    ue = UeClient(net.ue_config(subscribers[0]), observers=[net.trace])
    _wrong_res(ue)
    try:
        await ue.start()
        res = await ue.register(10)
        # the retransmission over the temporary SA got the 403: not a timeout
        assert not res.ok and res.status == 403, res
        assert len(lost) == 1
        stats = net.pcscf.stats()
        assert stats["answered-again-in-grace"] >= 1, stats
        assert "esp-unknown-spi" not in stats["esp_drops"], stats["esp_drops"]
        answers = [
            r
            for r in net.trace.messages("sip")
            if r.src_name == "P-CSCF" and r.dst_name == "UE" and r.summary.startswith("403")
        ]
        assert len(answers) >= 2 and all(r.esp_spi is not None for r in answers), answers
        census = net.pcscf.census()
        assert census["sa_sets"] == 0 and census["registrations"] == 0, census
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 1, census
        # the grace runs out: the set goes, in the table and in the core, exactly once
        assert await eventually(lambda: not net.pcscf.table.sets(), GRACE + 3.0)
        census = net.pcscf.census()
        assert census["sa_sets_in_grace"] == census["sas_in_grace_records"] == 0, census
        assert not net.pcscf._held and not net.pcscf._held_outbound and not net.pcscf._sets
        assert net.pcscf.internal_errors == 0
    finally:
        await ue.close()
