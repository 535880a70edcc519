"""The UE's reg-event subscription, sans-I/O (TS 24.229 §5.1.1.3, §5.1.1.7; RFC 3680,
RFC 6665): the SUBSCRIBE after the initial registration, the dialog from its 2xx or
from a NOTIFY that overtook it, the refresh, the NOTIFYs and what they do to the
registration and its SAs."""

from __future__ import annotations

import pytest
from tests.e2e.test_ue_core import challenge, make_ue

from imsaka.sip import Request, make_response, parse_message
from imsaka.ue.core import (
    Deregistered,
    NetworkDeregistered,
    Registered,
    RegStateNotified,
    SecurityAssociationsReleased,
    SendRequest,
    SendResponse,
    Subscribed,
    SubscriptionEnded,
    UeState,
)
from imsaka.ue.regevent import MAX_REGINFO, ReginfoError, parse_reginfo

IMPU = "sip:user1_public1@home1.net"
SERVICE_ROUTE = "<sip:orig@scscf1.home1.net:6060;lr>"
PCSCF_RR = "<sip:127.0.0.1:7531;lr>"  # the P-CSCF's Record-Route, rewritten to its port-s
SCSCF_RR = "<sip:scscf1.home1.net:6060;lr>"
SCSCF_CONTACT = "sip:scscf1.home1.net:6060"
OUR_CONTACT = "sip:127.0.0.1:1357"  # the UE's port-s (make_ue's protected ports 2468/1357)


def wire(msg):
    """Through the wire format, as the edge would hand it over."""
    return parse_message(msg.to_bytes())


# When `registered` sends the challenge response (its 200 comes at 2 s): the
# re-registration is timed from it (the S-CSCF's grant runs from no later).
SENT = 1.0


def registered(seed: int = 1, *, expires: int = 600000, **kw):
    """A UE through both phases; returns (ue, the SUBSCRIBE it sent or None, events)."""
    ue = make_ue(seed, **kw)
    (send1,) = ue.register(0.0)
    resp, _vec, _nonce = challenge(send1.request)
    send2 = next(e for e in ue.receive(resp, 1.0) if isinstance(e, SendRequest))
    ok = make_response(
        send2.request,
        200,
        to_tag="5ef4",
        headers=[
            ("Contact", f"<{OUR_CONTACT}>;expires={expires}"),
            ("Service-Route", SERVICE_ROUTE),
            ("P-Associated-URI", f"<{IMPU}>"),
        ],
    )
    events = ue.receive(wire(ok), 2.0)
    assert ue.state is UeState.REGISTERED
    subs = [e for e in events if isinstance(e, SendRequest)]
    return ue, (subs[0].request if subs else None), events


def subscribe_ok(subscribe: Request, *, expires: int = 600000, tag: str = "s1"):
    return wire(
        make_response(
            subscribe,
            200,
            to_tag=tag,
            headers=[
                ("Record-Route", PCSCF_RR),
                ("Record-Route", SCSCF_RR),
                ("Expires", str(expires)),
                ("Contact", f"<{SCSCF_CONTACT}>"),
            ],
        )
    )


def reginfo(
    *,
    version: int = 0,
    reg_state: str = "active",
    contact_state: str = "active",
    event: str = "registered",
    expires: int | None = 600000,
    contact: str = OUR_CONTACT,
) -> bytes:
    exp = f' expires="{expires}"' if expires is not None else ""
    return (
        '<?xml version="1.0"?>\n'
        f'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="{version}" state="full">\n'
        f'  <registration aor="{IMPU}" id="r0" state="{reg_state}">\n'
        f'    <contact id="c0" state="{contact_state}" event="{event}"{exp}>\n'
        f"      <uri>{contact}</uri>\n"
        "    </contact>\n"
        "  </registration>\n"
        "</reginfo>\n"
    ).encode()


def notify(
    subscribe: Request,
    body: bytes = b"",
    *,
    cseq: int = 1,
    state: str = "active;expires=600000",
    tag: str = "s1",
    content_type: str = "application/reginfo+xml",
    call_id: str | None = None,
    contact: str = SCSCF_CONTACT,
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 127.0.0.1:8642;branch=z9hG4bKn" + str(cseq)),
        ("Record-Route", PCSCF_RR),
        ("Max-Forwards", "69"),
        ("From", f"<{IMPU}>;tag={tag}"),
        ("To", f"<{IMPU}>;tag={subscribe.from_.tag}"),
        ("Call-ID", call_id or subscribe.call_id),
        ("CSeq", f"{cseq} NOTIFY"),
        ("Contact", f"<{contact}>"),
        ("Event", "reg"),
        ("Subscription-State", state),
    ]
    if body:
        headers.append(("Content-Type", content_type))
    headers.append(("Content-Length", str(len(body))))
    return wire(Request("NOTIFY", OUR_CONTACT, headers, body))


def answer(events) -> int:
    assert isinstance(events[0], SendResponse), events
    return events[0].response.status


