"""P-CSCF core (sans-I/O): a network-initiated de-registration or expiry (a terminated
reg-event NOTIFY, RFC 3680) while a re-REGISTER of the UE is open. The answer to that
re-REGISTER is the last message due over the SA set it came on (TS 33.203 §7.4,
TS 24.229 §5.2.2): it goes out over that SA, and the set goes after it; over UDP it is
held for the re-REGISTER's retransmissions until Timer J, as a de-REGISTER's set is
(`DEREGISTER_GRACE`); over TCP it goes with the answer. Whichever NOTIFY ends the
registration (the P-CSCF's own, the UE's own answered, or its wait running out), it
does not take the set from under an open REGISTER."""

from __future__ import annotations

from imsaka.cscf.pcscf import (
    DEREGISTER_GRACE,
    TRANSACTION_LIFETIME,
    Arrival,
    Forward,
    HoldSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
    Reply,
    UpgradeSecurityAssociations,
)
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    ICSCF,
    IMPU,
    SCSCF,
    SERVICE_ROUTE,
    UE_C,
    UE_S,
    _own_terminated_notify,
    de_register_ok,
    de_register_text,
    registered,
    relayed_and_answered,
    scscf_notify,
    send_de_register,
    subscribe_through,
)

IMPI = "user1_private@home1.net"
REASON = "registration terminated (reg event)"


def _reparse(msg):
    return parse_message(msg.to_bytes())


def _re_register_text(p: PcscfCore) -> str:
    return (
        de_register_text(p)
        .replace(";expires=0", ";expires=600000")
        .replace("z9hG4bKdereg", "z9hG4bKrereg")
    )


def _open_re_register(p: PcscfCore, inst, at: float, transport: str = "udp"):
    text = _re_register_text(p)
    (fwd,) = p.receive_request(
        parse_message(text.encode()), Arrival(UE_C, transport, spi=inst.sa.spi_ps), at
    )
    assert isinstance(fwd, Forward)
    return text, fwd


def _ok(fwd: Forward):
    ok = make_response(
        _reparse(fwd.message),
        200,
        to_tag="5ef4",
        headers=[
            ("Service-Route", SERVICE_ROUTE),
            ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
        ],
    )
    return _reparse(ok)


def _sets(out) -> list:
    return [
        (type(a).__name__, a.sa.spi_ps)
        for a in out
        if isinstance(a, ReleaseSecurityAssociations | HoldSecurityAssociations)
    ]


def test_own_notify_during_a_re_register_its_200_goes_over_the_sa_then_the_set_is_held():
    p, inst, acts = registered()
    text, fwd = _open_re_register(p, inst, 8.0)
    out = p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 8.05)
    assert [type(a) for a in out] == [Reply] and out[0].spi is None  # our 200 to it
    out = p.receive_response(_ok(fwd), ICSCF, 8.1)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.message.status == 200
    assert reply.spi == inst.sa.spi_uc and reply.destination == UE_C
    # after it, the set is held (not released, not refreshed, no new SUBSCRIBE for a
    # registration that has ended)
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps)]
    assert out.index(reply) < next(
        i for i, a in enumerate(out) if isinstance(a, HoldSecurityAssociations)
    )
    assert not any(isinstance(a, UpgradeSecurityAssociations | Forward) for a in out)
    assert p.stats()["registrations"] == 0 and p.in_grace() == 1
    assert not set(inst.sa.inbound_spis) & set(p.by_spi) and not p._by_contact
    # the 200 was lost: the retransmitted re-REGISTER gets it again over the same SA
    (again,) = p.receive_request(
        parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 8.6
    )
    assert isinstance(again, Reply) and again.spi == inst.sa.spi_uc
    assert again.message.to_bytes() == reply.message.to_bytes()
    # Timer J: one release, with the reason of the network's de-registration
    out = p.handle_timer(8.1 + DEREGISTER_GRACE)
    assert [(a.sa.spi_ps, a.reason) for a in out] == [(inst.sa.spi_ps, REASON)]
    assert p.in_grace() == 0


def test_over_tcp_the_set_goes_right_after_the_200():
    p, inst, acts = registered()
    _, fwd = _open_re_register(p, inst, 8.0, "tcp")
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 8.05)
    out = p.receive_response(_ok(fwd), ICSCF, 8.1)
    assert [type(a) for a in out] == [Reply, ReleaseSecurityAssociations]
    assert out[0].spi == inst.sa.spi_uc and out[1].reason == REASON
    assert p.in_grace() == 0 and p.stats()["registrations"] == 0


