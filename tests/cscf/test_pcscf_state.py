"""The P-CSCF's state document (`imsaka.cscf.pcscf_state`): what is written, what is
read back at another time on another clock, and the one-line refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from imsaka.cscf.pcscf import PcscfSa, Registration, RegState
from imsaka.cscf.pcscf_regsub import RegEventSubscription
from imsaka.cscf.pcscf_state import StateError, dump, load
from imsaka.ipsec import PortPool, SecurityAssociationTable
from imsaka.ipsec.sa import SaState
from tests.ipsec.helpers import free_udp_ports, negotiate

OWN = {"address": "127.0.0.1", "port": 5060, "port_c": 5062, "port_s": 5063}


def _sa(s, impi: str) -> PcscfSa:
    return PcscfSa(
        impi=impi, alg=s.keys.alg, ealg=s.keys.ealg, ue_host=s.ue_ip, pcscf_host=s.pcscf_ip,
        spi_uc=s.ue_spis[0], spi_us=s.ue_spis[1], port_uc=s.ue_ports.port_c,
        port_us=s.ue_ports.port_s, spi_pc=s.pcscf_spis[0], spi_ps=s.pcscf_spis[1],
        port_pc=s.pcscf_ports.port_c, port_ps=s.pcscf_ports.port_s,
    )  # fmt: skip


def _core(now: float):
    """One registered UE with its set and confirmed subscription, one challenged, one
    (without sec-agree) whose registration the network ended while its REGISTER was
    open."""
    table = SecurityAssociationTable("pcscf", ports=PortPool(free_udp_ports(2)[0], 1, 4))
    a = negotiate(pcscf_table=table, contact="a", now=now)
    table.registered(a.pcscf_set, expires=3600, now=now)
    a.pcscf_set.server_sa().esp.protect(b"x")
    b = negotiate(pcscf_table=table, contact="b", now=now)
    regs = {
        "a@x": Registration(
            impi="a@x", impu="sip:a@x", ue_host="127.0.0.1", state=RegState.REGISTERED,
            contact="<sip:a@127.0.0.1:1;ob>", sa=_sa(a.pcscf_set, "a@x"),
            security_server=(a.server_header,), service_route=("<sip:orig@scscf;lr>",),
            associated_uris=("<sip:a@x>",), expires_at=now + 3600,
        ),
        "b@x": Registration(
            impi="b@x", impu="sip:b@x", ue_host="127.0.0.1", state=RegState.CHALLENGED,
            temporary=_sa(b.pcscf_set, "b@x"), temporary_expires=now + 240,
            pending_server=(b.server_header,), security_client=(b.client_header,),
        ),
        "c@x": Registration(
            impi="c@x", impu="sip:c@x", ue_host="127.0.0.1", state=RegState.REGISTERED,
            clear_source=("127.0.0.1", 7), expires_at=now + 60, network_terminated=True,
        ),
    }  # fmt: skip
    sub = RegEventSubscription("cid@p", "a@x", "sip:a@x", "lt", now - 10)
    sub.remote_tag, sub.remote_target, sub.cseq = "rt", "sip:scscf:6060", 2
    sub.route_set = ("<sip:scscf;lr>",)
    sub.granted(600000, now)
    sets = {s.pcscf_spis[1]: s for s in (a.pcscf_set, b.pcscf_set)}
    core = SimpleNamespace(
        registrations=regs,
        subscription_of=lambda impi: sub if impi == "a@x" else None,
        held_sets=lambda: [],
    )
    return core, sets


def test_what_is_written_comes_back_on_another_clock():
    core, sets = _core(now=1000.0)
    doc = json.loads(json.dumps(dump(core, sets, own=OWN, now=1000.0, wall=5000.0)))
    assert [r["impi"] for r in doc["registrations"]] == ["a@x", "b@x", "c@x"]
    # 20 s later by the wall clock, on a loop clock that starts at 50
    restored = load(doc, own=OWN, now=50.0, wall=5020.0)
    a, b, c = restored
    # the REGISTER whose answer was due may not come again: released in a
    # transaction's life unless it does
    assert c.registration.network_terminated and c.registration.release_at == 50.0 + 32.0
    assert c.registration.clear_source == ("127.0.0.1", 7) and not c.sets
    reg = a.registration
    assert reg.state is RegState.REGISTERED and reg.sa.impi == "a@x"
    assert reg.expires_at == pytest.approx(50.0 + 3600 - 20)
    assert reg.security_server == core.registrations["a@x"].security_server
    assert reg.service_route == ("<sip:orig@scscf;lr>",)
    (s,) = a.sets
    original = sets[reg.sa.spi_ps]
    assert s.established and s.keys == original.keys and s.counters == original.counters()
    assert s.expires_at == pytest.approx(50.0 + original.expires_at - 1000.0 - 20)
    sub = a.subscription
    assert (sub.call_id, sub.remote_tag, sub.cseq, sub.route_set) == (
        "cid@p",
        "rt",
        2,
        ("<sip:scscf;lr>",),
    )
    assert sub.refresh_at == pytest.approx(50.0 + 600000 - 600 - 20)
    assert sub.since == pytest.approx(50.0 - 10)
    assert b.registration.state is RegState.CHALLENGED and b.subscription is None
    (t,) = b.sets
    assert not t.established and b.registration.temporary == t.sa
    assert b.registration.temporary_expires == pytest.approx(50.0 + 240 - 20)
    assert b.registration.security_client == core.registrations["b@x"].security_client


def test_what_ran_out_while_down_is_not_taken_back():
    core, sets = _core(now=0.0)
    doc = dump(core, sets, own=OWN, now=0.0, wall=0.0)
    # 300 s later: the challenge's temporary set (240 s) ran out, the registration not
    (a,) = load(doc, own=OWN, now=0.0, wall=300.0)  # (c@x's 60 s ran out too)
    assert a.registration.impi == "a@x"
    assert load(doc, own=OWN, now=0.0, wall=3700.0) == []


def test_a_set_not_in_the_table_is_not_written():
    core, sets = _core(now=0.0)
    for s in sets.values():
        s.state = SaState.DRAINING
    records = dump(core, sets, own=OWN, now=0.0, wall=0.0)["registrations"]
    assert [r["impi"] for r in records] == ["c@x"]  # (no set: sec-agree-less)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="x"), "not an imsaka-pcscf-state document"),
        (lambda d: d.update(version=2), "version 2; this P-CSCF reads 1"),
        (lambda d: d["pcscf"].update(port_s=5099), "written by a P-CSCF at"),
        (lambda d: d.update(saved_at="now"), "saved_at: not a number"),
        (lambda d: d["registrations"][0].pop("impu"), "registrations[0]: impu missing"),
        (lambda d: d["registrations"][0].update(state="gone"), "registrations[0]:"),
        (lambda d: d["registrations"][0]["sa"].update(spi_ps="1"), "spi_ps: not an integer"),
        (lambda d: d["registrations"][0]["sa"].update(ik_esp="zz"), "registrations[0]:"),
        (
            lambda d: d["registrations"][0]["sa"]["counters"].update({"1": [-1]}),
            "counters[1]: not a list of counts",
        ),
    ],
)
def test_a_document_it_cannot_take_is_refused_in_one_line(change, message):
    core, sets = _core(now=0.0)
    doc = json.loads(json.dumps(dump(core, sets, own=OWN, now=0.0, wall=0.0)))
    change(doc)
    with pytest.raises(StateError) as info:
        load(doc, own=OWN, now=0.0, wall=1.0)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert "ik_esp" not in text or "zz" not in text  # never the key material itself


def test_after_a_crash_sequence_numbers_move_on_and_windows_close():
    from imsaka.cscf.pcscf_state import SEQ_MARGIN

    core, sets = _core(now=0.0)
    doc = dump(core, sets, own=OWN, now=0.0, wall=0.0)
    exact = {s.sa.spi_ps: s.counters for r in load(doc, own=OWN, now=0.0, wall=1.0) for s in r.sets}
    crashed = load(doc, own=OWN, now=0.0, wall=1.0, crashed=True)
    for r in crashed:
        for s in r.sets:
            for spi, value in s.counters.items():
                before = exact[s.sa.spi_ps][spi]
                if len(value) == 1:
                    assert value == (before[0] + SEQ_MARGIN,)
                else:
                    assert value[0] == before[0] and value[1] >= (1 << 64) - 1


def test_a_record_kept_apart_counts_from_its_own_save():
    """A store's records are written at different times: each has its own saved_at."""
    core, sets = _core(now=100.0)
    from imsaka.cscf.pcscf_state import record_of

    reg = core.registrations["a@x"]
    record = record_of(reg, None, sets, 100.0, wall=1000.0)
    assert record["saved_at"] == 1000.0 and "subscription" not in record
    doc = {"format": "imsaka-pcscf-state", "version": 1, "pcscf": OWN, "saved_at": 5000.0}
    doc["registrations"] = [record]
    (r,) = load(doc, own=OWN, now=0.0, wall=1010.0)
    assert r.registration.expires_at == pytest.approx(3600 - 10)


