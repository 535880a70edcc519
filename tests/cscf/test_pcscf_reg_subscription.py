"""P-CSCF core (sans-I/O): its own reg-event subscription as a dialog (TS 24.229
§5.2.3; RFC 6665 §4.1): refreshed in the dialog before the S-CSCF's grant runs out, made
again when only the subscription ended, forgotten when its SUBSCRIBE goes unanswered."""

from __future__ import annotations

import pytest

from imsaka.cscf.pcscf import (
    Arrival,
    Forward,
    InstallSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
)
from imsaka.cscf.pcscf_regsub import refresh_after
from imsaka.sip import Request, make_response
from tests.cscf.test_pcscf_dialog_routing import (
    IMPU,
    SCSCF,
    SERVICE_ROUTE,
    UE_C,
    _own_terminated_notify,
    _reparse,
    reginfo,
    register_through,
)
from tests.cscf.test_pcscf_granted_expires import _re_register

IMPI = "user1_private@home1.net"
SCSCF_CONTACT = "sip:127.0.0.1:5080"


def _subscribes(actions: list) -> list[Request]:
    return [
        a.message for a in actions if isinstance(a, Forward) and a.message.method == "SUBSCRIBE"
    ]


def _registered(grant: int | None = 1000) -> tuple[PcscfCore, Request, list]:
    """PACKET1's UE registered over its SAs, the P-CSCF's SUBSCRIBE answered 200 by the
    S-CSCF at 3.05 (its Contact, `grant` as Expires; None: no Expires). Returns the
    core, that SUBSCRIBE and the actions of the 200 OK to the REGISTER."""
    p, _, acts = register_through()
    (sub,) = _subscribes(acts)
    headers = [("Contact", f"<{SCSCF_CONTACT}>")]
    if grant is not None:
        headers.append(("Expires", str(grant)))
    sub_ok = make_response(_reparse(sub), 200, to_tag="scscf-reg", headers=headers)
    assert p.receive_response(_reparse(sub_ok), SCSCF, 3.05) == []
    return p, sub, acts


@pytest.mark.parametrize(("grant", "after"), [(1000, 500.0), (1200, 600.0), (3600, 3000.0)])
def test_refresh_point(grant, after):
    """TS 24.229 §5.2.3: half of a grant up to 1200 s, 600 s before the end of a longer one."""
    assert refresh_after(grant) == after


def test_the_subscription_is_refreshed_in_its_dialog_before_the_grant_runs_out():
    p, initial, _ = _registered(grant=1000)
    assert not _subscribes(p.handle_timer(3.05 + 499))
    (refresh,) = _subscribes(p.handle_timer(3.05 + 500))
    first = _reparse(initial)
    refresh = _reparse(refresh)
    # RFC 6665 §4.1.2.2: same dialog (Call-ID, both tags), next CSeq, to the remote target
    assert refresh.uri == SCSCF_CONTACT and not refresh.get_all("Route")
    assert refresh.call_id == first.call_id
    assert refresh.from_.tag == first.from_.tag and refresh.to.tag == "scscf-reg"
    assert refresh.cseq.seq == 2 and refresh.get("Expires") == "600000"
    assert p.counters["reg-subscription-refreshed"] == 1
    # its 200 grants anew: the next refresh moves with it (a NOTIFY's expires, too)
    ok = make_response(refresh, 200, headers=[("Expires", "1000")])
    assert p.receive_response(_reparse(ok), SCSCF, 504.0) == []
    assert not _subscribes(p.handle_timer(504.0 + 499))
    (again,) = _subscribes(p.handle_timer(504.0 + 500))
    assert _reparse(again).cseq.seq == 3
    assert len(p.subscriptions) == 1 and p.stats()["registrations"] == 1


