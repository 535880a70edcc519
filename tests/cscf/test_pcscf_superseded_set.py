"""P-CSCF core (sans-I/O): the SA set a challenged re-registration replaced (TS 33.203
§7.4; TS 24.229 §5.1.1.5.1, mirrored at the P-CSCF, FACTS §1.2).

When the 200 OK to the challenge response switches the UE to its new set, a transaction
may still be open over the old one: a request the UE sent just before, or a request of
the core's the UE is answering. The old set stays for `SUPERSEDED_DRAIN` (Timer F): what
arrives over it is served, the answers to it go back over it, nothing new is sent over
it; then it is released once. A response whose set is gone altogether is never sent in
the clear to the UE's protected port.
"""

from __future__ import annotations

from imsaka.cscf.pcscf import (
    DEREGISTER_GRACE,
    SUPERSEDED,
    SUPERSEDED_DRAIN,
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    ReleaseSecurityAssociations,
    Reply,
)
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import SCSCF, scscf_notify, ue_subscribe
from tests.e2e.test_pcscf_core import core
from tests.e2e.test_pcscf_rereg import CHALLENGE, OK_HEADERS, _answer, _registered, _second

IMPI = "user1_private@home1.net"
NEW_OFFER = "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=777; spi-s=888; port-c=3333; port-s=1357"


def _reauthenticated(
    p, server: str, arrival: Arrival, at: float, offer: str = NEW_OFFER, port_c: int = 3333
):
    """The registered UE's re-REGISTER over its set (a new `offer`, its port-c
    `port_c`), challenged, answered over the new temporary set and accepted: (the new
    set, the 200 OK's actions)."""
    (fwd,) = p.receive_request(parse_message(_second(3, server, offer).encode()), arrival, at)
    acts = _answer(p, fwd, 401, [CHALLENGE], at + 0.1)
    new = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    new_server = next(a for a in acts if isinstance(a, Reply)).message.get("Security-Server")
    over_new = Arrival(("127.0.0.1", port_c), spi=new.spi_ps)
    (fwd,) = p.receive_request(
        parse_message(_second(4, new_server, offer).encode()), over_new, at + 0.2
    )
    return new, _answer(p, fwd, 200, OK_HEADERS, at + 0.3)


def _released(actions) -> list:
    return [a for a in actions if isinstance(a, ReleaseSecurityAssociations)]


def test_a_transaction_open_over_the_old_set_ends_over_it_then_the_set_goes_once():
    p = core()
    old, server, over_old = _registered(p)
    (sub,) = p.receive_request(ue_subscribe(), over_old, 9.0)  # open over the old set
    assert isinstance(sub, Forward)
    new, acts = _reauthenticated(p, server, over_old, 10.0)
    assert not _released(acts)
    (hold,) = [a for a in acts if isinstance(a, HoldSecurityAssociations)]
    assert hold.sa.spi_ps == old.spi_ps and hold.until == 10.3 + SUPERSEDED_DRAIN
    assert p.registrations[IMPI].sa.spi_ps == new.spi_ps and p.in_grace() == 1
    # the SUBSCRIBE's answer, after the switch: back over the old set's SA it came on
    (reply,) = _answer(p, sub, 200, [("Expires", "600000")], 10.5)
    assert isinstance(reply, Reply) and reply.spi == old.spi_uc
    # a request the UE sent over the old set in the same instant is served, not refused
    (again,) = p.receive_request(
        ue_subscribe("z9hG4bKsub2", **{"CSeq": "2 SUBSCRIBE"}), over_old, 10.6
    )
    assert isinstance(again, Forward)
    # the core's new requests to the UE take the new set
    out = p.receive_request(scscf_notify(), Arrival(SCSCF), 10.7)
    (notify,) = [a for a in out if isinstance(a, Reply)]
    assert notify.message.method == "NOTIFY" and notify.spi == new.spi_us
    # the drain has run: the old set goes, once; its SPIs route nothing any more
    assert not _released(p.handle_timer(10.3 + SUPERSEDED_DRAIN - 0.5))
    gone = _released(p.handle_timer(10.3 + SUPERSEDED_DRAIN + 1.0))
    assert [(r.sa.spi_ps, r.reason) for r in gone] == [(old.spi_ps, SUPERSEDED)]
    assert not _released(p.handle_timer(10.3 + SUPERSEDED_DRAIN + 60.0))
    assert set(p.by_spi) == set(new.inbound_spis) and p.in_grace() == 0
    late = ue_subscribe("z9hG4bKsub3", **{"CSeq": "3 SUBSCRIBE"})
    (drop,) = p.receive_request(late, over_old, 10.3 + SUPERSEDED_DRAIN + 61.0)
    assert isinstance(drop, DropInput)