def test_a_set_held_for_a_retransmission_comes_back_with_its_answer():
    from imsaka.cscf.pcscf_state import RestoredHold

    core, sets = _core(now=0.0)
    table = SecurityAssociationTable("pcscf", ports=PortPool(free_udp_ports(2)[0], 1, 4))
    d = negotiate(pcscf_table=table, contact="d", now=0.0)
    d.pcscf_set.state = SaState.DRAINING
    sets[d.pcscf_set.pcscf_spis[1]] = d.pcscf_set
    answer = b"SIP/2.0 200 OK\r\nCSeq: 3 REGISTER\r\n\r\n"
    held = (_sa(d.pcscf_set, "d@x"), "z9hG4bKabc", 30.0, "de-registered", answer)
    core.held_sets = lambda: [held]
    doc = json.loads(json.dumps(dump(core, sets, own=OWN, now=0.0, wall=0.0)))
    (hold,) = [r for r in load(doc, own=OWN, now=0.0, wall=10.0) if isinstance(r, RestoredHold)]
    assert (hold.branch, hold.reason, hold.final) == ("z9hG4bKabc", "de-registered", answer)
    assert hold.release_at == pytest.approx(20.0) and hold.set.sa.impi == "d@x"
    assert not [r for r in load(doc, own=OWN, now=0.0, wall=31.0) if isinstance(r, RestoredHold)]
    doc["held"][0]["final"] = "not base64!"
    with pytest.raises(StateError, match=r"^held\[0\]: "):
        load(doc, own=OWN, now=0.0, wall=1.0)
