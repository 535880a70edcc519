"""P-CSCF core (sans-I/O): a network-initiated de-registration told by reg-event
NOTIFYs whose reginfo (RFC 3680) reports every registration terminated while their
Subscription-State stays "active", as Kamailio's IMS S-CSCF 5.6 sends them after an
RTR (seen in tests/e2e/test_kamailio_scscf.py; its registrations carry no <contact>).

The UE's NOTIFY is still the UE's word of the de-registration (TS 24.229 §5.1.1.7):
once the UE answered it over its SAs, they go. Before, only a "terminated"
Subscription-State counted, and the SAs waited out the whole transaction lifetime
(32 s) after the RTR."""

from __future__ import annotations

from imsaka.cscf.pcscf import TRANSACTION_LIFETIME, UE_SUB_NOTIFIED, Arrival, Forward
from imsaka.cscf.pcscf import ReleaseSecurityAssociations as Release
from imsaka.sip import Request, make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    IMPU,
    SCSCF,
    UE_S,
    _own_terminated_notify,
    registered,
    scscf_notify,
    subscribe_through,
)

ACTIVE = "active;expires=600000"


def _reginfo(state: str, contact: bool) -> bytes:
    """Kamailio's full-state reginfo for IMPU: with its <contact> or, once the
    registration is terminated, without one."""
    inner = (
        f'    <contact id="c0" state="{state}" event="registered">'
        "<uri>sip:127.0.0.1:1357</uri></contact>\n"
        if contact
        else ""
    )
    return (
        '<?xml version="1.0"?>\n'
        '<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="3" state="full">\n'
        f'  <registration aor="{IMPU}" id="r0" state="{state}">\n{inner}  </registration>\n'
        "</reginfo>\n"
    ).encode()


def _ue_notify(body: bytes, cseq: int) -> Request:
    """The S-CSCF's NOTIFY in the UE's reg-event dialog, Subscription-State active."""
    head = scscf_notify(ACTIVE, branch=f"z9hG4bKue{cseq}", cseq=cseq).to_bytes()
    length = f"Content-Length: {len(body)}".encode()
    return parse_message(head.replace(b"Content-Length: 0", length) + body)


def _through_ue(p, inst, notify: Request, at: float) -> list:
    """`notify` on to the UE over its SAs, and the UE's 200 back: what that gives."""
    (rep,) = p.receive_request(notify, Arrival(SCSCF), at)
    assert rep.spi == inst.sa.spi_us
    ok = make_response(parse_message(rep.message.to_bytes()), 200)
    return p.receive_response(parse_message(ok.to_bytes()), UE_S, at + 0.01, spi=inst.sa.spi_pc)


def test_own_notify_first_then_the_ues_answered_releases_at_once():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    ended = _reginfo("terminated", contact=False)
    out = p.receive_request(_own_terminated_notify(p, acts, ACTIVE, ended), Arrival(SCSCF), 5.0)
    assert not any(isinstance(a, Release) for a in out)
    assert p.registrations["user1_private@home1.net"].release_at == 5.0 + TRANSACTION_LIFETIME
    out = _through_ue(p, inst, _ue_notify(ended, 3), 5.01)
    assert isinstance(out[0], Forward) and out[0].destination == SCSCF
    assert [a.sa.spi_ps for a in out if isinstance(a, Release)] == [inst.sa.spi_ps]
    assert p.stats()["registrations"] == 0 and p.counters["network-deregistered"] == 1


def test_the_ues_notify_answered_first_then_ours_releases_at_once():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    ended = _reginfo("terminated", contact=False)
    out = _through_ue(p, inst, _ue_notify(ended, 3), 5.0)
    # (no NOTIFY of ours yet: the UE's answer alone ends it, as with "terminated")
    assert p.counters["network-deregistration-seen-in-ue-notify"] == 1
    assert any(isinstance(a, Release) for a in out)
    out = p.receive_request(_own_terminated_notify(p, acts, ACTIVE, ended), Arrival(SCSCF), 5.1)
    assert out[0].message.status == 200
    assert p.stats()["registrations"] == 0


