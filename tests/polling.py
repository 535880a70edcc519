"""Waiting, in tests over real sockets and timers, for what happens next.

A fixed sleep before an assertion passes on an idle machine and fails on a loaded one
(a CI run beside other work); polling a predicate up to a generous bound costs the
same on the first and holds on the second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.02
) -> bool:
    """True once `predicate()` is, polling every `step` s; its last value after `timeout` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())
