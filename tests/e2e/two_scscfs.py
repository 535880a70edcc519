"""The whole core with a second S-CSCF of its own Server-Name (scscf2), and a partition
between the I-CSCF and one S-CSCF: what moves a registered user from one S-CSCF to
another (TS 24.229 §5.3.1.2, TS 29.228 §6.1.3). Used by `test_scscf_reassignment.py`
and the chaos runner's `--scscf-moves`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from imsaka.cscf.scscf import ScscfServer
from imsaka.network import Network
from imsaka.ports import free_port

SCSCF2 = "scscf2.home1.net"


class TwoScscfs(Network):
    """The core with a second S-CSCF of its own Server-Name, after the first in the
    I-CSCF's list and the HSS's pool (`start_second` starts it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.second_port = free_port("127.0.0.1", udp=True, tcp=True)
        self.second_name = f"sip:{SCSCF2}:{self.second_port}"
        self.second: ScscfServer | None = None

    def build_config(self) -> dict:
        doc = super().build_config()
        doc["network"]["hosts"][SCSCF2] = "127.0.0.1"
        doc["icscf"]["scscfs"].append(
            {"name": self.second_name, "address": "127.0.0.1", "port": self.second_port}
        )
        hosts = (doc["icscf"]["diameter"]["host"], doc["scscf"]["diameter"]["host"], SCSCF2)
        doc["hss"]["peers"] = list(hosts)
        return doc

    async def start_second(self) -> None:
        cfg = self.config
        first = cfg.scscf
        self.second = ScscfServer(
            replace(
                first,
                name=SCSCF2,
                port=self.second_port,
                server_name=self.second_name,
                diameter=replace(first.diameter, host=SCSCF2),
            ),
            observers=tuple(self._observers),
            network=cfg.network,
        )
        await self.second.start()
        await self.second.node.wait_open("hss.home1.net", timeout=5)

    def scscf_counters(self) -> Counter[str]:
        """Both S-CSCFs' counters, summed."""
        total = super().scscf_counters()
        if self.second is not None and self.second.scscf is not None:
            total.update(self.second.scscf.core.counters)
        return total

    async def stop(self) -> None:
        if self.second is not None:
            await self.second.stop()
            self.second = None
        await super().stop()


class Partition:
    """The I-CSCF's datagrams to the S-CSCFs on `ports` are lost while they are listed
    (`cut`, `heal`); `lost` counts them. Installed on the I-CSCF's UDP transport (again
    by `install` after a restart of the I-CSCF)."""

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.lost = 0

    def install(self, net: Network) -> None:
        for transport in net.icscf.endpoint.transports:
            if transport.name != "udp":
                continue
            sendto = transport._transport.sendto

            def dropping(data: bytes, addr: Any = None, _send: Any = sendto) -> Any:
                if addr is not None and addr[1] in self.ports:
                    self.lost += 1
                    return None
                return _send(data, addr)

            transport._transport.sendto = dropping

    def cut(self, port: int) -> None:
        self.ports.add(port)

    def heal(self) -> None:
        self.ports.clear()
