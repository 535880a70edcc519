"""Baseline for benchmarks/registration.py: bare UDP request/response through three asyncio
forwarders, each its own process like the P-CSCF, I-CSCF and S-CSCF of the real run.

    client → fwd → fwd → fwd → echo      (requests)
    client ← fwd ← fwd ← fwd ← echo      (responses)

Each forwarder keeps the least state a stateful proxy needs to route a response back
(request id → previous hop, the shape of a transaction table: RFC 3261 §17.2 without
the timers) and nothing else: no parsing, no crypto, no Diameter. So the ratio of a
registration's cost to two of these round trips (a registration is two REGISTER
transactions through P-CSCF, I-CSCF and S-CSCF) is what imsaka's SIP, IPsec, AKA and
Cx handling cost above the asyncio floor.

Run as a child process (``python _forwarders.py fwd NEXT_PORT`` / ``echo``): prints
``ready PORT`` once bound and runs until SIGTERM. `run_baseline` starts the four
children, drives them from this process with a windowed client and reads their CPU
time from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
_ID = struct.Struct(">Q")
_TICK = os.sysconf("SC_CLK_TCK")


def install_uvloop() -> bool:
    """uvloop as the event loop policy where installed (the issue asks for it)."""
    try:
        import uvloop
    except ImportError:
        return False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        uvloop.install()
    return True


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# --------------------------------------------------------------------------- children


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.transport.sendto(data, addr)


class _Downstream(asyncio.DatagramProtocol):
    """Socket towards the next hop: responses come back here."""

    def __init__(self, owner: _Forwarder) -> None:
        self.owner = owner

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        prev = self.owner.routes.pop(data[:8], None)
        if prev is not None:
            self.owner.transport.sendto(data, prev)


class _Forwarder(asyncio.DatagramProtocol):
    """Socket towards the previous hop: requests arrive here."""

    def __init__(self, next_hop: tuple[str, int]) -> None:
        self.next_hop = next_hop
        self.routes: dict[bytes, tuple[str, int]] = {}
        self.down: _Downstream | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.routes[data[:8]] = addr
        self.down.transport.sendto(data, self.next_hop)


async def _child(kind: str, next_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "echo":
        transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(HOST, 0))
        closers = [transport]
    else:
        fwd = _Forwarder((HOST, next_port))
        transport, _ = await loop.create_datagram_endpoint(lambda: fwd, local_addr=(HOST, 0))
        down_t, down = await loop.create_datagram_endpoint(
            lambda: _Downstream(fwd), local_addr=(HOST, 0)
        )
        fwd.down = down
        closers = [transport, down_t]
    print(f"ready {transport.get_extra_info('sockname')[1]}", flush=True)
    await stop.wait()
    for t in closers:
        t.close()


# --------------------------------------------------------------------------- driver


class _Client(asyncio.DatagramProtocol):
    """Keeps `window` requests in flight until `total` answers came back; or, with a
    `rate`, sends request i at start + i / rate whatever came back (open loop, as the
    registration benchmark offers its load)."""

    def __init__(self, total: int, window: int, target, size: int, rate: float | None) -> None:
        self.total = total
        self.window = window
        self.target = target
        self.rate = rate
        self.body = b"x" * max(0, size - 8)
        self.sent = 0
        self.got = 0
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def start(self) -> None:
        if self.rate:
            self.started = self.loop.time()
            self._paced()
            return
        for _ in range(min(self.window, self.total)):
            self._send()

    def _paced(self) -> None:
        now = self.loop.time()
        while self.sent < self.total and self.started + self.sent / self.rate <= now:
            self._send()
        if self.sent < self.total:
            self.loop.call_at(self.started + self.sent / self.rate, self._paced)

    def _send(self) -> None:
        self.transport.sendto(_ID.pack(self.sent) + self.body, self.target)
        self.sent += 1

    def datagram_received(self, data, addr) -> None:
        self.got += 1
        if self.got >= self.total:
            if not self.done.done():
                self.done.set_result(None)
        elif self.sent < self.total and not self.rate:
            self._send()


def _start_child(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"baseline child {args} did not start: {line!r}")
    return proc, int(line.split()[1])


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def run_baseline(
    round_trips: int,
    *,
    window: int = 64,
    size: int = 700,
    timeout: float = 60.0,
    rate: float | None = None,
) -> dict:
    """`round_trips` request/response pairs through three forwarder processes: as fast
    as `window` requests in flight allow, or paced at `rate` round trips per second.

    Returns throughput, CPU seconds per round trip per child and of this process, and
    how many answers came back (a lost datagram would stall one window slot).

    Paced, the CPU per round trip is the floor at that message rate: each datagram that
    finds a process idle wakes it, and on this kind of machine such a wake-up costs more
    than the forwarding itself (the same forwarders spent 600 µs per round trip at
    100/s and 133 µs at 3,000/s)."""
    procs: list[subprocess.Popen] = []
    try:
        echo, port = _start_child(["echo"])
        procs.append(echo)
        for _ in range(3):
            p, port = _start_child(["fwd", str(port)])
            procs.append(p)
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            lambda: _Client(round_trips, window, (HOST, port), size, rate), local_addr=(HOST, 0)
        )
        names = ["echo", "fwd3", "fwd2", "fwd1"]
        before = {n: cpu_seconds(p.pid) for n, p in zip(names, procs, strict=True)}
        self_before = time.process_time()
        start = time.perf_counter()
        client.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.done, timeout)
        elapsed = time.perf_counter() - start
        self_cpu = time.process_time() - self_before
        after = {n: cpu_seconds(p.pid) for n, p in zip(names, procs, strict=True)}
        transport.close()
    finally:
        _stop(procs)
    got = max(client.got, 1)
    cpu = {n: (after[n] - before[n]) / got for n in names}
    return {
        "round_trips": round_trips,
        "answered": client.got,
        "window": None if rate else window,
        "paced_round_trips_per_s": rate,
        "datagram_bytes": size,
        "seconds": elapsed,
        "round_trips_per_s": client.got / elapsed,
        "cpu_s_per_round_trip": {
            "fwd1": cpu["fwd1"],
            "fwd2": cpu["fwd2"],
            "fwd3": cpu["fwd3"],
            "echo": cpu["echo"],
            "client": self_cpu / got,
        },
        "forwarders_cpu_s_per_round_trip": cpu["fwd1"] + cpu["fwd2"] + cpu["fwd3"] + cpu["echo"],
    }


if __name__ == "__main__":
    install_uvloop()
    kind = sys.argv[1]
    if kind not in ("echo", "fwd"):
        sys.exit(f"usage: {sys.argv[0]} echo | fwd NEXT_PORT")
    asyncio.run(_child(kind, int(sys.argv[2]) if kind == "fwd" else 0))
