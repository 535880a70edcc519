"""UE simulator ↔ P-CSCF over real loopback sockets with userspace ESP, against a
stand-in registrar: phase 1 in the clear, phase 2 and the 200 OK protected."""

from __future__ import annotations

from imsaka.config import NetworkConfig, PcscfConfig, PcscfRoute
from imsaka.cscf.pcscf_server import PcscfServer
from imsaka.ports import free_port
from imsaka.trace import Trace
from imsaka.ue.client import UeClient
from imsaka.ue.config import UeConfig
from tests.polling import eventually

from .fake_registrar import FakeRegistrar

K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")


async def _network(trace, sec_agree="required"):
    reg = FakeRegistrar(K, OPC)
    raddr = await reg.start()
    cfg = PcscfConfig(
        name="pcscf1.visited1.net",
        port=free_port("127.0.0.1"),
        port_c=free_port("127.0.0.1"),
        port_s=free_port("127.0.0.1"),
        sec_agree=sec_agree,
        routes=(PcscfRoute(domain="home1.net", icscf=f"sip:127.0.0.1:{raddr[1]}"),),
    )
    net = NetworkConfig(home_domains=("home1.net",), hosts={"pcscf1.visited1.net": "127.0.0.1"})
    p = PcscfServer(cfg, net, observers=[trace])
    await p.start()
    return reg, p


def _ue(pcscf, **kw):
    return UeConfig(
        impi="user1_private@home1.net",
        impus=["sip:user1_public1@home1.net"],
        home_domain="home1.net",
        registrar="registrar.home1.net",
        k=K,
        opc=OPC,
        pcscf=pcscf,
        **kw,
    )


async def test_register_and_deregister_over_esp():
    trace = Trace()
    reg, p = await _network(trace)
    ue = UeClient(_ue(p.address, encryption=("aes-cbc", "null")), observers=[trace])
    try:
        await ue.start()
        res = await ue.register(timeout=10)
        assert res.ok, res
        assert res.protected and res.service_route
        sip = [r for r in trace.messages("sip")]
        ue_to_p = [r for r in sip if r.src_name == "UE"]
        assert ue_to_p[0].esp_spi is None and ue_to_p[-1].esp_spi is not None
        assert p.stats()["sa_sets"] == 1 and ue.table.sets()
        dres = await ue.deregister(timeout=10)
        assert dres.ok, dres
        assert await eventually(
            lambda: p.stats()["sa_sets"] == 0 and p.stats()["registrations"] == 0
        )
        assert not ue.table.sets()
    finally:
        await ue.close()
        await p.close()
        await reg.close()


async def test_a_datagram_before_the_pcscf_is_up_is_dropped_not_a_traceback():
    """The P-CSCF's UDP port is bound before its core exists (the core needs the ports
    the kernel gave); a datagram in between (a UE retransmitting to a restarting
    P-CSCF) was an AssertionError in the receiver. It is dropped and counted; the
    UE's next copy finds the core."""
    from imsaka.cscf.pcscf import Arrival

    p = PcscfServer(
        PcscfConfig(name="pcscf1.visited1.net", port=0, port_c=0, port_s=0),
        NetworkConfig(home_domains=("home1.net",)),
    )
    p._clear_datagram(b"REGISTER sip:home1.net SIP/2.0\r\n\r\n", ("127.0.0.1", 5060), None)
    p._incoming(b"OPTIONS sip:home1.net SIP/2.0\r\n\r\n", Arrival(("127.0.0.1", 5060)))
    assert p.early_drops == 2 and p.stats()["early_drops"] == 2
