"""The P-CSCF and the IPsec backend on uvloop (the benchmark's event loop).

uvloop's `call_at` returns a plain Handle without `when()` when the deadline is
already past; the timer code must not ask the handle for its deadline.
"""

from __future__ import annotations

import asyncio

import uvloop

from imsaka.cscf.pcscf import Arrival, _Pending
from imsaka.ipsec import SaState, UserspaceBackend
from tests.ipsec.helpers import negotiate
from tests.polling import eventually

from .test_edge_loopback import _network, _ue


def _run(coro):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_pcscf_registers_and_expires_on_uvloop():
    async def main():
        from imsaka.trace import Trace
        from imsaka.ue.client import UeClient

        loop = asyncio.get_running_loop()
        trace = Trace()
        reg, p = await _network(trace)
        ue = UeClient(_ue(p.address), observers=[trace])
        try:
            # A transaction context already past its Timer F: armed twice in a row,
            # the second arm must not ask uvloop's past-deadline Handle for when().
            p.core._add_pending(
                "z9hG4bKstale",
                _Pending(
                    arrival=Arrival(("127.0.0.1", 9)),
                    ue_branch="",
                    kind="request",
                    impi="",
                    created=loop.time() - 100.0,
                ),
            )
            p._arm()
            p._arm()
            await ue.start()
            res = await ue.register(timeout=10)
            assert res.ok and res.protected, res
            assert "z9hG4bKstale" not in p.core.pending  # the past timer fired
            assert p.internal_errors == 0
            res = await ue.reregister(timeout=10)
            assert res.ok, res
            dres = await ue.deregister(timeout=10)
            assert dres.ok, dres
            assert await eventually(
                lambda: p.stats()["sa_sets"] == 0 and p.stats()["registrations"] == 0
            )
            assert p.internal_errors == 0
        finally:
            await ue.close()
            await p.close()
            await reg.close()

    _run(main())


def test_backend_expiry_timer_on_uvloop():
    async def main():
        loop = asyncio.get_running_loop()
        n = negotiate(now=loop.time())
        async with UserspaceBackend(n.pcscf) as pc:
            # Lifetime already over: call_at gets a past deadline; sync again at once.
            n.pcscf_set.expires_at = loop.time() - 1.0
            pc.sync()
            pc.sync()
            assert await eventually(
                lambda: n.pcscf_set.state is SaState.REMOVED and pc.bound_ports() == []
            )

    _run(main())


async def test_ue_binds_its_offered_ports_at_the_offer():
    """The ports in Security-Client are bound when offered (not after the 401), so no
    other socket on the host can take them in between; a re-offer gives back the
    previous port-c but keeps port-s while a set is live (TS 24.229 §5.1.1.4.2)."""
    import socket

    from imsaka.trace import Trace
    from imsaka.ue.client import UeClient

    trace = Trace()
    reg, p = await _network(trace)
    ue = UeClient(_ue(p.address), observers=[trace])
    try:
        await ue.start()
        port_c, port_s = ue._protected_ports()
        assert {port_c, port_s} <= set(ue.backend.bound_ports())
        for port in (port_c, port_s):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                try:
                    other.bind(("127.0.0.1", port))
                except OSError:
                    pass
                else:
                    raise AssertionError(f"port {port} was free for another socket")
        res = await ue.register(timeout=10)
        assert res.ok and res.protected, res
        live = ue._current_set()
        used_c, used_s = live.ue_ports.port_c, live.ue_ports.port_s
        assert port_c not in ue.backend.bound_ports() or port_c in (used_c, used_s)
        new_c, new_s = ue._protected_ports()
        assert new_s == used_s and new_c != used_c
        assert new_c in ue.backend.bound_ports() and used_c in ue.backend.bound_ports()
        dres = await ue.deregister(timeout=10)
        assert dres.ok, dres
    finally:
        await ue.close()
        await p.close()
        await reg.close()
    assert ue.backend.bound_ports() == []
