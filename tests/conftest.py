"""Fixtures shared by every test folder."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from pathlib import Path

import pytest

from imsaka import ports

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(__file__).resolve().parent / "data"


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A loopback port free now for `kind`, outside the kernel's ephemeral range."""
    return ports.free_port(host, udp=kind == socket.SOCK_DGRAM, tcp=kind == socket.SOCK_STREAM)


@pytest.fixture
def milenage_sets() -> list[dict]:
    """The 3GPP TS 35.208 Milenage test sets from shared/vectors."""
    path = SHARED / "vectors" / "milenage-ts35208.json"
    if not path.exists():  # CI lays shared/ beside the clone; a copy ships in tests/data
        path = DATA / "milenage-ts35208.json"
    return json.loads(path.read_text())["sets"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Shortly before pytest-timeout fails a test, print where each asyncio task
    waits: the timeout's own dump shows only threads, and an async test that hangs
    is always in the event loop's select, whatever it awaits."""
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else _ini_timeout(item.config)
    timer = None
    if limit > 20:
        timer = threading.Timer(limit - 15, _print_tasks)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def _ini_timeout(config) -> float:
    try:
        return float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    except (TypeError, ValueError):
        return 0.0


def _print_tasks() -> None:
    # (asyncio keeps no list of running loops; its task registry names them)
    loops = {task.get_loop() for task in list(asyncio.tasks._all_tasks) if not task.done()}
    for loop in loops:
        if loop.is_running() and not loop.is_closed():
            loop.call_soon_threadsafe(_print_stacks, loop)


def _print_stacks(loop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    print(f"--- {len(tasks)} asyncio tasks, where each waits ---", file=sys.stderr)
    for task in tasks:
        print(task, file=sys.stderr)
        # (Task.print_stack shows the task's outermost coroutine only)
        coro = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                frame = getattr(coro, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
            coro = (
                getattr(coro, "cr_await", None)
                or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None)
            )