def test_an_active_reginfo_is_not_an_end():
    """A refresh-time NOTIFY (registration active) keeps everything, and the UE's
    answer to it does not count as its word of an end."""
    p, inst, _acts = registered()
    subscribe_through(p, inst)
    out = _through_ue(p, inst, _ue_notify(_reginfo("active", contact=True), 3), 5.0)
    assert not any(isinstance(a, Release) for a in out)
    reg = p.registrations["user1_private@home1.net"]
    assert reg.ue_sub != UE_SUB_NOTIFIED and reg.sa is not None
    assert p.stats()["registrations"] == 1


def _unsubscribes(out: list) -> list:
    return [
        a
        for a in out
        if isinstance(a, Forward)
        and a.message.method == "SUBSCRIBE"
        and a.message.get("Expires") == "0"
    ]


def test_our_subscription_kept_active_after_the_end_is_ended_at_once():
    """The S-CSCF reported the registration ended and keeps our subscription active:
    no terminated NOTIFY is coming, so our Expires: 0 goes at the next timer, not
    `DETACHED_WAIT` later, before a new registration's SUBSCRIBE meets it there
    (Kamailio then merges the two)."""
    p, _inst, acts = registered()
    ended = _reginfo("terminated", contact=False)
    notify = _own_terminated_notify(p, acts, ACTIVE, ended)
    notify.add("Contact", "<sip:127.0.0.1:5080>")  # (the dialog's remote target)
    out = p.receive_request(notify, Arrival(SCSCF), 5.0)
    assert any(isinstance(a, Release) for a in out)
    assert p.next_deadline() == 5.0
    (unsub,) = _unsubscribes(p.handle_timer(5.0))
    assert unsub.message.call_id == _own_terminated_notify(p, acts).call_id
    assert p.counters["reg-subscription-given-up"] == 1 and not p.subscriptions


def test_a_terminated_subscription_needs_no_unsubscribe():
    p, _inst, acts = registered()
    ended = _reginfo("terminated", contact=False)
    notify = _own_terminated_notify(p, acts, "terminated;reason=deactivated", ended)
    p.receive_request(notify, Arrival(SCSCF), 5.0)
    assert not p.subscriptions
    deadline = p.next_deadline()
    assert not _unsubscribes(p.handle_timer(deadline if deadline is not None else 5.0))


def test_a_ues_481_to_an_end_tells_it_nothing_and_its_own_end_is_still_awaited():
    """A terminated NOTIFY the UE answers 481 (the final NOTIFY of a subscription it
    dropped with an earlier registration, reaching the same contact) told it nothing:
    its current subscription stays active here, so when the network then ends the
    registration the SAs wait for the UE's own NOTIFY (before: the 481 counted as its
    word, the SAs went with our NOTIFY, and the UE's NOTIFY met 404: chaos seed 9962)."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    ended = _reginfo("terminated", contact=False)
    stale = scscf_notify("terminated;reason=deactivated", branch="z9hG4bKold", cseq=9)
    (rep,) = p.receive_request(stale, Arrival(SCSCF), 4.0)
    gone = make_response(parse_message(rep.message.to_bytes()), 481)
    out = p.receive_response(parse_message(gone.to_bytes()), UE_S, 4.01, spi=inst.sa.spi_pc)
    assert not any(isinstance(a, Release) for a in out)
    reg = p.registrations["user1_private@home1.net"]
    assert reg.ue_sub != UE_SUB_NOTIFIED and reg.sa is not None
    out = p.receive_request(
        _own_terminated_notify(p, acts, "terminated;reason=rejected", ended), Arrival(SCSCF), 5.0
    )
    assert not any(isinstance(a, Release) for a in out)
    assert reg.release_at == 5.0 + TRANSACTION_LIFETIME
    out = _through_ue(p, inst, _ue_notify(ended, 10), 5.01)
    assert [a.sa.spi_ps for a in out if isinstance(a, Release)] == [inst.sa.spi_ps]