def test_de_registration_while_the_old_set_drains_takes_both_sets():
    p = core(dereg_grace=0.0)
    old, server, over_old = _registered(p)
    new, _ = _reauthenticated(p, server, over_old, 10.0)
    new_server = p.registrations[IMPI].security_server[0]
    dereg = _second(5, new_server, NEW_OFFER).replace("expires=600000", "expires=0")
    over_new = Arrival(("127.0.0.1", 3333), spi=new.spi_ps)
    (fwd,) = p.receive_request(parse_message(dereg.encode()), over_new, 12.0)
    ok = [("Contact", "<sip:127.0.0.1:1357>;expires=0")]
    out = _answer(p, fwd, 200, ok, 12.1)
    assert {r.sa.spi_ps for r in _released(out)} == {old.spi_ps, new.spi_ps}
    assert IMPI not in p.registrations and not p.by_spi and p.in_grace() == 0
    assert not _released(p.handle_timer(10.3 + SUPERSEDED_DRAIN + 1.0))


def test_a_second_challenged_reregistration_releases_the_set_still_draining():
    p = core()
    first, server, over_first = _registered(p)
    second, _ = _reauthenticated(p, server, over_first, 10.0)
    server2 = p.registrations[IMPI].security_server[0]
    over_second = Arrival(("127.0.0.1", 3333), spi=second.spi_ps)
    offer3 = NEW_OFFER.replace(
        "spi-c=777; spi-s=888; port-c=3333", "spi-c=71; spi-s=72; port-c=3334"
    )
    (fwd,) = p.receive_request(
        parse_message(_second(5, server2, offer3).encode()), over_second, 12.0
    )
    acts = _answer(p, fwd, 401, [CHALLENGE], 12.1)
    third = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    server3 = next(a for a in acts if isinstance(a, Reply)).message.get("Security-Server")
    over_third = Arrival(("127.0.0.1", 3334), spi=third.spi_ps)
    (fwd,) = p.receive_request(
        parse_message(_second(6, server3, offer3).encode()), over_third, 12.2
    )
    out = _answer(p, fwd, 200, OK_HEADERS, 12.3)
    assert [(r.sa.spi_ps, r.reason) for r in _released(out)] == [(first.spi_ps, SUPERSEDED)]
    (hold,) = [a for a in out if isinstance(a, HoldSecurityAssociations)]
    assert hold.sa.spi_ps == second.spi_ps and p.in_grace() == 1
    assert set(p.by_spi) == set(second.inbound_spis) | set(third.inbound_spis)


def _twice_reauthenticated(p, first_server: str, over_first: Arrival, at: float):
    """Two challenged re-registrations in a row (within `SUPERSEDED_DRAIN`): the second
    and third sets and the third's 200 OK actions."""
    second, _ = _reauthenticated(p, first_server, over_first, at)
    server2 = p.registrations[IMPI].security_server[0]
    over_second = Arrival(("127.0.0.1", 3333), spi=second.spi_ps)
    offer3 = NEW_OFFER.replace(
        "spi-c=777; spi-s=888; port-c=3333", "spi-c=71; spi-s=72; port-c=3334"
    )
    (fwd,) = p.receive_request(
        parse_message(_second(5, server2, offer3).encode()), over_second, at + 2.0
    )
    acts = _answer(p, fwd, 401, [CHALLENGE], at + 2.1)
    third = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    server3 = next(a for a in acts if isinstance(a, Reply)).message.get("Security-Server")
    over_third = Arrival(("127.0.0.1", 3334), spi=third.spi_ps)
    (fwd,) = p.receive_request(
        parse_message(_second(6, server3, offer3).encode()), over_third, at + 2.2
    )
    return second, third, _answer(p, fwd, 200, OK_HEADERS, at + 2.3)


def test_a_set_replaced_twice_with_a_request_still_open_over_it_is_held_for_the_answer():
    """The UE's SUBSCRIBE over its first set is still open upstream (moved between
    S-CSCF instances, say) when two challenged re-registrations replace that set and
    then the next: the first is held for the SUBSCRIBE's answer (TS 24.229 §5.1.1.5.1:
    the UE keeps it until its transactions over it complete), not released; the UE's
    retransmission over it is absorbed, the answer goes back over it, and the set goes
    after Timer J (before: released at once, the answer sent into a removed set and
    the UE's retransmissions dropped until its Timer F; chaos seed 10152)."""
    p = core()
    first, server, over_first = _registered(p)
    (sub,) = p.receive_request(ue_subscribe(), over_first, 9.0)
    second, third, out = _twice_reauthenticated(p, server, over_first, 10.0)
    assert not _released(out)
    held = [a for a in out if isinstance(a, HoldSecurityAssociations)]
    assert {h.sa.spi_ps for h in held} == {first.spi_ps, second.spi_ps}
    assert p.counters["superseded-set-held-for-open-transaction"] == 1
    assert set(p.by_spi) == set(second.inbound_spis) | set(third.inbound_spis)
    assert p.receive_request(ue_subscribe(), over_first, 12.5) == []
    (reply,) = _answer(p, sub, 481, [], 12.6)
    assert isinstance(reply, Reply) and reply.spi == first.spi_uc
    gone = _released(p.handle_timer(12.3 + DEREGISTER_GRACE + 1.0))
    # (the second's own drain has run by then too)
    assert {(r.sa.spi_ps, r.reason) for r in gone} == {
        (first.spi_ps, SUPERSEDED),
        (second.spi_ps, SUPERSEDED),
    }
    assert p.in_grace() == 0 and set(p.by_spi) == set(third.inbound_spis)


