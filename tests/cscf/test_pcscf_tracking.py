"""What tells a P-CSCF's state store which records changed (`imsaka.cscf.tracking`,
`PcscfCore.track_changes`, `SecurityAssociationTable.track_use`): every assignment to
any field of a registration or subscription is seen, so a pass that looks only at the
IMPIs named misses none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imsaka.config import load_config
from imsaka.cscf.pcscf import PcscfCore, Registration, RegState
from imsaka.cscf.pcscf_regsub import RegEventSubscription
from imsaka.cscf.tracking import tracked
from imsaka.ipsec import PortPool, SecurityAssociationTable
from tests.ipsec.helpers import free_udp_ports, negotiate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imsaka.toml"


def test_every_field_of_a_registration_but_its_heap_entry_is_seen():
    changed: set[str] = set()
    cls = tracked(Registration, changed, ignore=("scheduled",))
    reg = cls(impi="a@x", impu="", ue_host="10.0.0.1", state=RegState.CHALLENGED)
    assert changed == {"a@x"} and isinstance(reg, Registration)
    for f in dataclasses.fields(Registration):
        if f.name == "impi":
            continue
        changed.clear()
        setattr(reg, f.name, getattr(reg, f.name))
        assert changed == (set() if f.name == "scheduled" else {"a@x"}), f.name


def test_a_subscription_is_seen_and_one_leaving_its_registration_names_it():
    changed: set[str] = set()
    cls = tracked(RegEventSubscription, changed)
    sub = cls("call-1", "a@x", "sip:a@x", "tag", 0.0)
    assert changed == {"a@x"}
    for name in RegEventSubscription.__slots__:
        changed.clear()
        setattr(sub, name, getattr(sub, name))
        assert changed == {"a@x"}, name
    changed.clear()
    sub.impi = ""  # (detached: its registration ended)
    assert changed == {"a@x"}
    changed.clear()
    sub.cseq += 1
    assert changed == set()


def test_the_core_names_what_it_drops_and_refuses_untracked_registrations():
    cfg = load_config(EXAMPLE)
    core = PcscfCore(cfg.pcscf, network=cfg.network)
    changed = core.track_changes()
    assert core.track_changes() is changed
    plain = Registration(impi="a@x", impu="", ue_host="10.0.0.1", state=RegState.REGISTERED)
    with pytest.raises(TypeError):
        core.adopt(plain, None, 0.0)
    reg = core.registration_type(
        impi="a@x", impu="", ue_host="10.0.0.1", state=RegState.REGISTERED, expires_at=60.0
    )
    changed.clear()
    core.adopt(reg, None, 0.0)
    assert changed == {"a@x"}
    sub = core.subscription_type("call-1", "a@x", "sip:a@x", "tag", 0.0)
    core.adopt(reg, sub, 0.0)
    changed.clear()
    core._unsubscribe("call-1")  # (the S-CSCF ended it; the registration stays)
    assert changed == {"a@x"} and core.subscription_of("a@x") is None
    changed.clear()
    core._forget(reg, 0.0)
    assert changed == {"a@x"} and "a@x" not in core.registrations
    other = PcscfCore(cfg.pcscf, network=cfg.network)
    other.registrations["b@x"] = plain
    with pytest.raises(RuntimeError):
        other.track_changes()


def test_the_table_names_each_set_that_carried_traffic_once():
    table = SecurityAssociationTable("pcscf", ports=PortPool(free_udp_ports(2)[0], 1, 4))
    a = negotiate(pcscf_table=table, contact="a", now=0.0)
    b = negotiate(pcscf_table=table, contact="b", now=0.0)
    table.message_received(a.pcscf_set, now=0.0)
    assert table.take_used() == []  # (nobody asked yet)
    table.track_use()
    for _ in range(3):
        table.message_received(a.pcscf_set, now=0.0)
        table.message_sent(b.pcscf_set, now=0.0)
    assert table.take_used() == [a.pcscf_set, b.pcscf_set]
    assert table.take_used() == []
    table.message_sent(a.pcscf_set, now=0.0)
    assert table.take_used() == [a.pcscf_set]


def test_a_held_set_is_named_by_its_key_made_changed_and_released():
    from imsaka.cscf.pcscf import HELD, PcscfSa

    cfg = load_config(EXAMPLE)
    core = PcscfCore(cfg.pcscf, network=cfg.network)
    changed = core.track_changes()
    sa = PcscfSa(
        impi="a@x", alg="hmac-sha-1-96", ealg="null", ue_host="10.0.0.1",
        pcscf_host="10.0.0.2", spi_uc=1, spi_us=2, port_uc=5, port_us=6, spi_pc=3,
        spi_ps=4, port_pc=7, port_ps=8,
    )  # fmt: skip
    core.adopt_held(sa, "z9hG4bK-1", 32.0, "de-registered", b"SIP/2.0 200 OK\r\n\r\n")
    key = f"{HELD}4"
    assert changed == {key} and core.held_keys() == [key] and core.record_key(4) == key
    assert core.held_set(key)[4] == b"SIP/2.0 200 OK\r\n\r\n"
    changed.clear()
    core._grace[key].final_data = None
    assert changed == {key}
    changed.clear()
    core._end_grace(core._grace[key])
    assert changed == {key} and core.held_set(key) is None and core.record_key(4) is None
