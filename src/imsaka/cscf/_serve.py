"""Run one CSCF server until SIGINT/SIGTERM (``imsaka run icscf|scscf``)."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import Any

from imsaka.clierror import CliError


def use_uvloop() -> None:
    """uvloop where installed (the ``fast`` extra): a cheaper event loop for a server."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    uvloop.install()


def settle_gc() -> None:
    """Once a server has started: move everything built so far (modules, tables,
    configuration) out of the cyclic garbage collector's sight (`gc.freeze`), and let
    it run less often. A server allocates many short-lived containers per message;
    with the default thresholds the collector ran every 700 of them and kept walking
    the whole start-up heap (about a tenth of a CSCF's CPU under load). Reference
    cycles are still collected, only later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


#: Allocations (minus frees) of container objects between two young collections.
GC_THRESHOLD = 20_000


async def serve_forever(server: Any, name: str) -> int:
    """Start `server` (``start()``/``stop()``, ``config`` with address/port/transports),
    print one ``listening`` line, wait for a signal, stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise CliError(
            f"[{name}].port: cannot listen on {server.config.port}: {exc.strerror or exc}"
        ) from None
    settle_gc()
    c = server.config
    print(
        f"{name} listening on {c.address}:{c.port} ({', '.join(c.transports)})",
        file=sys.stdout,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