def test_a_notify_sets_up_the_dialog_and_its_grant_when_it_overtakes_the_2xx():
    """RFC 6665 §4.1.2.4: the first NOTIFY can come before the 200 to the SUBSCRIBE; the
    unanswered SUBSCRIBE's Timer F then leaves the subscription it confirmed."""
    p, _, acts = register_through()
    notify = _own_terminated_notify(p, acts, "active;expires=800", reginfo("active", "registered"))
    notify.set("Contact", f"<{SCSCF_CONTACT}>")
    (answer,) = p.receive_request(_reparse(notify), Arrival(SCSCF), 3.02)
    assert answer.message.status == 200
    (refresh,) = _subscribes(p.handle_timer(3.02 + 400))
    assert _reparse(refresh).to.tag == "s" and refresh.uri == SCSCF_CONTACT


def test_only_the_subscription_ending_keeps_the_registration_and_subscribes_anew():
    """RFC 6665 §4.1.3: `terminated;reason=timeout` with the registration still active in
    the reginfo ends the subscription, not the registration (its SAs stay); a
    subscription that lived a while is made again at once."""
    p, _, acts = _registered()
    (old_call_id,) = p.subscriptions
    lapse = _own_terminated_notify(
        p, acts, "terminated;reason=timeout", reginfo("active", "registered")
    )
    out = p.receive_request(_reparse(lapse), Arrival(SCSCF), 900.0)
    assert out[0].message.status == 200
    assert p.stats()["registrations"] == 1 and p.stats()["sas"] == 1
    (new,) = _subscribes(out)
    assert new.call_id != old_call_id and not new.to.tag
    assert list(p.subscriptions) == [new.call_id]
    assert p.counters["reg-subscription-ended"] == 1 and p.counters["reg-resubscribed"] == 1


def test_a_subscription_ended_at_once_is_not_made_again_at_once():
    """No SUBSCRIBE/NOTIFY loop with an S-CSCF that ends every subscription it grants:
    the next 200 OK to a REGISTER of the UE subscribes anew."""
    p, _, acts = _registered()
    lapse = _own_terminated_notify(p, acts, "terminated;reason=timeout")  # no reginfo
    out = p.receive_request(_reparse(lapse), Arrival(SCSCF), 5.0)
    assert not _subscribes(out) and p.subscriptions == {}
    assert p.stats()["registrations"] == 1


def test_a_481_to_a_refresh_makes_a_new_subscription():
    """RFC 6665 §4.1.2.2: the S-CSCF no longer holds the subscription."""
    p, initial, _ = _registered(grant=1000)
    (refresh,) = _subscribes(p.handle_timer(503.05))
    gone = make_response(_reparse(refresh), 481, "Subscription Does Not Exist")
    (new,) = _subscribes(p.receive_response(_reparse(gone), SCSCF, 503.1))
    assert new.call_id != initial.call_id and not new.to.tag
    assert new.uri == IMPU and new.get_all("Route") == [SERVICE_ROUTE]
    assert list(p.subscriptions) == [new.call_id]


def test_an_unanswered_subscribe_is_forgotten_so_the_next_registration_subscribes():
    p, _, _ = register_through()
    assert len(p.subscriptions) == 1
    p.handle_timer(3.0 + 33)
    assert p.subscriptions == {} and p.counters["reg-subscribe-unanswered"] == 1
    assert IMPI not in p._subscribed


def _contacts_notify(p: PcscfCore, acts: list, ours: str, other: str) -> Request:
    """The S-CSCF's NOTIFY on our subscription: the IMPU stays registered, our UE's
    contact (sip:127.0.0.1:1357) reported `ours`, another device's `other`."""
    body = reginfo("active", "registered").replace(
        b'<contact id="c0" state="active" event="registered">',
        f'<contact id="c0" state="{ours}" event="unregistered">'.encode(),
    )
    body = body.replace(
        b"  </registration>",
        f'    <contact id="c1" state="{other}" event="unregistered">\n'
        "      <uri>sip:127.0.0.1:2222</uri>\n    </contact>\n  </registration>".encode(),
    )
    return _own_terminated_notify(p, acts, "active;expires=599000", body)