def subscribed(seed: int = 1, **kw):
    ue, sub, _ = registered(seed, **kw)
    events = ue.receive(subscribe_ok(sub), 2.1)
    assert events == [Subscribed(600000, False)]
    assert answer(ue.receive_request(notify(sub, reginfo()), 2.2)) == 200
    return ue, sub


# ------------------------------------------------------------------- the SUBSCRIBE


def test_subscribe_after_the_initial_registration_as_contracted():
    ue, sub, events = registered()
    kinds = [type(e) for e in events]
    assert kinds.index(Registered) < kinds.index(SendRequest)  # after the 200 OK
    send = next(e for e in events if isinstance(e, SendRequest))
    assert send.protected  # over the newly established SA set
    assert sub.method == "SUBSCRIBE" and sub.uri == IMPU
    # the P-CSCF's protected server port, then the Service-Route (§5.1.2A.1.1)
    assert sub.get_all("Route") == [PCSCF_RR, SERVICE_ROUTE]
    assert sub.from_.uri == IMPU and sub.from_.tag
    assert sub.to.uri == IMPU and sub.to.tag is None
    assert sub.get("Event") == "reg" and sub.expires == 600000
    assert sub.get("Accept") == "application/reginfo+xml"
    assert sub.get("Contact") == f"<{OUR_CONTACT}>"
    assert sub.top_via.port == 1357 and sub.top_via.branch.startswith("z9hG4bK")
    assert sub.cseq.method == "SUBSCRIBE" and sub.get("Max-Forwards") == "70"
    assert sub.call_id != ue.call_id  # a new Call-ID, not the registration's
    wire(sub)


def test_no_subscribe_after_a_reregistration_nor_when_switched_off():
    ue, _sub = subscribed()
    (rereg,) = ue.handle_timer(2.0 + 599400.0)
    assert rereg.request.method == "REGISTER"
    ok = make_response(
        rereg.request, 200, to_tag="5ef4", headers=[("Contact", f"<{OUR_CONTACT}>;expires=600000")]
    )
    events = ue.receive(wire(ok), 599403.0)
    assert not [e for e in events if isinstance(e, SendRequest)]

    ue, sub, events = registered(subscribe_reg_event=False)
    assert sub is None and ue.subscription is None
    assert [type(e) for e in events if isinstance(e, SendRequest)] == []


def test_the_2xx_makes_the_dialog_and_the_refresh_goes_in_it():
    ue, sub, _ = registered()
    ue.receive(subscribe_ok(sub, expires=3600), 10.0)
    # granted over 1200 s: refresh 600 s before the expiry (§5.1.1.3)
    assert ue.next_deadline() == pytest.approx(10.0 + 3000)
    assert ue.handle_timer(10.0 + 2999) == []
    (refresh,) = ue.handle_timer(10.0 + 3000)
    req = refresh.request
    assert refresh.protected and req.method == "SUBSCRIBE"
    assert req.uri == SCSCF_CONTACT  # the remote target
    assert req.get_all("Route") == [SCSCF_RR, PCSCF_RR]  # Record-Route reversed
    assert req.call_id == sub.call_id and req.from_.tag == sub.from_.tag
    assert req.to.tag == "s1" and req.cseq.seq == sub.cseq.seq + 1
    assert req.expires == 600000
    # no second refresh while this one is out; its 2xx sets the next
    assert ue.handle_timer(10.0 + 3100) == []
    assert ue.receive(subscribe_ok(req, expires=1000), 3020.0) == [Subscribed(1000, True)]
    assert ue.next_deadline() == pytest.approx(3020.0 + 500)  # half of ≤ 1200 s


def test_a_notify_before_the_2xx_is_taken_and_makes_the_dialog():
    ue, sub, _ = registered()
    n = notify(sub, reginfo())
    events = ue.receive_request(n, 2.05)
    assert answer(events) == 200
    assert RegStateNotified("active", 0) in events
    ans = events[0].response
    assert ans.to.tag == sub.from_.tag and ans.call_id == sub.call_id  # in the dialog
    assert ans.get_all("Via") == n.get_all("Via")
    # the 2xx arrives later: it is the dialog's, and its Record-Route is our route set
    assert ue.receive(subscribe_ok(sub), 2.1) == [Subscribed(600000, False)]
    assert ue.subscription.route_set == (SCSCF_RR, PCSCF_RR)
    sent = ue.handle_timer(2.1 + 599400)  # the re-registration is due then too
    (refresh,) = [e for e in sent if e.request.method == "SUBSCRIBE"]
    assert refresh.request.get_all("Route") == [SCSCF_RR, PCSCF_RR]