def test_the_ues_own_notify_answered_during_a_re_register_does_not_take_the_set():
    """The UE subscribed (TS 24.229 §5.1.1.3): the SAs wait for its terminated NOTIFY.
    Its answer comes while its re-REGISTER is open: the set stays until the 200 went
    out over it (before, it went with the NOTIFY's answer and the 200 left in the
    clear, making a registration without SAs of the UE's protected port)."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    assert p.registrations[IMPI].release_at
    text, fwd = _open_re_register(p, inst, 5.2)
    (notify,) = p.receive_request(
        scscf_notify("terminated;reason=rejected", branch="z9hG4bKnotify2", cseq=2),
        Arrival(SCSCF),
        5.3,
    )
    assert notify.spi == inst.sa.spi_us
    ue_ok = make_response(_reparse(notify.message), 200)
    out = p.receive_response(_reparse(ue_ok), UE_S, 5.4, spi=inst.sa.spi_pc)
    assert [type(a) for a in out] == [Forward] and out[0].destination == SCSCF
    assert set(inst.sa.inbound_spis) <= set(p.by_spi)
    out = p.receive_response(_ok(fwd), ICSCF, 5.5)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.spi == inst.sa.spi_uc and reply.message.status == 200
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps)]
    assert p.stats()["registrations"] == 0 and not p._by_contact
    assert p.counters["network-deregistered"] == 0  # not counted twice below
    (again,) = p.receive_request(
        parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 6.0
    )
    assert again.spi == inst.sa.spi_uc and again.message.status == 200


def test_the_wait_for_the_ues_notify_running_out_during_a_re_register_waits_for_it():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    release_at = p.registrations[IMPI].release_at
    _, fwd = _open_re_register(p, inst, release_at - 1.0)
    out = p.handle_timer(release_at)
    assert _sets(out) == [] and set(inst.sa.inbound_spis) <= set(p.by_spi)
    out = p.receive_response(_ok(fwd), ICSCF, release_at + 0.5)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.spi == inst.sa.spi_uc
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps)]
    assert p.stats()["registrations"] == 0


def test_a_re_register_never_answered_releases_the_set_at_its_timer_f():
    p, inst, acts = registered()
    _open_re_register(p, inst, 8.0)
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 8.05)
    assert p.stats()["registrations"] == 1
    out = p.handle_timer(8.0 + TRANSACTION_LIFETIME)
    assert [(a.sa.spi_ps, a.reason) for a in out if isinstance(a, ReleaseSecurityAssociations)] == [
        (inst.sa.spi_ps, REASON)
    ]
    assert p.stats()["registrations"] == 0 and p.in_grace() == 0


def test_the_ues_own_notify_after_the_re_registers_200_goes_over_the_held_set():
    """The order at the P-CSCF: its own terminated NOTIFY (the re-REGISTER open), the
    re-REGISTER's 200 (the set held after it), then the UE's own terminated NOTIFY, its
    first copy lost or overtaken. The UE got a 200 and believes itself registered; this
    NOTIFY is how it learns otherwise (TS 24.229 §5.1.1.7): it goes over the held set
    (it was answered 404 for a UE no longer registered)."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    _, fwd = _open_re_register(p, inst, 8.0)
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 8.05)
    out = p.receive_response(_ok(fwd), ICSCF, 8.1)
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps)]
    assert p.stats()["registrations"] == 0
    (notify,) = p.receive_request(
        scscf_notify("terminated;reason=deactivated", branch="z9hG4bKnotify3", cseq=2),
        Arrival(SCSCF),
        8.6,
    )
    assert isinstance(notify, Reply) and notify.message.method == "NOTIFY"
    assert notify.spi == inst.sa.spi_us and notify.destination == UE_S
    assert p.counters["terminating-end-over-held-set"] == 1
    # the UE's answer comes back over the held set and goes to the S-CSCF
    ue_ok = make_response(_reparse(notify.message), 200)
    out = p.receive_response(_reparse(ue_ok), UE_S, 8.7, spi=inst.sa.spi_pc)
    assert [type(a) for a in out] == [Forward] and out[0].destination == SCSCF
    assert p.pending_to_ue() == 0
    # an active NOTIFY (or anything else) is not taken over a held set
    (refused,) = p.receive_request(
        scscf_notify("active;expires=60", branch="z9hG4bKnotify4", cseq=3), Arrival(SCSCF), 8.8
    )
    assert isinstance(refused, Reply) and refused.message.status == 404
    # the set goes once at its Timer J; then the NOTIFY finds nothing
    out = p.handle_timer(8.1 + DEREGISTER_GRACE)
    assert [(a.sa.spi_ps, a.reason) for a in out] == [(inst.sa.spi_ps, REASON)]
    (late,) = p.receive_request(
        scscf_notify("terminated;reason=deactivated", branch="z9hG4bKnotify5", cseq=4),
        Arrival(SCSCF),
        8.2 + DEREGISTER_GRACE,
    )
    assert late.message.status == 404 and not p._grace_by_contact


