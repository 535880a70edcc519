"""An SA set taken back after a restart (`SecurityAssociationTable.restore`, what
`imsaka.cscf.pcscf_state` gives it): the same keys, SPIs, lifetime and sequence state,
so neither end sees a sequence number twice (RFC 4303 §3.3.3, §3.4.3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imsaka.ipsec import PortPool, SecurityAssociationTable
from imsaka.ipsec.errors import LocalProtocolError
from imsaka.ipsec.esp import REPLAY, EspDelivered, EspDrop
from imsaka.ipsec.sa import SaState
from tests.ipsec.helpers import negotiate


def _params(s) -> SimpleNamespace:
    """`create_temporary_from`'s flat parameters of a P-CSCF set (no IK/CK)."""
    return SimpleNamespace(
        alg=s.keys.alg, ealg=s.keys.ealg, ue_host=s.ue_ip, pcscf_host=s.pcscf_ip,
        spi_uc=s.ue_spis[0], spi_us=s.ue_spis[1], port_uc=s.ue_ports.port_c,
        port_us=s.ue_ports.port_s, spi_pc=s.pcscf_spis[0], spi_ps=s.pcscf_spis[1],
        port_pc=s.pcscf_ports.port_c, port_ps=s.pcscf_ports.port_s, ik=b"", ck=b"",
    )  # fmt: skip


@pytest.mark.parametrize("ealg", ["null", "aes-cbc"])
def test_a_restored_set_goes_on_from_its_sequence_state(ealg):
    n = negotiate("hmac-sha-1-96", ealg, now=0.0)
    n.pcscf.registered(n.pcscf_set, expires=600, now=1.0)
    n.ue.registered(n.ue_set, expires=600, now=1.0)
    ue_out = n.ue_set.client_sa()  # UE port-c -> P-CSCF port-s
    old = [ue_out.esp.protect(b"request %d" % i) for i in range(3)]
    for packet in old:
        assert isinstance(n.pcscf_set.inbound[ue_out.spi].esp.unprotect(packet), EspDelivered)
    p_out = n.pcscf_set.server_sa()
    for i in range(2):
        assert isinstance(
            n.ue_set.inbound[p_out.spi].esp.unprotect(p_out.esp.protect(b"%d" % i)), EspDelivered
        )
    counters = n.pcscf_set.counters()
    assert counters[ue_out.spi] == (3, 0b111) and counters[p_out.spi] == (2,)

    table = SecurityAssociationTable("pcscf", ports=PortPool(n.pcscf_set.pcscf_ports.port_c, 1))
    s = table.restore(
        ("impi", "127.0.0.1"), _params(n.pcscf_set), n.pcscf_set.keys,
        established=True, expires_at=500.0, counters=counters, now=2.0,
    )  # fmt: skip
    assert s.state is SaState.ESTABLISHED and s.expires_at == 500.0
    assert table.current(("impi", "127.0.0.1")) is s
    assert s.counters() == counters
    assert all(table.spis.is_live(spi) for spi in s.pcscf_spis)
    # a packet received before the stop is a replay now; the next one is taken
    inbound = s.inbound[ue_out.spi].esp
    dropped = inbound.unprotect(old[1])
    assert isinstance(dropped, EspDrop) and dropped.reason == REPLAY
    assert inbound.unprotect(ue_out.esp.protect(b"after")).payload == b"after"
    # what it sends goes on from the last number sent: the UE takes it
    out = s.server_sa().esp
    got = n.ue_set.inbound[out.spi].esp.unprotect(out.protect(b"answer"))
    assert isinstance(got, EspDelivered) and (got.seq, got.payload) == (3, b"answer")
    table.handle_timer(500.0)
    assert s.state is SaState.REMOVED and not table.spis.is_live(s.pcscf_spis[0])


def test_a_restored_temporary_set_awaits_the_protected_register():
    n = negotiate(now=0.0)
    table = SecurityAssociationTable("pcscf")
    s = table.restore(
        "c", _params(n.pcscf_set), n.pcscf_set.keys,
        established=False, expires_at=60.0, counters={}, now=1.0,
    )  # fmt: skip
    assert s.state is SaState.TEMPORARY and table.temporary("c") is s
    table.registered(s, expires=600, now=2.0)
    assert s.state is SaState.ESTABLISHED


def test_spis_already_live_are_refused_and_nothing_is_kept():
    n = negotiate(now=0.0)
    table = SecurityAssociationTable("pcscf")
    p = _params(n.pcscf_set)
    table.restore("c", p, n.pcscf_set.keys, established=True, expires_at=9.0, counters={}, now=0)
    with pytest.raises(LocalProtocolError, match="already live"):
        table.restore(
            "d", p, n.pcscf_set.keys, established=True, expires_at=9.0, counters={}, now=0
        )
    assert len(table.sets()) == 1 and table.spis.live_count == 2


def test_keys_for_another_transform_are_refused():
    n = negotiate("hmac-sha-1-96", "aes-cbc", now=0.0)
    other = negotiate("hmac-md5-96", "null", now=0.0)
    table = SecurityAssociationTable("pcscf")
    with pytest.raises(LocalProtocolError, match="keys"):
        table.restore(
            "c", _params(n.pcscf_set), other.pcscf_set.keys,
            established=True, expires_at=9.0, counters={}, now=0,
        )  # fmt: skip
    assert not table.sets() and table.spis.live_count == 0