def test_our_contact_reported_gone_ends_the_registration_while_the_impu_stays():
    """TS 24.229 §5.4.2.1.2: the S-CSCF reports one contact de-registered while the IMPU
    stays registered for another: the P-CSCF's registration holding that contact ends
    (its SAs go); another device's contact gone ends nothing here."""
    p, _, acts = _registered()
    out = p.receive_request(
        _reparse(_contacts_notify(p, acts, "active", "terminated")), Arrival(SCSCF), 5.0
    )
    assert out[0].message.status == 200 and p.stats()["registrations"] == 1
    out = p.receive_request(
        _reparse(_contacts_notify(p, acts, "terminated", "active")), Arrival(SCSCF), 6.0
    )
    assert out[0].message.status == 200
    assert any(type(a).__name__ == "ReleaseSecurityAssociations" for a in out)
    assert p.stats()["registrations"] == 0 and p.counters["network-deregistered"] == 1


def test_a_refresh_that_cannot_be_routed_is_dropped_not_retried_in_a_loop():
    """A remote target the P-CSCF cannot reach (its Contact names a host it cannot
    resolve): the subscription is forgotten, the timer goes on."""
    p, _, _ = _registered(grant=1000)
    (sub,) = p.subscriptions.values()
    sub.remote_target = "sip:unknown-host.invalid:5080"
    assert not _subscribes(p.handle_timer(503.05))
    assert p.subscriptions == {} and p.counters["reg-subscription-unroutable"] == 1
    assert p.stats()["registrations"] == 1 and p.next_deadline() is not None


def _subscribed(**kw) -> tuple[PcscfCore, InstallSecurityAssociations, list]:
    """As `_registered` (`kw`: the P-CSCF's configuration), with the UE's SAs."""
    p, inst, acts = register_through(**kw)
    (sub,) = _subscribes(acts)
    sub_ok = make_response(
        _reparse(sub), 200, to_tag="scscf-reg", headers=[("Contact", f"<{SCSCF_CONTACT}>")]
    )
    assert p.receive_response(_reparse(sub_ok), SCSCF, 3.05) == []
    return p, inst, acts


def _re_registered_at(p: PcscfCore, inst, service_route: str, now: float) -> list:
    """A re-REGISTER over the UE's SAs answered 200 by the S-CSCF whose Service-Route
    is `service_route`: the core's actions."""
    contact = "<sip:127.0.0.1:1357>;expires=600000"
    branch = f"z9hG4bKrereg{int(now)}"
    return _re_register(p, inst, contact, now, service_route=service_route, branch=branch)


OTHER_ROUTE = "<sip:orig@127.0.0.1:5090;lr>"  # another S-CSCF's


def test_a_registration_moved_to_another_scscf_moves_the_subscription_there():
    """The UE's re-registration went to another S-CSCF (the I-CSCF chose anew when the
    serving one did not answer, TS 24.229 §5.3.1.2): the subscription at the one before
    hears nothing of the registration any more (a de-registration by the network at
    the new one would never reach the P-CSCF, which would keep the UE's SAs). It is
    ended there (Expires: 0 in its dialog) and made anew along the new Service-Route;
    what the old one still sends on it ends nothing."""
    p, inst, acts = _subscribed()
    (old_call_id,) = p.subscriptions
    out = _re_registered_at(p, inst, OTHER_ROUTE, 100.0)
    subscribes = [_reparse(s) for s in _subscribes(out)]
    ended = [s for s in subscribes if s.call_id == old_call_id]
    (new,) = [s for s in subscribes if s.call_id != old_call_id]
    assert [s.get("Expires") for s in ended] == ["0"] and ended[0].to.tag == "scscf-reg"
    assert new.get_all("Route") == [OTHER_ROUTE] and not new.to.tag
    assert p._subscribed[IMPI] == new.call_id
    assert p.counters["reg-subscription-moved"] == 1
    # The old S-CSCF, its binding lapsing, NOTIFYs the end on the old dialog: answered,
    # and the registration with its SAs stays.
    lapse = _own_terminated_notify(
        p, acts, "terminated;reason=timeout", reginfo("terminated", "expired")
    )
    (answer,) = p.receive_request(_reparse(lapse), Arrival(SCSCF), 200.0)
    assert answer.message.status == 200
    assert p.stats()["registrations"] == 1 and p.stats()["sas"] == 1
    # Refreshed at the same S-CSCF (the same Service-Route): nothing moves.
    out = _re_registered_at(p, inst, OTHER_ROUTE, 300.0)
    assert not _subscribes(out) and p.counters["reg-subscription-moved"] == 1


