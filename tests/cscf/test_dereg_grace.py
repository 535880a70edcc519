"""P-CSCF core (sans-I/O): the SA set a de-REGISTER's 200 OK left over is held for that
de-REGISTER's retransmissions until Timer J (RFC 3261 §17.2.2; `DEREGISTER_GRACE`),
outside the P-CSCF's routing, then released once (TS 33.203 §7.4: after the last
message due over it)."""

from __future__ import annotations

from imsaka.cscf.pcscf import (
    DEREGISTER_GRACE,
    DETACHED_WAIT,
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    ReleaseSecurityAssociations,
    Reply,
)
from imsaka.sip import parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    ICSCF,
    SCSCF,
    UE_C,
    de_register_ok,
    de_register_text,
    registered,
    scscf_notify,
    send_de_register,
    ue_subscribe,
)


def _de_registered(at: float = 8.0):
    """A registered UE de-registers over its SAs; the core's actions on the 200 OK."""
    p, inst, _ = registered()
    dereg = de_register_text(p)
    fwd = send_de_register(p, inst, at)
    out = p.receive_response(de_register_ok(fwd), ICSCF, at + 0.1)
    return p, inst, dereg, out


def test_lost_200_retransmission_gets_the_cached_200_over_the_same_sa_then_one_release():
    p, inst, dereg, out = _de_registered()
    (first,) = [a for a in out if isinstance(a, Reply)]
    assert first.message.status == 200
    assert first.spi == inst.sa.spi_uc and first.destination == UE_C
    # held, not released: the SPIs leave routing, the set stays until Timer J
    (hold,) = [a for a in out if isinstance(a, HoldSecurityAssociations)]
    assert hold.sa.spi_ps == inst.sa.spi_ps and hold.until == 8.1 + DEREGISTER_GRACE
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0 and p.stats()["sas"] == 0
    assert p.in_grace() == 1
    (hold_key,) = p._grace
    assert not set(inst.sa.inbound_spis) & set(p.by_spi) and not p._by_contact
    # the 200 is lost: the UE retransmits over the same SA and gets the same 200 over it
    first_bytes = first.message.to_bytes()
    for at in (8.6, 9.6, 11.6):
        (again,) = p.receive_request(
            parse_message(dereg.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), at
        )
        assert isinstance(again, Reply) and again.spi == inst.sa.spi_uc
        assert again.destination == UE_C and again.message.to_bytes() == first_bytes
    assert p.counters["deregister-answered-again-in-grace"] == 3
    # nothing goes upstream again, nothing new is open
    assert p.open_transactions() == 0
    # Timer J runs from the 200 OK: past the request's own context (8.0 + 32 s) the
    # retransmission is still answered, over the same SA
    # (its one entry in the core's deadline heap, which the registration no longer has)
    p.handle_timer(8.0 + 32.0)
    assert p.in_grace() == 1 and p.next_deadline() == 8.1 + DEREGISTER_GRACE
    assert [t for t in p._timers if p._entry_live(t)] == [(8.1 + DEREGISTER_GRACE, hold_key)]
    (late,) = p.receive_request(
        parse_message(dereg.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 40.05
    )
    assert isinstance(late, Reply) and late.spi == inst.sa.spi_uc
    # the grace ends: one release of that set, and never again
    out = p.handle_timer(8.1 + DEREGISTER_GRACE)
    released = [a for a in out if isinstance(a, ReleaseSecurityAssociations)]
    assert [(a.sa.spi_ps, a.reason) for a in released] == [(inst.sa.spi_ps, "de-registered")]
    assert p.in_grace() == 0 and not p._grace_by_spi
    # left: the registration's reg-event subscription, detached, waiting for the
    # S-CSCF's terminated NOTIFY (none comes here) until it is given up
    assert p.next_deadline() == 8.1 + DETACHED_WAIT
    p.handle_timer(8.1 + DETACHED_WAIT)
    assert not p.subscriptions and p.next_deadline() is None
    assert p.handle_timer(1000.0) == []
    # after it, the SPI is unknown: the retransmission is dropped as over any unknown SA
    (drop,) = p.receive_request(
        parse_message(dereg.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 41.0
    )
    assert isinstance(drop, DropInput) and drop.reason == "protected-register-without-registration"


def test_only_the_de_registers_retransmission_is_answered_over_the_held_set():
    p, inst, dereg, _ = _de_registered()
    over_held = Arrival(UE_C, spi=inst.sa.spi_ps)
    # a new REGISTER (another transaction) over the held set: dropped, not forwarded
    again = dereg.replace("z9hG4bKdereg", "z9hG4bKnew").replace("CSeq: 3", "CSeq: 4")
    again = again.replace(";expires=0", ";expires=600000")
    out = p.receive_request(parse_message(again.encode()), over_held, 9.0)
    assert [type(a) for a in out] == [DropInput]
    assert out[0].reason == "request-over-deregistered-sa"
    # any other request too (the UE's SUBSCRIBE, a MESSAGE ...)
    out = p.receive_request(ue_subscribe(branch="z9hG4bKsub9"), over_held, 9.1)
    assert [type(a) for a in out] == [DropInput]
    assert p.drops["request-over-deregistered-sa"] == 2
    assert not any(isinstance(a, Forward) for a in out) and p.open_transactions() == 0
    # nothing from the core is routed to the UE over it: its contact is unknown (404)
    (rep,) = p.receive_request(scscf_notify(branch="z9hG4bKn9"), Arrival(SCSCF), 9.2)
    assert rep.message.status == 404 and rep.spi is None and rep.destination == SCSCF


def test_over_tcp_or_without_grace_the_sets_go_with_the_200():
    # over TCP there are no retransmissions (RFC 3261 §17.2.2: Timer J is 0)
    p, inst, _ = registered()
    dereg = de_register_text(p)
    (fwd,) = p.receive_request(
        parse_message(dereg.encode()), Arrival(UE_C, "tcp", spi=inst.sa.spi_ps), 8.0
    )
    out = p.receive_response(de_register_ok(fwd), ICSCF, 8.1)
    assert [a.reason for a in out if isinstance(a, ReleaseSecurityAssociations)] == [
        "de-registered"
    ]
    assert not any(isinstance(a, HoldSecurityAssociations) for a in out) and p.in_grace() == 0
    # a grace of 0: as before
    p, inst, _ = registered()
    p.dereg_grace = 0
    out = p.receive_response(de_register_ok(send_de_register(p, inst, 8.0)), ICSCF, 8.1)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.in_grace() == 0 and p.next_deadline() is not None  # the request's context