def test_a_notify_naming_another_contact_moves_the_next_refresh_there():
    """A NOTIFY is a target refresh (RFC 6665; RFC 3261 §12.2.1.2): the instance of
    the S-CSCF that took the subscription over from a stopped one NOTIFYs with its own
    Contact, and the UE's next refresh goes there, along the same route set (before
    2026-11-28 it went on to the stopped instance: lifecycle_chaos seed 10006)."""
    ue, sub, _ = registered()
    ue.receive(subscribe_ok(sub, expires=3600), 10.0)
    assert answer(ue.receive_request(notify(sub, reginfo()), 10.1)) == 200
    taker = "sip:scscf1.home1.net:6061"
    n = notify(sub, reginfo(version=1), cseq=20, contact=taker, state="active;expires=3000")
    assert answer(ue.receive_request(n, 500.0)) == 200
    (refresh,) = ue.handle_timer(500.0 + 3000 - 600)
    assert refresh.request.uri == taker
    assert refresh.request.get_all("Route") == [SCSCF_RR, PCSCF_RR]


def test_a_2xx_of_another_dialog_than_the_first_notify_changes_nothing():
    ue, sub, _ = registered()
    assert answer(ue.receive_request(notify(sub, reginfo()), 2.05)) == 200
    assert ue.receive(subscribe_ok(sub, tag="fork2"), 2.1) == [Subscribed(600000, False)]
    assert ue.subscription.remote_tag == "s1"
    assert ue.subscription.route_set == (PCSCF_RR,)  # the NOTIFY's Record-Route
    assert answer(ue.receive_request(notify(sub, reginfo(version=1), cseq=2), 3.0)) == 200


def test_a_notify_of_another_dialog_is_481():
    ue, sub = subscribed()
    assert answer(ue.receive_request(notify(sub, cseq=2, call_id="other@x"), 3.0)) == 481
    assert answer(ue.receive_request(notify(sub, cseq=2, tag="forked"), 3.0)) == 481
    assert ue.state is UeState.REGISTERED


# ------------------------------------------------------------------- §5.1.1.7


@pytest.mark.parametrize("reg_state", ["terminated", "active"])
def test_rejected_removes_the_registration_and_its_sas_without_reregistering(reg_state):
    ue, sub = subscribed()
    sa = ue.sa
    body = reginfo(
        version=1, reg_state=reg_state, contact_state="terminated", event="rejected", expires=None
    )
    events = ue.receive_request(notify(sub, body, cseq=2, state="terminated;reason=rejected"), 5.0)
    assert answer(events) == 200  # first: the answer goes out before the SAs go
    assert SecurityAssociationsReleased(sa, "network-initiated de-registration (rejected)") in (
        events
    )
    assert NetworkDeregistered("rejected", False) in events
    assert str(NetworkDeregistered("rejected")) == "network-initiated de-registration (rejected)"
    assert not [e for e in events if isinstance(e, SendRequest)]
    assert ue.state is UeState.DEREGISTERED and ue.sa is None and ue.network_event == "rejected"
    assert ue.subscription is None and ue.next_deadline() is None  # no timer left


def test_deactivated_starts_a_new_initial_registration():
    ue, sub = subscribed()
    sa, old_call_id = ue.sa, ue.call_id
    body = reginfo(
        version=1, reg_state="terminated", contact_state="terminated", event="deactivated"
    )
    events = ue.receive_request(
        notify(sub, body, cseq=2, state="terminated;reason=deactivated"), 5.0
    )
    assert answer(events) == 200
    released = [e for e in events if isinstance(e, SecurityAssociationsReleased)]
    assert [e.sa for e in released] == [sa]
    assert NetworkDeregistered("deactivated", True) in events
    (send,) = [e for e in events if isinstance(e, SendRequest)]
    assert send.request.method == "REGISTER" and not send.protected
    assert send.request.call_id != old_call_id and send.request.authorization.response == ""
    assert ue.state is UeState.UNPROTECTED_SENT


def test_the_timeout_of_a_register_the_ue_left_ends_not_the_one_pending():
    """A refresh is open when the network's "deactivated" makes the UE register anew;
    the refresh's client transaction runs on (RFC 3261 §17.1.2) and its Timer F fires
    later, while the new REGISTER is pending. That timeout, told by its Via branch,
    ends nothing; the pending REGISTER's own does. Before the twelfth session
    (2026-11-29) the first failed whichever REGISTER was pending (chaos seed 11168: a
    de-REGISTER, 408 at once). The same for a SUBSCRIBE of an ended subscription."""
    ue, sub = subscribed()
    (refresh,) = [e for e in ue.register(4.0) if isinstance(e, SendRequest)]
    body = reginfo(
        version=1, reg_state="terminated", contact_state="terminated", event="deactivated"
    )
    events = ue.receive_request(
        notify(sub, body, cseq=2, state="terminated;reason=deactivated"), 5.0
    )
    (anew,) = [e for e in events if isinstance(e, SendRequest)]
    assert ue.state is UeState.UNPROTECTED_SENT
    old_branch = refresh.request.top_via.branch
    assert ue.transaction_timeout(36.0, "REGISTER", old_branch) == []
    assert ue.state is UeState.UNPROTECTED_SENT and ue.pending is anew.request
    assert ue.drops["timeout-of-an-earlier-register"] == 1
    events = ue.transaction_timeout(37.0, "REGISTER", anew.request.top_via.branch)
    assert ue.state is UeState.FAILED
    # a SUBSCRIBE's
    ue, _sub, _ = registered(2)
    assert ue.transaction_timeout(34.0, "SUBSCRIBE", "z9hG4bKother") == []
    assert ue.subscription is not None and ue.subscription.pending_cseq
    branch = ue.subscription.pending_branch
    assert ue.transaction_timeout(34.0, "SUBSCRIBE", branch) == [
        SubscriptionEnded("no answer to the SUBSCRIBE")
    ]


