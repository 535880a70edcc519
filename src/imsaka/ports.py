"""Free ports for generated configurations (the demo, the lab, tests, benchmarks).

A port that the kernel hands out for a bind to port 0 and that is then released can be
handed out again to the next socket bound to port 0 before its owner binds it for real:
a P-CSCF configured with such a port-c failed with EADDRINUSE when a UE or a Diameter
client of the same run took it in between. Ports are therefore drawn from 8200-11999,
below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``, which no port-0
bind ever takes) and clear of the fixed UE port pools of tests/e2e/test_load.py
(12000-19998) and benchmarks/registration.py (20000-32000): UDP SO_REUSEADDR would let
a UE share a core port silently. Each port is checked by binding it, and the process
remembers what it handed out recently, so two callers in one run never get the same port.
"""

from __future__ import annotations

import random
import socket
from collections import deque
from pathlib import Path

__all__ = ["free_port", "free_port_run"]

_LOWEST = 8200
_HIGHEST = 12000  # exclusive
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_rng = random.Random()  # its own state: a test that seeds `random` must not repeat ports
_recent: deque[int] = deque(maxlen=4096)
_recent_set: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int, kinds: tuple[int, ...]) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        for kind in kinds:
            s = socket.socket(family, kind)
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _remember(port: int) -> int:
    if len(_recent) == _recent.maxlen:
        _recent_set.discard(_recent[0])
    _recent.append(port)
    _recent_set.add(port)
    return port


def free_port(host: str = "127.0.0.1", *, udp: bool = True, tcp: bool = False) -> int:
    """A port bindable now on `host` for the given transports, outside the ephemeral range."""
    kinds = tuple(k for k, on in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if on) or (
        socket.SOCK_DGRAM,
    )
    high = min(_HIGHEST, _ephemeral_low())
    if high - _LOWEST >= 1000:
        for _ in range(200):
            port = _rng.randrange(_LOWEST, high)
            if port not in _recent_set and _bindable(host, port, kinds):
                return _remember(port)
    # A machine whose ephemeral range starts below 9200: let the kernel choose.
    for _ in range(200):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kinds[0]) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _recent_set and _bindable(host, port, kinds):
            return _remember(port)
    raise OSError(f"no free port on {host}")


def free_port_run(n: int, host: str = "127.0.0.1", step: int = 1) -> list[int]:
    """`n` UDP ports `step` apart (a P-CSCF's protected port pairs, a UE's port-c and
    port-s), each bindable now and none handed out recently, all remembered: a port
    next to one `free_port` gave is otherwise not known to be taken, and the next caller
    could get it (two SO_REUSEADDR sockets on one port: datagrams to the wrong one)."""
    udp = (socket.SOCK_DGRAM,)
    for _ in range(200):
        base = free_port(host)
        rest = [base + i * step for i in range(1, n)]
        if rest and rest[-1] > 65535:
            continue
        if all(q not in _recent_set and _bindable(host, q, udp) for q in rest):
            for q in rest:
                _remember(q)
            return [base, *rest]
    raise OSError(f"no run of {n} free ports on {host}")
