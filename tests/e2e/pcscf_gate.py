"""A UE registering while the first datagram of a kind is held back at the P-CSCF's
input: for tests of what a restart between two messages does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from imsaka.ue.client import UeClient
from tests.polling import eventually


@asynccontextmanager
async def first_held(
    net,
    subscriber,
    match: Callable[[bytes], bool],
    seconds: float,
    keep: Callable[[bytes], bool] | None = None,
) -> AsyncIterator[tuple[UeClient, asyncio.Future, tuple[bytes, Any], Callable]]:
    """A UE of `subscriber` starts `register(seconds)`; the first datagram into the
    P-CSCF whose head (start line and headers) `match`es is held back. Yields, once it
    was: (the UE, its registration task, the held (data, arrival), the P-CSCF's own
    input to hand it in with). `keep(head)`: other datagrams held back from then on, to
    the end of the block; then the input is as before and the UE closed."""
    held: list[tuple[bytes, Any]] = []
    incoming = net.pcscf._incoming

    def gate(data: bytes, arrival) -> None:
        head = data.split(b"\r\n\r\n", 1)[0]
        if not held and match(head):
            held.append((data, arrival))
            return
        if held and keep is not None and keep(head):
            return
        incoming(data, arrival)

    net.pcscf._incoming = gate
    ue = UeClient(net.ue_config(subscriber), observers=[net.trace])
    try:
        await ue.start()
        task = asyncio.ensure_future(ue.register(seconds))
        assert await eventually(lambda: bool(held)), "nothing held"
        yield ue, task, held[0], incoming
    finally:
        net.pcscf._incoming = incoming
        await ue.close()


def lose_dereg_200(pcscf, *, every: bool = False) -> list[bytes]:
    """The 200 OK to a de-REGISTER lost on its way out of `pcscf` (its first copy, or
    `every` copy it sends: one that is about to crash); returns the list of those lost."""
    lost: list[bytes] = []
    send = pcscf.send_protected

    def gate(sa, data: bytes, final: bool = False) -> bool:
        if (every or not lost) and data.startswith(b"SIP/2.0 200") and b"expires=0" in data:
            lost.append(data)
            return True
        return send(sa, data, final)

    pcscf.send_protected = gate
    return lost