def test_a_registration_answered_by_another_instance_of_the_scscf_keeps_the_subscription():
    """Instances of one S-CSCF (`scscf_instances`) share its registrations and
    subscriptions: a re-registration answered by another instance moves nothing."""
    groups = (("sip:127.0.0.1:5080", "sip:127.0.0.1:5090"),)
    p, inst, _ = _subscribed(scscf_instances=groups)
    out = _re_registered_at(p, inst, OTHER_ROUTE, 100.0)
    assert not _subscribes(out) and p.counters["reg-subscription-moved"] == 0


def test_another_devices_end_is_not_this_ues():
    """Two devices (IMPIs) share the IMPU (TS 23.228 §4.3.3.4): the 200 to this UE's
    re-REGISTER lists both contacts (RFC 3261 §10.3), the other device's first. When
    the network ends the other device's contact, the reg-event NOTIFY lists it
    terminated and this UE's active: this registration and its SAs stay. Before, the
    P-CSCF took the 200's first Contact for this UE's and released its SAs (lifecycle
    chaos --devices 2, seed 10432)."""
    p, inst, acts = _subscribed()
    own = "<sip:127.0.0.1:40000>;expires=600000"  # (what its re-REGISTER binds)
    _re_register(p, inst, ["<sip:127.0.0.1:4444>;expires=500", own], 8.0)
    body = reginfo("active", "registered").replace(b":1357<", b":40000<")
    body = body.replace(
        b"  </registration>",
        b'    <contact id="c1" state="terminated" event="rejected" expires="0">\n'
        b"      <uri>sip:127.0.0.1:4444</uri>\n    </contact>\n  </registration>",
    )
    notify = _own_terminated_notify(p, acts, "active;expires=600000", body)
    out = p.receive_request(_reparse(notify), Arrival(SCSCF), 9.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 1
    assert not p.registrations[IMPI].release_at


def _tablets_end() -> bytes:
    """The reginfo of the S-CSCF this UE moved away from: the registration it held
    ended, the other device sharing the IMPU (its contact alone listed) told to register
    again (RTR NEW_SERVER_ASSIGNED)."""
    return reginfo("terminated", "deactivated").replace(b":1357<", b":4444<")


def test_another_devices_end_in_an_ended_registration_is_not_this_ues():
    """The UE moved to another S-CSCF; the old one's NOTIFY on our subscription there
    (before the move's 200 reached us) reports the registration terminated, listing the
    other device's contact only. TS 24.229 §5.2.3 acts on this UE's contact: the
    registration and its SAs stay, only the subscription ended (made again). Before
    2026-11-29 (ninth session) any terminated registration was taken as this UE's end."""
    p, _inst, acts = _subscribed()
    notify = _own_terminated_notify(p, acts, "terminated;reason=deactivated", _tablets_end())
    out = p.receive_request(_reparse(notify), Arrival(SCSCF), 100.0)
    assert out[0].message.status == 200
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    reg = p.registrations[IMPI]
    assert not reg.release_at and not reg.network_terminated
    assert _subscribes(out) and p.counters["reg-subscription-ended"] == 1


def test_another_devices_end_answered_by_this_ue_is_not_its_end():
    """The same document on the UE's own subscription at the S-CSCF it moved away from,
    relayed to the UE over its SAs and answered: the registration and SAs stay."""
    from tests.cscf.test_pcscf_dialog_routing import (
        registered,
        relayed_and_answered,
        scscf_notify,
        subscribe_through,
    )

    p, inst, _acts = registered()
    subscribe_through(p, inst)
    state, body = "terminated;reason=deactivated", _tablets_end()
    notify = scscf_notify(state, branch="z9hG4bKnotify2", cseq=2, body=body)
    out = relayed_and_answered(p, inst, notify, 5.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 1 and not p.registrations[IMPI].release_at
    assert p.counters["network-deregistration-seen-in-ue-notify"] == 0


def test_the_end_of_the_ues_subscription_at_the_scscf_it_left_is_not_its_end():
    """The UE re-registered at another S-CSCF (the I-CSCF chose anew); the one it
    left, told by the HSS (RTR NEW_SERVER_ASSIGNED), ends the UE's own reg-event
    subscription there, its reginfo listing this UE's contact terminated. The UE
    answers it (and subscribes anew along its new Service-Route): the registration it
    holds at the new S-CSCF and its SAs stay. Before 2026-11-29 (tenth session) that
    answer ended them here, and everything the UE sent over its set afterwards was
    dropped (lifecycle chaos --devices 2 --scscf-moves, seed 11102). The same NOTIFY
    from the S-CSCF that serves the registration still ends it."""
    from tests.cscf.test_pcscf_dialog_routing import (
        registered,
        relayed_and_answered,
        scscf_notify,
        subscribe_through,
    )

    state, body = "terminated;reason=deactivated", reginfo("terminated", "deactivated")
    p, inst, _acts = registered()
    subscribe_through(p, inst)
    _re_registered_at(p, inst, OTHER_ROUTE, 100.0)
    notify = scscf_notify(state, branch="z9hG4bKnotify2", cseq=2, body=body)
    out = relayed_and_answered(p, inst, notify, 101.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 1 and not p.registrations[IMPI].release_at
    assert p.counters["network-deregistration-seen-in-ue-notify"] == 0
    assert p.counters["end-from-an-scscf-left-answered"] == 1

    p, inst, _acts = registered()
    subscribe_through(p, inst)
    notify = scscf_notify(state, branch="z9hG4bKnotify2", cseq=2, body=body)
    relayed_and_answered(p, inst, notify, 101.0)
    assert p.counters["network-deregistration-seen-in-ue-notify"] == 1
    assert p.stats()["registrations"] == 0


NEW_SCSCF = ("127.0.0.1", 5090)  # the S-CSCF of OTHER_ROUTE


def _moved_to_the_other_scscf() -> tuple[PcscfCore, InstallSecurityAssociations, Request]:
    """The UE registered and subscribed, then re-registered at the S-CSCF of
    OTHER_ROUTE: the P-CSCF's new subscription there (its SUBSCRIBE, answered 200)."""
    from tests.cscf.test_pcscf_dialog_routing import registered, subscribe_through

    p, inst, _acts = registered()
    subscribe_through(p, inst)
    moved = _re_registered_at(p, inst, OTHER_ROUTE, 100.0)
    (new_sub,) = [s for s in _subscribes(moved) if s.get("Expires") != "0"]
    ok = make_response(_reparse(new_sub), 200, to_tag="scscf2-reg")
    p.receive_response(_reparse(ok), NEW_SCSCF, 100.1)
    return p, inst, new_sub


def _rejected_at(p: PcscfCore, sub: Request) -> Request:
    """The new S-CSCF's NOTIFY on the P-CSCF's subscription `sub` after an RTR."""
    return _own_terminated_notify(
        p,
        [Forward(sub, NEW_SCSCF)],
        "terminated;reason=rejected",
        reginfo("terminated", "rejected"),
    )


def _ended_at_the_scscf_left() -> Request:
    """The UE's own subscription ended by the S-CSCF it left (RTR NEW_SERVER_ASSIGNED)."""
    from tests.cscf.test_pcscf_dialog_routing import scscf_notify

    return scscf_notify(
        "terminated;reason=deactivated",
        branch="z9hG4bKnotify2",
        cseq=2,
        body=reginfo("terminated", "deactivated"),
    )


def test_the_ues_answer_to_the_end_at_the_scscf_it_left_does_not_release_a_network_end():
    """The UE moved to another S-CSCF; the operator's RTR ends its registration there
    at once, before the UE's own subscription followed it: the P-CSCF's NOTIFY from the
    new S-CSCF ("rejected") waits for the UE's terminated NOTIFY (TS 24.229 §5.2.3).
    Meanwhile the S-CSCF it left (RTR NEW_SERVER_ASSIGNED) ends the UE's subscription
    there, and the UE answers that. That answer is not the UE learning of the end: the
    SAs stay, so the UE's new SUBSCRIBE along its new Service-Route reaches the new
    S-CSCF and its answer (480: nothing registered) comes back to the UE, which then
    registers anew at once; the SAs go at Timer F after the P-CSCF's NOTIFY. Before
    2026-11-29 (eleventh session) they went on that answer, the UE's SUBSCRIBE was
    dropped and the UE learnt of the end only when its refresh ran out, 45 s later
    (lifecycle chaos --scscf-moves, seed 11202)."""
    from tests.cscf.test_pcscf_dialog_routing import (
        relayed_and_answered,
        ue_subscribe,
    )

    p, inst, new_sub = _moved_to_the_other_scscf()
    # the operator's RTR at the new S-CSCF: the P-CSCF's NOTIFY says "rejected"
    own = _rejected_at(p, new_sub)
    (answer, *rest) = p.receive_request(_reparse(own), Arrival(NEW_SCSCF), 101.0)
    assert answer.message.status == 200
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in rest)
    assert p.registrations[IMPI].release_at == 101.0 + 32.0
    # the S-CSCF left ends the UE's subscription there: answered, nothing released
    left = _ended_at_the_scscf_left()
    out = relayed_and_answered(p, inst, left, 101.5)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 1
    assert p.counters["end-from-an-scscf-left-answered"] == 1
    # the UE subscribes anew along its Service-Route, over its SAs: relayed, and the
    # new S-CSCF's 480 goes back to it over them
    sub = ue_subscribe(branch="z9hG4bKsub2", **{"Call-ID": "ue-sub-2"})
    sub.remove("Route")
    sub.add("Route", "<sip:127.0.0.1:5063;lr>")
    sub.add("Route", OTHER_ROUTE)
    (fwd,) = p.receive_request(sub, Arrival(UE_C, spi=inst.sa.spi_ps), 101.7)
    assert isinstance(fwd, Forward) and fwd.destination == NEW_SCSCF
    refused = make_response(_reparse(fwd.message), 480, "Temporarily Unavailable")
    (back,) = p.receive_response(_reparse(refused), NEW_SCSCF, 101.8)
    assert back.message.status == 480 and back.spi == inst.sa.spi_uc
    # no terminated NOTIFY of the UE's comes: the SAs go at Timer F
    out = p.handle_timer(133.0)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0


def test_after_the_end_at_the_scscf_it_left_a_network_end_still_waits_for_the_ue():
    """As above, the other order: the UE answers the end of its subscription at the
    S-CSCF it left first, then the new S-CSCF's RTR ends the registration. The UE is
    subscribing anew there, so the P-CSCF's NOTIFY ("rejected") waits for its word
    (Timer F at most) instead of letting the SAs go at once."""
    from tests.cscf.test_pcscf_dialog_routing import (
        relayed_and_answered,
    )

    p, inst, new_sub = _moved_to_the_other_scscf()
    left = _ended_at_the_scscf_left()
    relayed_and_answered(p, inst, left, 100.5)
    own = _rejected_at(p, new_sub)
    out = p.receive_request(_reparse(own), Arrival(NEW_SCSCF), 101.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.registrations[IMPI].release_at == 101.0 + 32.0
    assert p.counters["network-deregistration-awaits-ue-notify"] == 1
