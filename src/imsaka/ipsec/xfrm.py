"""Kernel IPsec backend: the SA set as Linux XFRM states and policies (TS 33.203 §7.1).

Per SA one ESP transport-mode state (``ip xfrm state add``), and per SA and transport
protocol one policy (``ip xfrm policy add ... proto udp|tcp sport .. dport .. dir
in|out tmpl ... spi ...``): the selectors allow UDP and TCP alike (§7.1; PITFALLS "TCP
over IPsec"). The SIP sockets at the protected ports then carry clear SIP and the
kernel protects it; the same `ProtectedTransport` interface as the userspace backend
delivers messages with the SA they belong to (found by peer address and local port).

The requests are built as iproute2 batch lines and fed to ``ip -batch -`` on stdin so
keys never appear on a command line (/proc/*/cmdline is world-readable); pyroute2
0.9 has no XFRM request builders, so iproute2 is the netlink client here.

`XfrmBackend.start()` probes the kernel by adding and deleting one ESP state on
loopback (no policy, so no traffic is affected). A kernel without XFRM or without
the ESP type (this machine answers "Requested type not found") fails with one
line: `XfrmUnavailable`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from imsaka.ipsec.algorithms import ENCRYPTION, INTEGRITY
from imsaka.ipsec.backend import (
    UNKNOWN_PEER,
    ProtectedMessage,
    ProtectedTransport,
    _norm,
    _Port,
)
from imsaka.ipsec.errors import XfrmUnavailable
from imsaka.ipsec.sa import Address, SaSet, SecurityAssociation
from imsaka.wire import WireEvent

__all__ = [
    "XfrmBackend",
    "policy_add_lines",
    "policy_delete_lines",
    "probe_xfrm",
    "redact",
    "sa_set_add_lines",
    "sa_set_delete_lines",
    "state_add_line",
    "state_delete_line",
]

Runner = Callable[[Sequence[str]], None]
TRANSPORTS = ("udp", "tcp")


def _prefix(ip: str) -> str:
    return f"{ip}/{128 if ipaddress.ip_address(ip).version == 6 else 32}"


def _reqid(sa: SecurityAssociation) -> int:
    # One reqid per SA keeps each policy bound to exactly its own state.
    return sa.spi


def state_add_line(sa: SecurityAssociation, replay_window: int = 64) -> str:
    """`xfrm state add ...` for one SA (holds keys: never log it, see `redact`)."""
    keys = sa.sa_set.keys
    integ = INTEGRITY[keys.alg]
    enc = ENCRYPTION[keys.ealg]
    parts = [
        "xfrm state add",
        f"src {sa.src[0]} dst {sa.dst[0]} proto esp spi 0x{sa.spi:08x}",
        f"reqid {_reqid(sa)} mode transport replay-window {replay_window}",
    ]
    if enc.aead:
        parts.append(f"aead {enc.xfrm} 0x{(keys.ck_esp + keys.salt).hex()} 128")
    elif keys.alg == "aes-gmac":
        parts.append(f"aead {integ.xfrm} 0x{(keys.ik_esp + keys.salt).hex()} 128")
    else:
        parts.append(f"auth-trunc {integ.xfrm} 0x{keys.ik_esp.hex()} {integ.icv_len * 8}")
        if keys.ealg == "null":
            parts.append('enc ecb(cipher_null) ""')
        else:
            parts.append(f"enc {enc.xfrm} 0x{keys.ck_esp.hex()}")
    return " ".join(parts)


def state_delete_line(sa: SecurityAssociation) -> str:
    return f"xfrm state delete src {sa.src[0]} dst {sa.dst[0]} proto esp spi 0x{sa.spi:08x}"


def _selector(sa: SecurityAssociation, proto: str) -> str:
    return (
        f"src {_prefix(sa.src[0])} dst {_prefix(sa.dst[0])} proto {proto}"
        f" sport {sa.src[1]} dport {sa.dst[1]} dir {'in' if sa.inbound else 'out'}"
    )


def policy_add_lines(sa: SecurityAssociation) -> list[str]:
    return [
        f"xfrm policy add {_selector(sa, proto)} tmpl src {sa.src[0]} dst {sa.dst[0]}"
        f" proto esp spi 0x{sa.spi:08x} reqid {_reqid(sa)} mode transport"
        for proto in TRANSPORTS
    ]


def policy_delete_lines(sa: SecurityAssociation) -> list[str]:
    return [f"xfrm policy delete {_selector(sa, proto)}" for proto in TRANSPORTS]


def sa_set_add_lines(sa_set: SaSet) -> list[str]:
    lines = [state_add_line(sa) for sa in sa_set.all_sas]
    for sa in sa_set.all_sas:
        lines.extend(policy_add_lines(sa))
    return lines


def sa_set_delete_lines(sa_set: SaSet) -> list[str]:
    lines: list[str] = []
    for sa in sa_set.all_sas:
        lines.extend(policy_delete_lines(sa))
    lines.extend(state_delete_line(sa) for sa in sa_set.all_sas)
    return lines


def redact(line: str) -> str:
    """A batch line with every key replaced, for logs and error messages."""
    return " ".join("0x…" if w.startswith("0x") and len(w) > 10 else w for w in line.split())


def run_ip_batch(lines: Sequence[str]) -> None:
    """Feed `lines` to ``ip -batch -`` (keys on stdin, not argv); raise XfrmUnavailable."""
    ip = shutil.which("ip")
    if ip is None:
        raise XfrmUnavailable("xfrm: iproute2 'ip' command not found")
    proc = subprocess.run(
        [ip, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise XfrmUnavailable(f"xfrm: ip: {first.rstrip('.')}")


def probe_xfrm(runner: Runner = run_ip_batch) -> None:
    """Add and delete one ESP transport state on loopback; XfrmUnavailable if impossible."""
    spi = 0xFFF00000 | int.from_bytes(os.urandom(2), "big")
    try:
        runner(
            [
                f"xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x{spi:08x}"
                f" mode transport auth-trunc hmac(sha1) 0x{bytes(20).hex()} 96"
                f" enc cbc(aes) 0x{bytes(16).hex()}"
            ]
        )
    except XfrmUnavailable as exc:
        reason = str(exc).removeprefix("xfrm: ")
        raise XfrmUnavailable(
            f"xfrm: this kernel cannot hold ESP transport SAs ({reason}; needs XFRM with"
            " esp4/esp6 and CAP_NET_ADMIN); use the userspace IPsec backend"
        ) from None
    except OSError as exc:
        raise XfrmUnavailable(f"xfrm: cannot run ip: {exc.strerror}") from None
    runner([f"xfrm state delete src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x{spi:08x}"])


class XfrmBackend(ProtectedTransport):
    """Kernel ESP: installs states and policies, moves clear SIP on the protected ports."""

    name = "xfrm"
    _protocol = "sip"

    def __init__(self, table, *, runner: Runner = run_ip_batch, probe: bool = True, **kwargs):
        super().__init__(table, **kwargs)
        self._runner = runner
        self._probe = probe

    async def start(self) -> None:
        if self._probe:
            probe_xfrm(self._runner)
        await super().start()

    def _installed(self, sa_set: SaSet) -> None:
        self._runner(sa_set_add_lines(sa_set))
        super()._installed(sa_set)

    def _removed(self, sa_set: SaSet) -> None:
        super()._removed(sa_set)
        try:
            self._runner(sa_set_delete_lines(sa_set))
        except XfrmUnavailable as exc:
            self._count("xfrm-delete-failed", str(exc))

    def _encode(self, sa: SecurityAssociation, data: bytes) -> bytes:
        return data

    def _find(self, peer: Address, local_port: int) -> SecurityAssociation | None:
        for sa_set in self.table.sets():
            for sa in sa_set.inbound.values():
                if (
                    sa.dst[1] == local_port
                    and sa.src[1] == peer[1]
                    and _norm(sa.src[0]) == _norm(peer[0])
                ):
                    return sa
        return None

    def _datagram(self, p: _Port, data: bytes, peer: Address) -> None:
        import time

        sa = self._find(peer, p.address[1])
        if self._observers:
            self._emit(
                WireEvent(time.time(), "in", "udp", peer, p.address, data, "sip", self.owner)
            )
        if sa is None:
            self._count(UNKNOWN_PEER, f"from {peer[0]}:{peer[1]}")
            return
        self._deliver(ProtectedMessage(data, sa, sa.sa_set, peer, p.address, self.now()))
