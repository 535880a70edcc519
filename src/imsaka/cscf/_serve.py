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
    configuration) out of the cyclic garbage collector's sight (`gc.freeze`), so that
    its older-generation passes walk only what the server builds while it runs. The
    collection thresholds stay as they are: collecting young objects less often saved
    about 2 % of a CSCF's CPU but raised the peak memory per registered UE by ~0.8 KiB."""
    gc.collect()
    gc.freeze()


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
        drain = getattr(server, "drain", None)
        if drain is not None:  # what is under way ends first (the S-CSCF's NOTIFYs)
            await drain()
    finally:
        await server.stop()
    return 0