def test_a_user_de_registers_set_does_not_carry_the_late_notify():
    """After the UE's own de-REGISTER the UE drops its SAs with the 200: a terminated
    NOTIFY that comes after it is answered 404 at once, not sent into a set the UE no
    longer has (its transaction would wait for Timer F)."""
    p, inst, _ = registered()
    subscribe_through(p, inst)
    fwd = send_de_register(p, inst, 8.0)
    p.receive_response(_reparse(de_register_ok(fwd)), ICSCF, 8.1)
    assert p.in_grace() == 1
    (late,) = p.receive_request(
        scscf_notify("terminated;reason=unregistered", branch="z9hG4bKnotify3", cseq=2),
        Arrival(SCSCF),
        8.6,
    )
    assert isinstance(late, Reply) and late.message.status == 404


def _fresh_start(p: PcscfCore, at: float):
    """The UE, told of the end, registers afresh: its initial REGISTER in the clear
    challenged (a new temporary set); returns that set's install and the challenge
    response over it, forwarded (open)."""
    from imsaka.cscf.pcscf import InstallSecurityAssociations
    from tests.cscf.test_pcscf_dialog_routing import WWW
    from tests.e2e.test_pcscf_core import PACKET1, packet8

    (fwd1,) = p.receive_request(
        parse_message(PACKET1.replace("z9hG4bKnashds7", "z9hG4bKfresh1").encode()),
        Arrival(("127.0.0.1", 40000)),
        at,
    )
    c401 = make_response(
        _reparse(fwd1.message), 401, to_tag="5ef5", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(c401), ICSCF, at + 0.01)
    fresh = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    r7 = next(a for a in acts if isinstance(a, Reply)).message
    text = packet8(r7).replace("z9hG4bKsecond", "z9hG4bKfresh2")
    (fwd2,) = p.receive_request(
        parse_message(text.encode()), Arrival(UE_C, spi=fresh.spi_ps), at + 0.02
    )
    return fresh, fwd2


