"""Sockets shared by the I-CSCF and the S-CSCF: a Cx client node (TS 29.229 over
RFC 6733 TCP) and a SIP endpoint on the configured transports (RFC 3261 §18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imsaka.config import DiameterConfig
from imsaka.diameter.node import DiameterNode, PeerSpec
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transport import TcpTransport, UdpTransport


def cx_node(d: DiameterConfig, *, reconnect: float, owner: str) -> DiameterNode:
    """The function's Diameter node towards its configured HSS peers; it also listens
    when `d.port` is set (RTR/PPR from the HSS)."""
    return DiameterNode(
        origin_host=d.host,
        origin_realm=d.realm,
        peers=tuple(PeerSpec(p.host, p.address, p.port) for p in d.peers),
        listen_address=d.address if d.port else None,
        listen_port=d.port or 3868,
        request_timeout=d.timeout,
        watchdog_interval=d.watchdog_interval,
        reopen_dwas=d.reopen_dwas,
        tc=reconnect,
        host_ip_addresses=(d.address,),
        owner=owner,
    )


async def add_transports(endpoint: SipEndpoint, config: Any, owner: str) -> None:
    """Bind `config.transports` ("udp", "tcp") at `config.address`:`config.port`."""
    for name in config.transports:
        cls = UdpTransport if name == "udp" else TcpTransport
        endpoint.add_transport(await cls.create(config.address, config.port, owner=owner))


def observe(
    node: DiameterNode, endpoint: SipEndpoint, observers: tuple[Callable[[Any], None], ...]
) -> None:
    """Every trace observer sees the node's Cx traffic and every SIP transport's."""
    for obs in observers:
        node.add_observer(obs)
        for t in endpoint.transports:
            t.add_observer(obs)