def test_subscription_terminated_ends_the_dialog_but_not_the_registration():
    ue, sub = subscribed()
    events = ue.receive_request(notify(sub, cseq=2, state="terminated;reason=timeout"), 5.0)
    assert answer(events) == 200
    assert SubscriptionEnded("timeout") in events
    assert ue.subscription is None and ue.state is UeState.REGISTERED and ue.sa is not None


def test_shortened_moves_the_reregistration_before_the_new_expiry():
    ue, sub = subscribed()
    assert ue.next_deadline() == pytest.approx(SENT + 599400)
    body = reginfo(version=1, event="shortened", expires=100)
    assert answer(ue.receive_request(notify(sub, body, cseq=2), 50.0)) == 200
    assert ue.next_deadline() == pytest.approx(50.0 + 50)
    (rereg,) = ue.handle_timer(100.0)
    assert rereg.request.method == "REGISTER" and rereg.protected


def test_an_older_version_changes_nothing():
    ue, sub = subscribed()
    ue.receive_request(notify(sub, reginfo(version=5), cseq=2), 3.0)
    stale = reginfo(version=4, contact_state="terminated", event="rejected", expires=None)
    events = ue.receive_request(notify(sub, stale, cseq=3), 4.0)
    assert answer(events) == 200 and RegStateNotified("active", None) in events
    assert ue.state is UeState.REGISTERED and ue.sa is not None


def test_a_notify_out_of_cseq_order_is_refused():
    ue, sub = subscribed()
    assert answer(ue.receive_request(notify(sub, reginfo(version=1), cseq=1), 3.0)) == 500


