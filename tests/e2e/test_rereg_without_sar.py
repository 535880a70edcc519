"""Across the whole core with `[scscf].reregistration_sar = "when-needed"`: a protected
re-registration is answered without a Cx SAR (TS 23.228 §5.2.2.4), the UE keeps its SAs
and identities, and a de-registration still tells the HSS (USER_DEREGISTRATION)."""

from __future__ import annotations

import pytest

from imsaka.network import Network, NetworkOptions
from imsaka.ue.client import UeClient
from tests.polling import eventually

pytestmark = pytest.mark.slow


def _cx(net: Network, command: str) -> list[str]:
    return [r.summary for r in net.trace.messages("diameter") if r.summary.startswith(command)]


async def test_reregistration_without_sar_then_deregistration(subscribers):
    options = NetworkOptions(extra={"scscf": {"reregistration_sar": "when-needed"}})
    net = Network(subscribers, options)
    await net.start()
    ue = UeClient(net.ue_config(subscribers[2]), observers=[net.trace])
    await ue.start()
    try:
        first = await ue.register(10)
        assert first.ok, first
        sars, uars = len(_cx(net, "SAR")), len(_cx(net, "UAR"))
        assert sars == 1
        for _ in range(2):
            res = await ue.reregister(10)
            assert res.ok and res.protected, res
            assert res.associated_uris == first.associated_uris
        assert len(_cx(net, "SAR")) == sars  # no SAR RE_REGISTRATION
        assert len(_cx(net, "UAR")) == uars + 2  # the I-CSCF still asks (TS 24.229 §5.3.1.2)
        assert net.scscf.scscf.core.counters["reregister_without_sar"] == 2
        assert net.scscf.scscf.core.counters["reregistered"] == 2
        res = await ue.deregister(10)
        assert res.ok, res
        # USER_DEREGISTRATION reached the HSS
        assert await eventually(lambda: len(_cx(net, "SAR")) == sars + 1)
        assert net.scscf.scscf.core.pending_counts()["registrations"] == 0
        assert net.pcscf.stats()["sa_sets"] == 0
    finally:
        await ue.close()
        await net.stop()
