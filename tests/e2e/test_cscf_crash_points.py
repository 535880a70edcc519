"""An S-CSCF on Redis bindings, or the I-CSCF, crashing after any message of a UE's
registration, of its refresh or of its de-registration (TS 24.229 §5.3.1, §5.4.1;
the store as docs/home-network.md describes it): the UE ends registered, refreshes
and de-registers, never refused for a reason that is not its own, and afterwards
nothing is left: no binding in Redis, no SA set or registration at the P-CSCF.

The function's SIP input is numbered from the operation's first REGISTER; right
after datagram C it stops as in a crash (no drain) and a new one starts on the same
ports (the S-CSCF on the same prefix). The UE is imsaka's own with timers 10 times
faster than the product's."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from imsaka.cscf.registrar import RedisBindingStore
from imsaka.network import Network, NetworkOptions, make_subscribers
from imsaka.ue.client import UeClient
from tests.e2e.test_pcscf_crash_points import FAST, _statuses
from tests.polling import eventually

pytestmark = pytest.mark.redis

# The S-CSCF's input: per registration its two REGISTERs, the P-CSCF's and the UE's
# SUBSCRIBEs and the 200s to their NOTIFYs; per refresh its REGISTER; per
# de-registration its REGISTER and the 200s to the two final NOTIFYs.
STEPS = {"register": 6, "reregister": 1, "deregister": 3}
# The I-CSCF's: each REGISTER and its final answer (the SUBSCRIBEs go by the
# Service-Route, the NOTIFYs from the S-CSCF straight to the P-CSCF).
ICSCF_STEPS = {"register": 4, "reregister": 2, "deregister": 2}


class _Gate:
    """The S-CSCF's SIP input, counted once `armed`; a crash after datagram `crash_after`."""

    def __init__(self, endpoint: Any, restart: Any, crash_after: int) -> None:
        self.restart, self.crash_after = restart, crash_after
        self.armed = False
        self.count = 0
        self.crashed: asyncio.Future | None = None
        self.receive = endpoint._on_message
        for transport in endpoint.transports:
            transport.set_receiver(self)

    def __call__(self, data: bytes, source: Any, transport: Any) -> None:
        if self.crashed is not None:
            return  # (lost with it)
        self.receive(data, source, transport)
        if self.armed and data[:1].isalpha():  # (a request or a response, not a CRLF)
            self.count += 1
            if self.count == self.crash_after:
                self.crashed = asyncio.ensure_future(self.restart())


async def _crash_during(
    subscriber, redis_url: str, step: str, crash_after: int, function: str = "scscf"
) -> tuple:
    prefix = f"imsaka:e2e:{os.getpid()}:{os.urandom(4).hex()}:"
    net = Network([subscriber], NetworkOptions(extra={"scscf": {"binding_store": redis_url}}))
    await net.start()

    async def restart(crash: bool = True) -> None:
        if function == "icscf" and crash:
            await net.restart_icscf()
        else:
            await net.restart_scscf(RedisBindingStore(redis_url, prefix=prefix), crash=crash)

    try:
        await restart(crash=False)  # the S-CSCF on the test's own prefix
        seen: list = []
        async with UeClient(net.ue_config(subscriber), observers=[seen.append], timers=FAST) as ue:
            gate = _Gate(getattr(net, function).endpoint, restart, crash_after)
            if step != "register":
                assert (await ue.register(20)).ok
                assert await ue.wait_subscribed()
                await asyncio.sleep(0.3)  # (the P-CSCF's own subscription too)
            gate.armed = True
            seen.clear()
            if step == "register":
                first = await ue.register(20)
                if not first.ok:
                    assert first.status == 408, first
                    assert (await ue.register(20)).ok
            elif step == "reregister":
                first = await ue.reregister(20)
                assert first.ok, first
            if step != "deregister":
                if gate.crashed is not None:
                    await gate.crashed
                assert (await ue.reregister(20)).ok
            last = await ue.deregister(20)
            assert last.ok, last
            if gate.crashed is not None:
                await gate.crashed
        store = RedisBindingStore(redis_url, prefix=prefix)
        try:
            assert await eventually(lambda: net.pcscf.census()["registrations"] == 0, 10)
            assert net.pcscf.census()["sa_sets"] == 0, net.pcscf.census()
            for impu in subscriber.impus:
                assert await store.get(impu) is None, impu
        finally:
            await store.clear()
            await store.close()
        return _statuses(seen), gate.count
    finally:
        await net.stop()


@pytest.mark.parametrize(
    ("step", "crash"), [(step, c) for step, n in STEPS.items() for c in range(1, n + 1)]
)
async def test_an_scscf_crash_after_any_message(subscribers, redis_url, step, crash):
    statuses, count = await _crash_during(subscribers[0], redis_url, step, crash)
    assert count >= crash  # (it did crash there)
    refused = [s for s in statuses if s >= 400 and s != 401]
    assert not refused, statuses


@pytest.mark.parametrize(
    ("step", "crash"), [(step, c) for step, n in ICSCF_STEPS.items() for c in range(1, n + 1)]
)
async def test_an_icscf_crash_after_any_message(subscribers, redis_url, step, crash):
    statuses, count = await _crash_during(subscribers[0], redis_url, step, crash, "icscf")
    assert count >= crash
    refused = [s for s in statuses if s >= 400 and s != 401]
    assert not refused, statuses


if __name__ == "__main__":  # (python -m tests.e2e.test_cscf_crash_points)
    import logging
    import sys

    logging.basicConfig(level=logging.ERROR)

    async def main() -> None:
        (sub,) = make_subscribers(1, seed=2026)
        for function, steps in (("scscf", STEPS), ("icscf", ICSCF_STEPS)):
            for step, n in steps.items():
                for crash in range(1, n + 1):
                    try:
                        got = await _crash_during(
                            sub, "redis://127.0.0.1:6379/15", step, crash, function
                        )
                        print(function, step, crash, *got, flush=True)
                    except AssertionError as exc:
                        print(function, step, crash, "FAILED", str(exc)[:300], flush=True)

    asyncio.run(main())
    sys.exit(0)