# ------------------------------------------------------------------- bad NOTIFYs


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="1" state="full">&lol2;</reginfo>"""


@pytest.mark.parametrize(
    "body",
    [
        b"<reginfo",  # not well-formed
        BILLION_LAUGHS,
        reginfo(version=1).replace(b'version="1"', b'version="x"'),
        reginfo(version=1).replace(b'event="registered"', b'event="gone"'),
        reginfo(version=1).replace(b"urn:ietf:params:xml:ns:reginfo", b"urn:other"),
        reginfo(version=1, event="rejected", contact_state="terminated") + b" " * MAX_REGINFO,
    ],
    ids=["truncated", "dtd", "version", "event", "namespace", "oversize"],
)
def test_a_bad_reginfo_is_400_and_the_ue_keeps_its_state(body):
    ue, sub = subscribed()
    sa = ue.sa
    events = ue.receive_request(notify(sub, body, cseq=2), 3.0)
    assert answer(events) == 400 and len(events) == 1
    assert ue.state is UeState.REGISTERED and ue.sa is sa and ue.subscription is not None
    # the dialog goes on: the next good NOTIFY is taken
    assert answer(ue.receive_request(notify(sub, reginfo(version=1), cseq=3), 4.0)) == 200


def test_other_bad_notifies():
    ue, sub = subscribed()
    n = notify(sub, reginfo(version=1), cseq=2, content_type="text/plain")
    events = ue.receive_request(n, 3.0)
    assert answer(events) == 415 and events[0].response.get("Accept") == "application/reginfo+xml"
    n = notify(sub, cseq=3)
    n.set("Event", "presence")
    assert answer(ue.receive_request(n, 3.0)) == 489
    n = notify(sub, cseq=4)
    n.remove("Subscription-State")
    assert answer(ue.receive_request(n, 3.0)) == 400
    assert ue.state is UeState.REGISTERED and ue.subscription is not None


def test_parse_reginfo_limits():
    with pytest.raises(ReginfoError):
        parse_reginfo(b" " * (MAX_REGINFO + 1))
    info = parse_reginfo(reginfo(version=3, event="shortened", expires=7))
    (reg,) = info.registrations
    assert (info.version, info.state, reg.aor, reg.state) == (3, "full", IMPU, "active")
    assert reg.contacts[0].event == "shortened" and reg.contacts[0].expires == 7


# ------------------------------------------------------------------- lifecycle


def test_own_deregistration_ends_the_subscription_quietly():
    ue, sub = subscribed()
    (dereg,) = ue.deregister(10.0)
    # the final NOTIFY may arrive before the 200 to the de-REGISTER: answered, no alarm
    body = reginfo(
        version=1, reg_state="terminated", contact_state="terminated", event="unregistered"
    )
    events = ue.receive_request(
        notify(sub, body, cseq=2, state="terminated;reason=noresource"), 10.1
    )
    assert answer(events) == 200
    assert not [e for e in events if isinstance(e, NetworkDeregistered)]
    ok = make_response(dereg.request, 200, to_tag="5ef4")
    events = ue.receive(wire(ok), 10.2)
    assert [type(e) for e in events] == [SecurityAssociationsReleased, Deregistered]
    assert ue.subscription is None and ue.next_deadline() is None


def _final_notify(sub: Request, at: float, cseq: int = 2):
    body = reginfo(
        version=1, reg_state="terminated", contact_state="terminated", event="unregistered"
    )
    return notify(sub, body, cseq=cseq, state="terminated;reason=noresource"), at


def test_a_refusal_after_the_final_notify_ends_the_deregistration_without_a_retry():
    """The NOTIFY that ended our contact came, then a 503 with Retry-After (an S-CSCF
    instance the I-CSCF moved the de-REGISTER to after the 200 of the one that did it
    was lost): the de-registration took effect, so the UE goes now instead of sending
    the de-REGISTER again over SAs the P-CSCF has let go (chaos seed 10110: 408)."""
    ue, sub = subscribed()
    sa = ue.sa
    (dereg,) = ue.deregister(10.0)
    assert answer(ue.receive_request(*_final_notify(sub, 10.1))) == 200
    refused = make_response(dereg.request, 503, to_tag="5ef4", headers=[("Retry-After", "5")])
    events = ue.receive(wire(refused), 11.0)
    assert events == [SecurityAssociationsReleased(sa, "de-registered"), Deregistered(503, True)]
    assert ue.state is UeState.DEREGISTERED and ue.next_deadline() is None
    # without that NOTIFY the same 503 is waited out and the de-REGISTER sent again
    ue, sub = subscribed()
    (dereg,) = ue.deregister(10.0)
    events = ue.receive(
        wire(make_response(dereg.request, 503, to_tag="5ef4", headers=[("Retry-After", "5")])), 11.0
    )
    assert ue.state is UeState.WAITING_RETRY and ue.next_deadline() == 16.0


def test_the_final_notify_while_a_deregister_waits_to_go_again_ends_it():
    """A refusal with Retry-After first, then the NOTIFY that ended our contact: nothing
    is left to send; the UE is de-registered at once (status 0: no answer awaited)."""
    ue, sub = subscribed()
    sa = ue.sa
    (dereg,) = ue.deregister(10.0)
    refused = make_response(dereg.request, 503, to_tag="5ef4", headers=[("Retry-After", "5")])
    ue.receive(wire(refused), 11.0)
    assert ue.state is UeState.WAITING_RETRY
    events = ue.receive_request(*_final_notify(sub, 12.0))
    assert answer(events) == 200
    assert SecurityAssociationsReleased(sa, "de-registered") in events
    assert Deregistered(0, True) in events
    assert not [e for e in events if isinstance(e, NetworkDeregistered)]
    assert ue.state is UeState.DEREGISTERED and ue.next_deadline() is None
    assert ue.handle_timer(16.0) == []


def test_a_deregister_waiting_to_go_again_is_no_registration_under_way():
    """`registering` (what `UeClient.wait_subscribed` waits through): a REGISTER refused
    with a Retry-After waits to register, and its 2xx brings a subscription; a
    de-REGISTER refused so does not, so a caller waiting for a subscription is told at
    once that none comes."""
    ue, _sub = subscribed()
    assert not ue.registering
    (dereg,) = ue.deregister(10.0)
    assert not ue.registering
    refused = make_response(dereg.request, 503, to_tag="5ef4", headers=[("Retry-After", "5")])
    ue.receive(wire(refused), 11.0)
    assert ue.state is UeState.WAITING_RETRY and not ue.registering
    ue = make_ue(2)
    (send1,) = ue.register(0.0)
    assert ue.registering
    ue.receive(wire(make_response(send1.request, 503, headers=[("Retry-After", "5")])), 0.5)
    assert ue.state is UeState.WAITING_RETRY and ue.registering


def test_own_deregistration_without_the_final_notify_leaves_no_timer():
    ue, sub = subscribed()
    (dereg,) = ue.deregister(10.0)
    events = ue.receive(wire(make_response(dereg.request, 200, to_tag="5ef4")), 10.2)
    assert Deregistered(200) in events
    assert ue.subscription is None and ue.next_deadline() is None
    # a NOTIFY still on its way finds no dialog: 481, no error event
    assert [type(e) for e in ue.receive_request(notify(sub, cseq=2), 10.3)] == [SendResponse]


def test_a_subscribe_without_answer_ends_the_subscription():
    ue, _sub, _ = registered()
    assert ue.transaction_timeout(34.0, "SUBSCRIBE") == [
        SubscriptionEnded("no answer to the SUBSCRIBE")
    ]
    assert ue.subscription is None and ue.state is UeState.REGISTERED
    # and a REGISTER timeout is still the registration's
    assert ue.transaction_timeout(35.0) == []


def test_a_refused_subscribe_ends_it_and_a_refused_refresh_waits_for_the_expiry():
    ue, sub, _ = registered()
    refused = wire(make_response(sub, 403, "Forbidden"))
    assert ue.receive(refused, 2.5) == [SubscriptionEnded("403 Forbidden")]
    ue, sub, _ = registered(expires=0 + 7200)  # the re-registration due at 6602
    ue.receive(subscribe_ok(sub, expires=1000), 3.0)
    (refresh,) = ue.handle_timer(503.0)
    assert ue.receive(wire(make_response(refresh.request, 500)), 504.0) == []
    assert ue.subscription is not None
    assert ue.next_deadline() == pytest.approx(1003.0)  # no second refresh: the expiry
    assert ue.handle_timer(1003.0) == [SubscriptionEnded("expired")]
    assert ue.next_deadline() == pytest.approx(SENT + 6600)


def test_a_new_subscription_refused_not_registered_registers_anew():
    """The S-CSCF answers the UE's first SUBSCRIBE 480 (it holds no registration of
    the IMPU: the network ended this one before the UE could be told over a
    subscription). The UE registers anew at once (its set released, an initial
    REGISTER in the clear), with or without `recovery_base_time`; before, it stayed
    without a subscription until its refresh ran out (lifecycle chaos --devices 2
    --scscf-moves, seed 11101). At most `max_retries` times in a row; a 480 to a
    refresh of a subscription that stands waits for its expiry, as before."""
    from imsaka.ue.core import RegisteringAnew

    ue, sub, _ = registered()
    sa = ue.sa
    not_registered = make_response(sub, 480, "Temporarily Unavailable (not registered)")
    events = ue.receive(wire(not_registered), 2.5)
    assert [type(e) for e in events] == [
        SubscriptionEnded,
        RegisteringAnew,
        SecurityAssociationsReleased,
        SendRequest,
    ]
    assert events[2].sa is sa and ue.sa is None
    assert not events[-1].protected and events[-1].request.method == "REGISTER"
    assert ue.state is UeState.UNPROTECTED_SENT
    # what a person reads (`imsaka ue register`): not "re-registration failed"
    assert not events[1].unanswered
    assert events[1].what == "the network no longer holds the registration"
    ue, sub, _ = registered(max_retries=0)
    refused = ue.receive(wire(make_response(sub, 480, "Temporarily Unavailable")), 2.5)
    assert refused == [SubscriptionEnded("480 Temporarily Unavailable")]
    assert ue.state is UeState.REGISTERED


def test_a_new_subscription_refused_while_a_refresh_is_under_way_follows_its_200():
    """The same 480 while a refresh of ours is out (the I-CSCF took it to the S-CSCF
    the user moved to): the refresh's answer tells whether the network holds the
    registration, so the UE does not register anew; the refresh's 200 brings the new
    subscription, along the Service-Route it carries. Before the twelfth session
    (2026-11-29) the UE stayed without a subscription after that 200 (chaos seed 11196:
    an RTR then went unheard)."""
    moved = "<sip:orig@scscf2.home1.net:6070;lr>"
    ue, sub, _ = registered()
    (refresh,) = [e for e in ue.register(2.2) if isinstance(e, SendRequest)]
    assert ue.state is UeState.REREGISTERING
    not_registered = make_response(sub, 480, "Temporarily Unavailable (not registered)")
    events = ue.receive(wire(not_registered), 2.5)
    assert events == [SubscriptionEnded("480 Temporarily Unavailable (not registered)")]
    assert ue.state is UeState.REREGISTERING and ue.subscription is None
    headers = [("Contact", f"<{OUR_CONTACT}>;expires=600000"), ("Service-Route", moved)]
    ok = make_response(refresh.request, 200, to_tag="5ef4", headers=headers)
    (send,) = [e for e in ue.receive(wire(ok), 3.0) if isinstance(e, SendRequest)]
    assert send.request.method == "SUBSCRIBE" and send.request.to.tag is None
    assert send.request.get_all("Route") == [PCSCF_RR, moved]


# ------------------------------------------- keeping the subscription (recovery_base_time)


def test_a_subscription_that_could_not_be_made_is_made_again_later():
    """With `recovery_base_time` a SUBSCRIBE that got no answer, or one that may pass
    (480/5xx, 404/481: the notifier lost it), is sent again as a new subscription
    after its Retry-After or the RFC 5626 §4.5 back-off while the UE stays registered;
    403 and 489 are final; without the setting nothing is sent again (as before)."""
    ue, sub, _ = registered(recovery_base_time=30)
    assert ue.transaction_timeout(34.0, "SUBSCRIBE") == [
        SubscriptionEnded("no answer to the SUBSCRIBE")
    ]
    at = ue.next_deadline()
    assert 34.0 + 30.0 <= at <= 34.0 + 60.0  # 30 · 2^1 · rand(½…1)
    assert ue.handle_timer(at - 1.0) == []
    (again,) = ue.handle_timer(at)
    assert isinstance(again, SendRequest) and again.protected
    assert again.request.method == "SUBSCRIBE" and again.request.call_id != sub.call_id
    assert again.request.to.tag is None  # a new dialog
    # the network asks for 120 s: that is the wait
    refused = make_response(again.request, 503, headers=[("Retry-After", "120")])
    assert ue.receive(wire(refused), at + 1) == [SubscriptionEnded("503 Service Unavailable")]
    assert ue.next_deadline() == pytest.approx(at + 1 + 120)
    (third,) = ue.handle_timer(at + 121)
    assert ue.receive(subscribe_ok(third.request), at + 122) == [Subscribed(600000, False)]
    assert ue._sub_failures == 0
    # final answers, and the UE without the setting
    for status, kw in (
        (403, {"recovery_base_time": 30}),
        (489, {"recovery_base_time": 30}),
        (500, {}),
    ):
        ue, sub, _ = registered(**kw)
        ue.receive(wire(make_response(sub, status)), 2.5)
        assert ue.subscription is None and ue.next_deadline() == pytest.approx(SENT + 600000 - 600)


def test_without_the_setting_a_subscribe_refused_with_retry_after_is_made_again_then():
    """No `recovery_base_time`: a SUBSCRIBE refused for now with a Retry-After (a 500
    from the P-CSCF in place of the 503 of an S-CSCF instance cut off from its store)
    is sent again, as a new subscription, after that wait, at most `max_retries` times
    in a row; one beyond `max_retry_after`, or without a Retry-After, is not (before:
    never, and the UE stayed without a subscription; chaos seed 10163)."""
    ue, sub, _ = registered(max_retries=2)
    refused = make_response(sub, 500, "Server Internal Error", headers=[("Retry-After", "5")])
    assert ue.receive(wire(refused), 2.5) == [SubscriptionEnded("500 Server Internal Error")]
    assert ue.next_deadline() == pytest.approx(7.5)
    (again,) = ue.handle_timer(7.5)
    assert again.request.method == "SUBSCRIBE" and again.request.call_id != sub.call_id
    refused = make_response(again.request, 503, headers=[("Retry-After", "5")])
    ue.receive(wire(refused), 8.0)
    (third,) = ue.handle_timer(13.0)
    refused = make_response(third.request, 503, headers=[("Retry-After", "5")])
    ue.receive(wire(refused), 13.5)  # the third refusal in a row: no more
    assert ue.subscription is None and ue.next_deadline() == pytest.approx(SENT + 600000 - 600)
    ue, sub, _ = registered(max_retry_after=60)
    ue.receive(wire(make_response(sub, 503, headers=[("Retry-After", "120")])), 2.5)
    assert ue.next_deadline() == pytest.approx(SENT + 600000 - 600)


def test_a_subscription_the_network_ends_while_the_registration_stays_is_made_again():
    ue, sub = subscribed(recovery_base_time=30)
    state = "terminated;reason=deactivated;retry-after=5"
    events = ue.receive_request(notify(sub, cseq=2, state=state), 10.0)
    assert answer(events) == 200 and SubscriptionEnded("deactivated") in events
    assert ue.state is UeState.REGISTERED and ue.next_deadline() == pytest.approx(15.0)
    (again,) = ue.handle_timer(15.0)
    assert again.request.method == "SUBSCRIBE" and again.request.call_id != sub.call_id
    # "rejected" is final (RFC 6665 §4.2.2), and a registration ended by the NOTIFY is
    # not subscribed again (a new registration subscribes after its own 200)
    ue, sub = subscribed(recovery_base_time=30)
    ue.receive_request(notify(sub, cseq=2, state="terminated;reason=rejected"), 10.0)
    assert ue.next_deadline() == pytest.approx(SENT + 600000 - 600)
    ue, sub = subscribed(recovery_base_time=30)
    body = reginfo(version=1, reg_state="terminated", contact_state="terminated", event="rejected")
    ue.receive_request(notify(sub, body, cseq=2, state="terminated;reason=deactivated"), 10.0)
    assert ue.state is not UeState.REGISTERED and ue.next_deadline() is None


def test_a_deactivated_subscription_is_made_again_at_once_the_first_time():
    """RFC 6665 §4.1.3: after "deactivated" the subscriber retries at once (its use:
    subscriptions moving between nodes), without `recovery_base_time` too; a second
    one before the next registration is left to the back-off (none without it), so a
    notifier that ends each new subscription gets no storm. Before 2026-11-29 such a
    UE stayed without a subscription (lifecycle_chaos --scscf-moves, seed 11002)."""
    ue, sub = subscribed()
    events = ue.receive_request(notify(sub, cseq=2, state="terminated;reason=deactivated"), 5.0)
    assert answer(events) == 200 and SubscriptionEnded("deactivated") in events
    assert ue.next_deadline() == pytest.approx(5.0)
    (again,) = ue.handle_timer(5.0)
    assert again.request.method == "SUBSCRIBE" and again.request.to.tag is None
    assert again.request.call_id != sub.call_id
    assert ue.receive(subscribe_ok(again.request, tag="s2"), 5.1) == [Subscribed(600000, False)]
    state = "terminated;reason=deactivated"
    ue.receive_request(notify(again.request, cseq=1, tag="s2", state=state), 6.0)
    assert ue.subscription is None and ue.next_deadline() == pytest.approx(SENT + 600000 - 600)


def test_deactivated_while_the_registration_that_moved_it_is_under_way():
    """The user moved to another S-CSCF: the old one ends the subscription
    ("deactivated", on the HSS's RTR NEW_SERVER_ASSIGNED) before the 200 OK of the
    REGISTER, with the new S-CSCF's Service-Route, is here. The new subscription goes
    after that 200, along the new route (at once, it would go to the old S-CSCF)."""
    moved = "<sip:orig@scscf2.home1.net:6070;lr>"
    ue, sub = subscribed()
    (rereg,) = ue.handle_timer(2.0 + 599400.0)
    at = 2.0 + 599400.5
    events = ue.receive_request(notify(sub, cseq=2, state="terminated;reason=deactivated"), at)
    assert answer(events) == 200 and not [e for e in events if isinstance(e, SendRequest)]
    assert ue.subscription is None
    headers = [("Contact", f"<{OUR_CONTACT}>;expires=600000"), ("Service-Route", moved)]
    ok = make_response(rereg.request, 200, to_tag="5ef4", headers=headers)
    (send,) = [e for e in ue.receive(wire(ok), at + 1.0) if isinstance(e, SendRequest)]
    assert send.request.method == "SUBSCRIBE" and send.request.to.tag is None
    assert send.request.get_all("Route") == [PCSCF_RR, moved]


def test_another_devices_end_at_the_scscf_we_moved_from_is_not_ours():
    """This UE moved to another S-CSCF; the one before ends the registration it held
    and tells the other device sharing the IMPU (its contact alone listed) to register
    again. §5.1.1.7 acts on the contact belonging to this UE: this UE stays registered
    and subscribes again at once. Before 2026-11-29 (ninth session) it took the other
    device's "deactivated" as its own and registered afresh."""
    ue, sub = subscribed()
    sa = ue.sa
    body = reginfo(
        version=1,
        reg_state="terminated",
        contact_state="terminated",
        event="deactivated",
        contact="sip:tablet@10.0.0.9:5062",
    )
    state = "terminated;reason=deactivated"
    events = ue.receive_request(notify(sub, body, cseq=2, state=state), 5.0)
    assert answer(events) == 200 and SubscriptionEnded("deactivated") in events
    assert not [e for e in events if isinstance(e, (NetworkDeregistered, SendRequest))]
    assert ue.state is UeState.REGISTERED and ue.sa is sa
    (again,) = ue.handle_timer(5.0)
    assert again.request.method == "SUBSCRIBE" and again.request.to.tag is None


def test_a_lapsed_subscription_is_made_again():
    ue, sub, _ = registered(expires=7200, recovery_base_time=30)
    ue.receive(subscribe_ok(sub, expires=1000), 3.0)
    (refresh,) = ue.handle_timer(503.0)
    ue.receive(wire(make_response(refresh.request, 500)), 504.0)  # stands until 1003
    assert ue.handle_timer(1003.0) == [SubscriptionEnded("expired")]
    at = ue.next_deadline()
    assert 1003.0 + 30.0 <= at <= 1003.0 + 60.0
    (again,) = ue.handle_timer(at)
    assert again.request.method == "SUBSCRIBE" and again.request.to.tag is None


def test_a_refresh_answered_481_is_followed_by_a_new_subscription_at_once():
    """The notifier no longer holds the dialog of a refresh (RFC 6665 §4.1.2.2: it
    restarted, or another instance of it got the refresh): with `recovery_base_time`
    a new subscription goes at once, the first time in a row; a second 481 waits the
    back-off (before 2026-11-28 the first did too, 15-30 s without a subscription:
    lifecycle_chaos seed 10006)."""
    ue, sub, _ = registered(recovery_base_time=30, expires=7200)
    ue.receive(subscribe_ok(sub, expires=1000), 3.0)
    (refresh,) = ue.handle_timer(503.0)
    lost = wire(make_response(refresh.request, 481, "Subscription Does Not Exist"))
    assert ue.receive(lost, 504.0) == [SubscriptionEnded("481 Subscription Does Not Exist")]
    assert ue.next_deadline() == pytest.approx(504.0)
    (again,) = ue.handle_timer(504.0)
    assert again.request.to.tag is None and again.request.call_id != sub.call_id
    # the new one answered 481 too (no dialog yet): the back-off
    refused = wire(make_response(again.request, 481, "Subscription Does Not Exist"))
    ue.receive(refused, 505.0)
    assert 505.0 + 60.0 <= ue.next_deadline() <= 505.0 + 120.0  # 30 · 2^2 · rand(½…1)
