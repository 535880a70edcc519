"""Helpers for the IPsec tests: a UE and a P-CSCF side of one SA set on loopback."""

from __future__ import annotations

from dataclasses import dataclass

from imsaka.ipsec import (
    PortPool,
    SecAgreePolicy,
    SecurityAssociationTable,
    SecurityMechanism,
    choose_mechanism,
    format_security_header,
    offer_mechanisms,
    parse_security_header,
    ue_choose_server_mechanism,
)
from imsaka.ports import free_port_run

IK = bytes.fromhex("f769bcd751044604127672711c6d3441")  # TS 35.208 test set 1
CK = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")


def free_udp_ports(n: int, host: str = "127.0.0.1", step: int = 1) -> list[int]:
    """`n` UDP ports `step` apart, bindable now, none handed out before in this run
    (`imsaka.ports.free_port_run`)."""
    return free_port_run(n, host, step)


@dataclass
class Pair:
    ue: SecurityAssociationTable
    pcscf: SecurityAssociationTable
    ue_set: object
    pcscf_set: object
    client_header: str
    server_header: str
    server: list[SecurityMechanism]


def negotiate(
    alg: str = "hmac-sha-1-96",
    ealg: str = "aes-cbc",
    *,
    now: float = 0.0,
    ue_table: SecurityAssociationTable | None = None,
    pcscf_table: SecurityAssociationTable | None = None,
    contact: object = "ue1",
    ue_ip: str = "127.0.0.1",
    pcscf_ip: str = "127.0.0.1",
) -> Pair:
    """Run sec-agree and the 401 step on both sides; both hold a temporary SA set."""
    ue = ue_table or SecurityAssociationTable("ue")
    if pcscf_table is None:
        first = free_udp_ports(2)[0]
        pcscf_table = SecurityAssociationTable("pcscf", ports=PortPool(first, 1))
    pcscf = pcscf_table
    port_uc, port_us = free_udp_ports(2)
    ue_policy = SecAgreePolicy(preference=((alg, ealg),))
    (spi_uc, spi_us), _ = ue.allocate_local()
    offer = offer_mechanisms(ue_policy, spi_c=spi_uc, spi_s=spi_us, port_c=port_uc, port_s=port_us)
    client_header = format_security_header(offer)
    # P-CSCF: choose, allocate, answer.
    chosen = choose_mechanism(
        parse_security_header(client_header), SecAgreePolicy(preference=((alg, ealg),))
    )
    assert chosen is not None
    (spi_pc, spi_ps), pair = pcscf.allocate_local(
        avoid=(chosen.spi_c, chosen.spi_s), contact=contact
    )
    server = SecurityMechanism(
        "ipsec-3gpp", q=100, alg=chosen.alg, ealg=chosen.ealg, prot="esp", mod="trans",
        spi_c=spi_pc, spi_s=spi_ps, port_c=pair.port_c, port_s=pair.port_s,
    )  # fmt: skip
    server_header = format_security_header([server])
    pset = pcscf.create_temporary(
        contact, now=now, ue_ip=ue_ip, pcscf_ip=pcscf_ip, client=chosen, server=server,
        ik=IK, ck=CK, port_pair=pair,
    )  # fmt: skip
    # UE: take the Security-Server entry and set up its side.
    srv = ue_choose_server_mechanism(parse_security_header(server_header), offer)
    assert srv is not None
    mine = next(m for m in offer if (m.alg, m.ealg) == (srv.alg, srv.ealg))
    uset = ue.create_temporary(
        contact, now=now, ue_ip=ue_ip, pcscf_ip=pcscf_ip, client=mine, server=srv,
        ik=IK, ck=CK,
    )  # fmt: skip
    return Pair(ue, pcscf, uset, pset, client_header, server_header, [server])