def test_an_answer_whose_set_is_gone_is_not_sent_in_the_clear():
    """The UE de-registers while its SUBSCRIBE is open upstream; the set goes (no
    grace); the SUBSCRIBE's late answer gets SPI 0 (no SA: the edge sends nothing), never
    None (the clear, to the UE's protected port)."""
    p = core(dereg_grace=0.0)
    _, server, over_old = _registered(p)
    (sub,) = p.receive_request(ue_subscribe(), over_old, 9.0)
    dereg = _second(3, server).replace("expires=600000", "expires=0")
    (fwd,) = p.receive_request(parse_message(dereg.encode()), over_old, 10.0)
    _answer(p, fwd, 200, [("Contact", "<sip:127.0.0.1:1357>;expires=0")], 10.1)
    assert not p.by_spi
    late = make_response(parse_message(sub.message.to_bytes()), 200, to_tag="s1")
    (reply,) = p.receive_response(parse_message(late.to_bytes()), SCSCF, 10.5)
    assert isinstance(reply, Reply) and reply.spi == 0
    assert p.drops["reply-over-removed-sa"] == 1


def test_de_registration_holds_the_draining_set_for_the_ues_open_request():
    """A request the UE sent over its old set before a challenged re-registration is
    still open when it de-registers: the old set is held (Timer J), not released, so
    the request's retransmission over it goes up again and its answer comes back over
    it."""
    p = core()
    old, server, over_old = _registered(p)
    (sub,) = p.receive_request(ue_subscribe(), over_old, 9.0)
    new, _ = _reauthenticated(p, server, over_old, 10.0)
    new_server = p.registrations[IMPI].security_server[0]
    dereg = _second(5, new_server, NEW_OFFER).replace("expires=600000", "expires=0")
    over_new = Arrival(("127.0.0.1", 3333), spi=new.spi_ps)
    (fwd,) = p.receive_request(parse_message(dereg.encode()), over_new, 12.0)
    out = _answer(p, fwd, 200, [("Contact", "<sip:127.0.0.1:1357>;expires=0")], 12.1)
    held = {a.sa.spi_ps for a in out if isinstance(a, HoldSecurityAssociations)}
    assert held == {old.spi_ps, new.spi_ps} and not _released(out)
    # the UE's retransmission of its SUBSCRIBE over the old set: absorbed (RFC 3261
    # §17.2.2); the P-CSCF's own Timer E sends it up again
    assert p.receive_request(ue_subscribe(), over_old, 12.5) == []
    again = [a for a in p.handle_timer(12.5) if isinstance(a, Forward) and a is sub]
    assert len(again) == 1
    (reply,) = _answer(p, sub, 200, [("Expires", "600000")], 12.6)
    assert isinstance(reply, Reply) and reply.spi == old.spi_uc
    gone = _released(p.handle_timer(12.1 + DEREGISTER_GRACE + 1.0))
    assert {r.sa.spi_ps for r in gone} == {old.spi_ps, new.spi_ps}
    assert p.in_grace() == 0 and not p.by_spi


def test_after_the_network_ends_it_a_request_to_the_ue_takes_the_newest_held_set():
    """A re-authentication moved the UE to a new set (the old one draining), and a
    request of the UE is open over the new one when the registration lapses at the
    network: both sets are held. The S-CSCF's NOTIFY to the UE then goes over the new
    set, as any request to the UE does (before: over the old one, which the UE had
    deleted once the new one carried traffic; chaos seed 10192 lost the UE's
    terminated NOTIFY so)."""
    from tests.cscf.test_pcscf_dialog_routing import _own_terminated_notify, reginfo

    p = core()
    old, server, over_old = _registered(p)
    own = next(c.forward for c in p.pending.values() if getattr(c, "kind", "") == "subscribe")
    ok = make_response(parse_message(own.message.to_bytes()), 200, to_tag="reg")
    p.receive_response(parse_message(ok.to_bytes()), SCSCF, 3.5)
    new, _ = _reauthenticated(p, server, over_old, 10.0)
    over_new = Arrival(("127.0.0.1", 3333), spi=new.spi_ps)
    (sub,) = p.receive_request(ue_subscribe("z9hG4bKsubnew"), over_new, 10.5)
    assert isinstance(sub, Forward)
    lapse = _own_terminated_notify(
        p, [own], "terminated;reason=timeout", reginfo("terminated", "expired")
    )
    out = p.receive_request(lapse, Arrival(SCSCF), 11.0)
    held = {a.sa.spi_ps for a in out if isinstance(a, HoldSecurityAssociations)}
    assert held == {old.spi_ps, new.spi_ps}
    out = p.receive_request(scscf_notify("terminated;reason=timeout"), Arrival(SCSCF), 11.1)
    (notify,) = [a for a in out if isinstance(a, Reply)]
    assert notify.message.method == "NOTIFY" and notify.spi == new.spi_us