def _challenged(fwd: Forward):
    from tests.cscf.test_pcscf_dialog_routing import WWW

    c401 = make_response(
        _reparse(fwd.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    return _reparse(c401)


def test_the_old_re_registers_answer_after_the_ue_started_afresh_spares_the_new_one():
    """The network ended the registration (the P-CSCF's own terminated NOTIFY) while a
    re-REGISTER was open over its set; the UE, told too, registered afresh at once
    (initial REGISTER, challenge, response over a new temporary set). The old
    re-REGISTER's answer comes late: a 401 (the S-CSCF, holding nothing of it any
    more, challenges it) before or after the new registration's 200. It goes to the UE
    over the old set, and the new registration keeps its set and stays. Before, the
    old one's 401 took the new temporary set as "an unanswered earlier challenge" or
    its answer ended the record with every set on it, the new one's too (lifecycle
    chaos seed 10432, two devices, `reauthenticate = "always"`: the new registration's
    REGISTERs then met "request over a de-registered SA" until the UE gave up)."""
    for order in ("old-401-first", "new-200-first"):
        p, inst, acts = registered()
        _, old_fwd = _open_re_register(p, inst, 8.0)
        p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 8.05)
        fresh, new_fwd = _fresh_start(p, 8.2)
        answers = [(old_fwd, _challenged(old_fwd)), (new_fwd, _ok(new_fwd))]
        if order == "new-200-first":
            answers.reverse()
        for fwd, answer in answers:
            out = p.receive_response(answer, ICSCF, 8.5)
            released = [a.sa.spi_ps for a in out if isinstance(a, ReleaseSecurityAssociations)]
            assert fresh.spi_ps not in released, (order, out)
            (reply,) = [a for a in out if isinstance(a, Reply)]
            if fwd is old_fwd:  # over the old set, as it came
                assert reply.spi == inst.sa.spi_uc and reply.message.status == 401, order
            else:
                assert reply.spi == fresh.spi_uc and reply.message.status == 200, order
        reg = p.registrations[IMPI]
        assert reg.sa is not None and reg.sa.spi_ps == fresh.spi_ps, order
        assert reg.temporary is None and fresh.spi_ps in p.by_spi, order
        assert p.stats()["registrations"] == 1, order


def test_a_late_challenge_of_a_register_of_an_ended_registration_makes_no_record():
    """A re-REGISTER over the UE's SAs is still open when the UE de-registers (it had
    been told to register again, and did, then left); the registration and its SAs go
    with the de-REGISTER's 200. The re-REGISTER's challenge, arriving after, goes to
    the UE as it came; no record or temporary SA set is made for it, which would stay
    until its lifetime ran out. Before 2026-11-29 (ninth session) one was
    (lifecycle_chaos --devices 2 --scscf-moves, seed 11103)."""
    from imsaka.cscf.pcscf import InstallSecurityAssociations
    from tests.cscf.test_pcscf_dialog_routing import WWW

    p, inst, _ = registered()
    late = de_register_text(p).replace(";expires=0", ";expires=600000")
    late = late.replace("z9hG4bKdereg", "z9hG4bKlate")
    (fwd,) = p.receive_request(parse_message(late.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 5.0)
    dereg = send_de_register(p, inst, 5.1)
    p.receive_response(de_register_ok(dereg), ICSCF, 5.2)
    assert p.stats()["registrations"] == 0
    c401 = make_response(
        parse_message(fwd.message.to_bytes()),
        401,
        to_tag="5ef4",
        headers=[("WWW-Authenticate", WWW)],
    )
    out = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 7.5)
    assert not any(isinstance(a, InstallSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0 and not p.registrations
    assert p.counters["challenge-of-an-ended-registration"] == 1


def test_the_answered_end_of_an_earlier_subscription_leaves_this_registration():
    """The UE registered afresh at the same contact and subscribed anew (another
    dialog). The S-CSCF sends the final NOTIFY of the registration before again (the
    UE's answer to it was lost); the P-CSCF relays it over the new registration's set
    and the UE's transaction answers it 200 again. That NOTIFY is of another dialog
    than this registration's UE subscription: it ends nothing here. Before 2026-11-29
    (ninth session) its answer ended the new registration (lifecycle_chaos
    --scscf-moves, seed 11002: the UE's next REGISTER over its set was dropped)."""
    from tests.cscf.test_pcscf_dialog_routing import reginfo

    p, inst, _ = registered()
    subscribe_through(p, inst)  # the UE's subscription: Call-ID ue-sub-1
    ended = reginfo("terminated", "rejected")
    old = scscf_notify("terminated;reason=rejected", branch="z9hG4bKold", cseq=2, body=ended)
    old.set("Call-ID", "ue-sub-0")  # the registration before's subscription
    out = relayed_and_answered(p, inst, old, 5.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 1 and not p.registrations[IMPI].release_at
    assert p.counters["end-of-an-earlier-subscription-answered"] == 1
    # the registration's own subscription's end still ends it
    own = scscf_notify("terminated;reason=rejected", branch="z9hG4bKown", cseq=3, body=ended)
    out = relayed_and_answered(p, inst, own, 6.0)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)


def _two_devices_reginfo(ue_state: str) -> bytes:
    """The S-CSCF's reginfo after the network ended this UE's registration while
    another device (IMPI) keeps the IMPU registered: the registration active, this
    UE's contact `ue_state`, the other's active."""
    return (
        '<?xml version="1.0"?>\n'
        '<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="2" state="full">\n'
        f'  <registration aor="{IMPU}" id="r0" state="active">\n'
        f'    <contact id="c0" state="{ue_state}" event="rejected">\n'
        "      <uri>sip:127.0.0.1:1357</uri>\n"
        "    </contact>\n"
        '    <contact id="c1" state="active" event="registered">\n'
        "      <uri>sip:127.0.0.1:2468</uri>\n"
        "    </contact>\n"
        "  </registration>\n"
        "</reginfo>\n"
    ).encode()


def test_the_ues_own_notify_listing_its_contact_ended_goes_over_the_held_set():
    """As above, but another device keeps the IMPU registered: the UE's own NOTIFY
    keeps its subscription active and lists this UE's contact terminated (RTR of this
    IMPI only). It is the end of this UE's registration all the same, and goes over
    the held set (before: 404, and the UE never heard of its end; lifecycle chaos
    `--devices 2 --scscf-moves`, seed 11106). One listing only the other device's
    contact ended is not taken."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    _, fwd = _open_re_register(p, inst, 8.0)
    p.receive_request(
        _own_terminated_notify(p, acts, "active;expires=600", _two_devices_reginfo("terminated")),
        Arrival(SCSCF),
        8.05,
    )
    out = p.receive_response(_ok(fwd), ICSCF, 8.1)
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps)]
    assert p.stats()["registrations"] == 0
    other_ended = _two_devices_reginfo("active").replace(
        b'state="active" event="registered"', b'state="terminated" event="rejected"'
    )
    (refused,) = p.receive_request(
        scscf_notify("active;expires=60", branch="z9hG4bKnotify2", cseq=2, body=other_ended),
        Arrival(SCSCF),
        8.5,
    )
    assert isinstance(refused, Reply) and refused.message.status == 404
    (notify,) = p.receive_request(
        scscf_notify(
            "active;expires=60",
            branch="z9hG4bKnotify3",
            cseq=3,
            body=_two_devices_reginfo("terminated"),
        ),
        Arrival(SCSCF),
        8.6,
    )
    assert isinstance(notify, Reply) and notify.message.method == "NOTIFY"
    assert notify.spi == inst.sa.spi_us and notify.destination == UE_S
    assert p.counters["terminating-end-over-held-set"] == 1
