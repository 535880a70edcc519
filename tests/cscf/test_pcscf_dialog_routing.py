"""P-CSCF core (sans-I/O): the UE's reg-event subscription through the P-CSCF
(TS 24.229 §5.1.1.3, §5.2.6.3, §5.2.6.4; RFC 3261 §12, §16.4; RFC 6665).

The UE SUBSCRIBEs over its SA set; the P-CSCF drops its own Route entry, adds its
Record-Route on the core side and rewrites it to its protected server port in the 2xx
to the UE. The S-CSCF's NOTIFY comes back along that Record-Route and leaves for the UE
from port-c to the UE's port-s; the UE's answer over the same SA pair goes upstream.
"""

from __future__ import annotations

from imsaka.cscf.pcscf import (
    UE_SUB_ACTIVE,
    UE_SUB_NOTIFIED,
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
    Reply,
)
from imsaka.sip import Request, Response, make_response, parse_message
from tests.e2e.test_pcscf_core import ICSCF, PACKET1, core, packet8

SCSCF = ("127.0.0.1", 5080)
UE_C = ("127.0.0.1", 2468)  # the UE's protected client port (Security-Client port-c)
UE_S = ("127.0.0.1", 1357)  # its protected server port (port-s), its Contact
OWN_RR = "<sip:pcscf1.visited1.net:5060;lr>"
OWN_RR_UE = "<sip:pcscf1.visited1.net:5063;lr>"
SERVICE_ROUTE = "<sip:orig@scscf1.home1.net:5080;lr>"
IMPU = "sip:user1_public1@home1.net"
WWW = (
    'Digest realm="registrar.home1.net", nonce="AAAA", algorithm=AKAv1-MD5, '
    'ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"'
)


def _reparse(msg):
    return parse_message(msg.to_bytes())


def registered(**kw) -> tuple[PcscfCore, InstallSecurityAssociations, list]:
    """A core with the PACKET1 UE registered over its SAs (packets 1, 7, 8, 13); the
    actions of the 200 OK (the P-CSCF's own reg-event SUBSCRIBE among them, answered
    200 by the S-CSCF)."""
    p, inst, acts = register_through(**kw)
    # the S-CSCF takes the P-CSCF's reg-event SUBSCRIBE (else its Timer E runs on)
    for a in acts:
        if isinstance(a, Forward) and a.message.method == "SUBSCRIBE":
            sub_ok = make_response(_reparse(a.message), 200, to_tag="scscf-reg")
            assert p.receive_response(_reparse(sub_ok), SCSCF, 3.05) == []
    return p, inst, acts


def register_through(**kw) -> tuple[PcscfCore, InstallSecurityAssociations, list]:
    """As `registered`, the P-CSCF's own SUBSCRIBE left unanswered."""
    p = core(**kw)
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(("127.0.0.1", 40000)), 0.0)
    c401 = make_response(
        _reparse(fwd.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(c401), ICSCF, 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    r7 = next(a for a in acts if isinstance(a, Reply)).message
    p8 = packet8(r7)
    (fwd9,) = p.receive_request(parse_message(p8.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 2.0)
    ok = make_response(
        _reparse(fwd9.message),
        200,
        to_tag="5ef4",
        headers=[
            ("Service-Route", SERVICE_ROUTE),
            ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
            ("P-Associated-URI", f"<{IMPU}>"),
        ],
    )
    acts = p.receive_response(_reparse(ok), ICSCF, 3.0)
    assert p.stats()["registrations"] == 1
    return p, inst, acts


def ue_subscribe(branch: str = "z9hG4bKsub1", **extra: str) -> Request:
    """The UE's SUBSCRIBE as the UE helper sends it (the wire contract)."""
    headers = {
        "Via": f"SIP/2.0/UDP 127.0.0.1:1357;branch={branch}",
        "Max-Forwards": "70",
        "Route": "<sip:127.0.0.1:5063;lr>",
        "From": f"<{IMPU}>;tag=ue1",
        "To": f"<{IMPU}>",
        "Call-ID": "ue-sub-1",
        "CSeq": "1 SUBSCRIBE",
        "Event": "reg",
        "Expires": "600000",
        "Accept": "application/reginfo+xml",
        "Contact": "<sip:127.0.0.1:1357>",
        "Content-Length": "0",
    }
    headers.update(extra)
    items = list(headers.items())
    # the Service-Route after the P-CSCF's entry (TS 24.229 §5.1.2A.1.1)
    at = next(i for i, (k, _) in enumerate(items) if k == "Route")
    items.insert(at + 1, ("Route", SERVICE_ROUTE))
    return Request("SUBSCRIBE", IMPU, items)


def scscf_notify(
    state: str = "active;expires=600000",
    branch: str = "z9hG4bKnotify1",
    target: str = "sip:127.0.0.1:1357",
    cseq: int = 1,
    body: bytes = b"",
) -> Request:
    """The S-CSCF's NOTIFY to the UE's subscription, as regevent.notify_request builds
    it and the S-CSCF's transaction layer sends it (its Via on top); `body`: its
    reginfo."""
    return Request(
        "NOTIFY",
        target,
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5080;branch={branch}"),
            ("Max-Forwards", "70"),
            ("Route", OWN_RR),
            ("From", f"<{IMPU}>;tag=scscf1"),
            ("To", f"<{IMPU}>;tag=ue1"),
            ("Call-ID", "ue-sub-1"),
            ("CSeq", f"{cseq} NOTIFY"),
            ("Contact", "<sip:127.0.0.1:5080>"),
            ("Event", "reg"),
            ("Subscription-State", state),
            ("Content-Type", "application/reginfo+xml"),
            ("Content-Length", str(len(body))),
        ],
        body,
    )


def relayed_and_answered(p: PcscfCore, inst, notify: Request, at: float) -> list:
    """`notify` from the S-CSCF, relayed to the UE over its SAs and answered 200 by
    it: the core's actions on that answer."""
    (rep,) = p.receive_request(_reparse(notify), Arrival(SCSCF), at)
    assert rep.spi == inst.sa.spi_us
    ok = make_response(_reparse(rep.message), 200)
    return p.receive_response(_reparse(ok), UE_S, at + 0.1, spi=inst.sa.spi_pc)


def subscribe_through(p: PcscfCore, inst) -> None:
    """The UE's SUBSCRIBE up and its 200 back (asserted in the first test)."""
    (fwd,) = p.receive_request(ue_subscribe(), Arrival(UE_C, spi=inst.sa.spi_ps), 4.0)
    ok = make_response(
        _reparse(fwd.message),
        200,
        to_tag="scscf1",
        headers=[("Expires", "600000"), ("Contact", "<sip:127.0.0.1:5080>")],
        copy_record_route=True,
    )
    p.receive_response(_reparse(ok), SCSCF, 4.1)


def de_register_text(p: PcscfCore) -> str:
    """The UE's de-REGISTER (Expires 0) as it sends it over its SAs."""
    reg = p.registrations["user1_private@home1.net"]
    return (
        PACKET1.replace("CSeq: 1", "CSeq: 3")
        .replace("z9hG4bKnashds7", "z9hG4bKdereg")
        .replace(";expires=600000", ";expires=0")
        .replace(
            "\r\nRequire: sec-agree\r\n",
            f"\r\nSecurity-Verify: {reg.security_server[0]}\r\nRequire: sec-agree\r\n",
            1,
        )
    )


def send_de_register(p: PcscfCore, inst, now: float) -> Forward:
    """The UE's de-REGISTER (Expires 0) over its SAs; what the P-CSCF sends upstream."""
    (fwd,) = p.receive_request(
        parse_message(de_register_text(p).encode()), Arrival(UE_C, spi=inst.sa.spi_ps), now
    )
    return fwd


def de_register_ok(fwd: Forward) -> Response:
    ok = make_response(
        _reparse(fwd.message),
        200,
        to_tag="5ef4",
        headers=[("Contact", "<sip:127.0.0.1:1357>;expires=0")],
    )
    return _reparse(ok)


def test_ue_subscribe_is_record_routed_and_its_2xx_names_port_s():
    p, inst, _ = registered()
    (fwd,) = p.receive_request(ue_subscribe(), Arrival(UE_C, spi=inst.sa.spi_ps), 4.0)
    assert isinstance(fwd, Forward) and fwd.destination == SCSCF
    m = _reparse(fwd.message)
    # our Route entry is gone (RFC 3261 §16.4), the Service-Route stays
    assert m.get_all("Route") == [SERVICE_ROUTE]
    assert m.get_all("Record-Route") == [OWN_RR]
    assert m.get("P-Asserted-Identity") == f"<{IMPU}>"
    assert len(m.via) == 2 and m.get("Max-Forwards") == "69"
    assert p.open_transactions() == 1
    ok = make_response(
        m,
        200,
        to_tag="scscf1",
        headers=[("Expires", "600000"), ("Contact", "<sip:127.0.0.1:5080>")],
        copy_record_route=True,
    )
    (rep,) = p.receive_response(_reparse(ok), SCSCF, 4.1)
    assert isinstance(rep, Reply)
    assert rep.spi == inst.sa.spi_uc and rep.destination == UE_C  # back over its SA pair
    r = _reparse(rep.message)
    assert r.get_all("Record-Route") == [OWN_RR_UE]  # our protected server port
    assert len(r.via) == 1 and r.get("Contact") == "<sip:127.0.0.1:5080>"
    assert p.registrations["user1_private@home1.net"].ue_sub == UE_SUB_ACTIVE
    assert p.open_transactions() == 0


def test_a_subscribe_that_is_not_reg_event_or_fails_does_not_mark_the_ue():
    p, inst, _ = registered()
    (fwd,) = p.receive_request(
        ue_subscribe(Event="presence"), Arrival(UE_C, spi=inst.sa.spi_ps), 4.0
    )
    ok = make_response(_reparse(fwd.message), 200, to_tag="x", copy_record_route=True)
    p.receive_response(_reparse(ok), SCSCF, 4.1)
    assert p.registrations["user1_private@home1.net"].ue_sub == 0


def test_notify_from_the_core_goes_to_the_ue_over_its_sa_and_the_answer_upstream():
    p, inst, _ = registered()
    subscribe_through(p, inst)
    notify = scscf_notify()
    (rep,) = p.receive_request(notify, Arrival(SCSCF), 5.0)
    assert isinstance(rep, Reply)
    # from our port-c to the UE's port-s (FACTS §1.3)
    assert rep.spi == inst.sa.spi_us and rep.destination == UE_S
    m = _reparse(rep.message)
    assert m.method == "NOTIFY" and m.uri == "sip:127.0.0.1:1357"
    assert m.get("Route") is None  # ours, popped
    assert m.via[0].host == "127.0.0.1" and m.via[0].port == 5062  # our port-c
    assert len(m.via) == 2 and m.get("Max-Forwards") == "69"
    assert p.pending_to_ue() == 1
    assert p.open_transactions() == 0  # not counted by the overload bound
    # the S-CSCF retransmits before the UE answered: absorbed (RFC 3261 §17.2.2); our
    # own Timer E sends the same request to the UE again at T1, then at 2·T1 after it
    assert p.receive_request(scscf_notify(), Arrival(SCSCF), 5.4) == []
    assert p.counters["retransmission-absorbed"] == 1
    assert p.next_deadline() == 5.5
    (again,) = p.handle_timer(5.5)
    assert again is rep and p.counters["retransmitted"] == 1
    assert p.next_deadline() == 6.5
    # the UE answers over the same SA pair (its port-s -> our port-c)
    ue_ok = make_response(m, 200)
    (up,) = p.receive_response(_reparse(ue_ok), UE_S, 5.6, spi=inst.sa.spi_pc)
    assert isinstance(up, Forward) and up.destination == SCSCF
    u = _reparse(up.message)
    assert u.status == 200 and [v.port for v in u.via] == [5080]
    assert p.pending_to_ue() == 0
    # a later retransmission of the NOTIFY gets the UE's answer from us
    (cached,) = p.receive_request(scscf_notify(), Arrival(SCSCF), 6.0)
    assert cached.spi is None and cached.destination == SCSCF and cached.message.status == 200
    # the UE's own copy of its answer is absorbed
    assert p.receive_response(_reparse(ue_ok), UE_S, 6.1, spi=inst.sa.spi_pc) == []
    # nothing left once Timer J has run out
    p.handle_timer(5.0 + 33.0)
    assert not p.pending and p.pending_to_ue() == 0 and p.open_transactions() == 0


def test_notify_the_ue_never_answers_leaves_nothing_behind():
    p, inst, _ = registered()
    subscribe_through(p, inst)
    p.receive_request(scscf_notify(), Arrival(SCSCF), 5.0)
    assert p.pending_to_ue() == 1
    p.handle_timer(5.0 + 33.0)
    assert p.pending_to_ue() == 0 and not p.pending and p.open_transactions() == 0


def test_a_response_must_come_from_the_ue_the_request_went_to():
    p, inst, _ = registered()
    (rep,) = p.receive_request(scscf_notify(), Arrival(SCSCF), 5.0)
    ok = make_response(_reparse(rep.message), 200)
    # in the clear from the core side, or over an SA that is not this UE's: dropped
    (d,) = p.receive_response(_reparse(ok), ("127.0.0.1", 5999), 5.1)
    assert isinstance(d, DropInput) and d.reason == "response-not-from-the-ue"
    (d,) = p.receive_response(_reparse(ok), UE_S, 5.1, spi=12345)
    assert isinstance(d, DropInput) and d.reason == "response-not-from-the-ue"
    assert p.pending_to_ue() == 1
    # a response over the SA to nothing we sent the UE
    stray = Response(200, "OK", list(_reparse(ok).header_items()))
    stray.set("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKnothing")
    stray.add("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKx")
    (d,) = p.receive_response(stray, UE_S, 5.2, spi=inst.sa.spi_pc)
    assert isinstance(d, DropInput) and d.reason == "response-over-sa-without-request"


def test_notify_to_a_contact_without_sas_is_answered_404_at_once():
    p, _, _ = registered()
    (rep,) = p.receive_request(scscf_notify(target="sip:127.0.0.1:9999"), Arrival(SCSCF), 5.0)
    assert isinstance(rep, Reply) and rep.spi is None and rep.destination == SCSCF
    assert rep.message.status == 404
    assert p.pending_to_ue() == 0 and p.counters["terminating-not-registered"] == 1


def test_in_dialog_refresh_from_the_ue_goes_to_the_remote_target():
    p, inst, _ = registered()
    subscribe_through(p, inst)
    refresh = ue_subscribe(branch="z9hG4bKsub2", To=f"<{IMPU}>;tag=scscf1", CSeq="2 SUBSCRIBE")
    refresh.uri = "sip:127.0.0.1:5080"  # the S-CSCF's Contact
    refresh.remove("Route")
    refresh.add("Route", OWN_RR_UE)  # the route set: our Record-Route as the UE got it
    (fwd,) = p.receive_request(refresh, Arrival(UE_C, spi=inst.sa.spi_ps), 7.0)
    assert isinstance(fwd, Forward) and fwd.destination == SCSCF
    m = _reparse(fwd.message)
    assert m.get("Route") is None and m.get("Record-Route") is None
    assert m.uri == "sip:127.0.0.1:5080"
    # an unsubscribe's 2xx (Expires: 0): the UE is no longer subscribed
    ok = make_response(m, 200, headers=[("Expires", "0")])
    p.receive_response(_reparse(ok), SCSCF, 7.1)
    assert p.registrations["user1_private@home1.net"].ue_sub == 0


def test_own_reg_notify_still_handled_in_the_clear():
    """Point 6: the P-CSCF's own subscription's NOTIFY (its own Call-ID) is answered
    by the P-CSCF and, terminated, removes the SAs of a UE that did not subscribe."""
    p, _, acts = registered()
    notify = _own_terminated_notify(p, acts)
    out = p.receive_request(notify, Arrival(SCSCF), 5.0)
    assert out[0].message.status == 200 and out[0].spi is None
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0


def _own_terminated_notify(
    p: PcscfCore, acts: list, state: str = "terminated;reason=rejected", body: bytes = b""
) -> Request:
    (sub,) = [a for a in acts if isinstance(a, Forward)]
    own = _reparse(sub.message)
    return Request(
        "NOTIFY",
        own.get("Contact").strip("<>"),
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKown2"),
            ("From", f"<{IMPU}>;tag=s"),
            ("To", f"{own.get('From')}"),
            ("Call-ID", own.call_id),
            ("CSeq", "2 NOTIFY"),
            ("Event", "reg"),
            ("Subscription-State", state),
            *([("Content-Type", "application/reginfo+xml")] if body else []),
        ],
        body,
    )


def reginfo(reg_state: str, event: str) -> bytes:
    """The S-CSCF's reginfo (RFC 3680) for IMPU, one contact, as regevent writes it."""
    return (
        '<?xml version="1.0"?>\n'
        '<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="1" state="full">\n'
        f'  <registration aor="{IMPU}" id="r0" state="{reg_state}">\n'
        f'    <contact id="c0" state="{reg_state}" event="{event}">\n'
        "      <uri>sip:127.0.0.1:1357</uri>\n"
        "    </contact>\n"
        "  </registration>\n"
        "</reginfo>\n"
    ).encode()


def test_network_deregistration_keeps_the_sas_until_the_ue_has_its_notify():
    """TS 24.229 §5.1.1.7: the UE learns of a network de-registration from its own
    terminated NOTIFY, which can only reach it over its SAs: the P-CSCF's own
    terminated NOTIFY (sent with it) does not remove them before it went through."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    out = p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    assert out[0].message.status == 200
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    reg = p.registrations["user1_private@home1.net"]
    assert reg.release_at > 5.0
    (rep,) = p.receive_request(
        scscf_notify("terminated;reason=rejected", branch="z9hG4bKnotify2", cseq=2),
        Arrival(SCSCF),
        5.01,
    )
    assert rep.spi == inst.sa.spi_us
    ok = make_response(_reparse(rep.message), 200)
    out = p.receive_response(_reparse(ok), UE_S, 5.02, spi=inst.sa.spi_pc)
    assert isinstance(out[0], Forward) and out[0].destination == SCSCF
    released = [a for a in out if isinstance(a, ReleaseSecurityAssociations)]
    assert released and released[0].sa.spi_ps == inst.sa.spi_ps
    assert p.stats()["registrations"] == 0 and p.counters["network-deregistered"] == 1
    assert not p._by_contact


def test_a_ue_subscribed_whose_2xx_was_lost_still_gets_its_terminated_notify():
    """The S-CSCF's 2xx to the UE's reg-event SUBSCRIBE is lost on its way to the
    P-CSCF; its first NOTIFY reaches the UE, which takes it (RFC 6665 §4.1.2.4: it makes
    the dialog) and answers. The P-CSCF counts the UE subscribed from that answer, so
    the network's end waits for the UE's own terminated NOTIFY before the SAs go.
    Before, it released them at once and the UE never heard of the end (lifecycle
    chaos seed 10432)."""
    p, inst, acts = registered()
    p.receive_request(ue_subscribe(), Arrival(UE_C, spi=inst.sa.spi_ps), 4.0)  # 2xx lost
    (rep,) = p.receive_request(scscf_notify(), Arrival(SCSCF), 4.2)
    ok = make_response(_reparse(rep.message), 200)
    p.receive_response(_reparse(ok), UE_S, 4.3, spi=inst.sa.spi_pc)
    assert p.counters["ue-subscription-seen-in-notify"] == 1
    out = p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.registrations["user1_private@home1.net"].release_at > 5.0
    (rep,) = p.receive_request(
        scscf_notify("terminated;reason=rejected", branch="z9hG4bKnotify2", cseq=2),
        Arrival(SCSCF),
        5.01,
    )
    assert rep.spi == inst.sa.spi_us  # over its SAs, still there


def test_network_deregistration_ue_notify_first_then_own():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    (rep,) = p.receive_request(
        scscf_notify("terminated;reason=rejected", branch="z9hG4bKnotify2", cseq=2),
        Arrival(SCSCF),
        5.0,
    )
    ok = make_response(_reparse(rep.message), 200)
    out = p.receive_response(_reparse(ok), UE_S, 5.01, spi=inst.sa.spi_pc)
    assert not any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.registrations["user1_private@home1.net"].ue_sub == UE_SUB_NOTIFIED
    out = p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.02)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0


def test_network_deregistration_without_the_ue_answering_releases_at_timer_f():
    p, inst, acts = registered()
    subscribe_through(p, inst)
    p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 5.0)
    p.receive_request(
        scscf_notify("terminated;reason=rejected", branch="z9hG4bKnotify2", cseq=2),
        Arrival(SCSCF),
        5.01,
    )
    assert p.next_deadline() is not None
    assert p.handle_timer(30.0) == [] or p.stats()["registrations"] == 1
    out = p.handle_timer(5.0 + 32.5)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0 and not p.pending and p.pending_to_ue() == 0


def test_after_de_register_the_terminated_notify_is_answered_404():
    """De-REGISTER: the 200 goes out over the SAs, then they no longer route (held
    only for the de-REGISTER's retransmissions); the S-CSCF's NOTIFY to the UE that
    follows finds no SA and is answered 404 at once (the UE knows from the 200 OK
    itself)."""
    p, inst, _ = registered()
    subscribe_through(p, inst)
    fwd = send_de_register(p, inst, 8.0)
    out = p.receive_response(de_register_ok(fwd), ICSCF, 8.1)
    assert [a.sa.spi_ps for a in out if isinstance(a, HoldSecurityAssociations)] == [inst.sa.spi_ps]
    (rep,) = p.receive_request(
        scscf_notify("terminated;reason=deactivated", branch="z9hG4bKnotify3", cseq=2),
        Arrival(SCSCF),
        8.2,
    )
    assert rep.message.status == 404 and rep.spi is None and rep.destination == SCSCF
    assert p.pending_to_ue() == 0 and not p._by_contact


def _notify_overtaking_the_de_register_200(p: PcscfCore, inst):
    """The UE de-registers; the S-CSCF's terminated NOTIFY goes straight to the P-CSCF
    and on to the UE over its SAs while the 200 OK to the de-REGISTER takes the way back
    through the I-CSCF. Returns (the NOTIFY as sent to the UE, the 200's actions)."""
    fwd = send_de_register(p, inst, 8.0)
    (rep,) = p.receive_request(
        scscf_notify("terminated;reason=deactivated", branch="z9hG4bKnotify3", cseq=2),
        Arrival(SCSCF),
        8.1,
    )
    assert rep.spi == inst.sa.spi_us and p.pending_to_ue() == 1
    return rep, p.receive_response(de_register_ok(fwd), ICSCF, 8.2)


def _answered_upstream(p: PcscfCore, up: Forward, status: int) -> None:
    """`up` answers the NOTIFY to the S-CSCF with `status`, and so does the P-CSCF to
    the S-CSCF's retransmission of it."""
    answer = _reparse(up.message)
    assert up.destination == SCSCF and answer.status == status
    assert answer.cseq.method == "NOTIFY" and [v.port for v in answer.via] == [5080]
    assert p.pending_to_ue() == 0
    (again,) = p.receive_request(
        scscf_notify("terminated;reason=deactivated", branch="z9hG4bKnotify3", cseq=2),
        Arrival(SCSCF),
        8.3,
    )
    assert again.message.status == status


def test_notify_overtaking_the_de_register_200_gets_the_ues_own_answer():
    """Over UDP the set the 200 left over is held for the de-REGISTER's retransmissions:
    the UE's answer to the NOTIFY still comes back over it and goes upstream (no 404
    made up for it); the S-CSCF's retransmission then gets that answer again."""
    p, inst, _ = registered()
    subscribe_through(p, inst)
    rep, out = _notify_overtaking_the_de_register_200(p, inst)
    assert any(isinstance(a, HoldSecurityAssociations) for a in out)
    assert not [a for a in out if isinstance(a, Forward)] and p.pending_to_ue() == 1
    late = make_response(_reparse(rep.message), 200)
    (up,) = p.receive_response(_reparse(late), UE_S, 8.25, spi=inst.sa.spi_pc)
    _answered_upstream(p, up, 200)
    # a copy of the UE's answer is absorbed (the transaction has its answer)
    assert p.receive_response(_reparse(late), UE_S, 8.4, spi=inst.sa.spi_pc) == []


def test_notify_overtaking_the_de_register_200_is_answered_when_the_sas_go():
    """Over TCP, or without the hold, the SAs go with the 200: the UE's answer can no
    longer come back, so the P-CSCF answers 404 upstream at once."""
    p, inst, _ = registered(dereg_grace=0.0)
    subscribe_through(p, inst)
    _, out = _notify_overtaking_the_de_register_200(p, inst)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    (up,) = [a for a in out if isinstance(a, Forward)]
    _answered_upstream(p, up, 404)


def test_a_lapsed_registration_releases_at_once_even_with_the_ue_subscribed():
    """Expiry (Subscription-State reason=timeout): the UE stopped refreshing and knows
    its own expiry; the SAs go with the P-CSCF's own NOTIFY."""
    p, inst, acts = registered()
    subscribe_through(p, inst)
    expired = reginfo("terminated", "expired")
    out = p.receive_request(
        _own_terminated_notify(p, acts, "terminated;reason=timeout", expired), Arrival(SCSCF), 5.0
    )
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in out)
    assert p.stats()["registrations"] == 0


def test_a_protected_ues_clear_request_is_still_dropped_not_answered():
    """A UE with SAs sending in the clear, its preloaded route naming our port-s: not
    taken for a request from the core (which names us by name at the core port)."""
    p, _, _ = registered()
    req = ue_subscribe(branch="z9hG4bKclear")
    req.uri = "sip:127.0.0.1:9999"
    (d,) = p.receive_request(req, Arrival(("127.0.0.1", 40000)), 5.0)
    assert isinstance(d, DropInput) and d.reason == "clear-request-from-protected-ue"


def test_initial_request_along_the_path_is_record_routed_both_ways():
    """An INVITE from the core along the Path (`<sip:term@…;lr>`, RFC 3327): to the UE
    with our Record-Route naming port-s, its 2xx upstream naming our core port."""
    p, inst, _ = registered()
    invite = Request(
        "INVITE",
        "sip:127.0.0.1:1357",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKinv1"),
            ("Max-Forwards", "70"),
            ("Route", "<sip:term@pcscf1.visited1.net:5060;lr>"),
            ("Record-Route", "<sip:mt@scscf1.home1.net:5080;lr>"),
            ("From", "<sip:user2@home1.net>;tag=a"),
            ("To", f"<{IMPU}>"),
            ("Call-ID", "inv-1"),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:127.0.0.1:7000>"),
            ("Content-Length", "0"),
        ],
    )
    (rep,) = p.receive_request(invite, Arrival(SCSCF), 5.0)
    assert rep.spi == inst.sa.spi_us and rep.destination == UE_S
    m = _reparse(rep.message)
    assert m.get("Route") is None
    assert m.get_all("Record-Route") == [OWN_RR_UE, "<sip:mt@scscf1.home1.net:5080;lr>"]
    ok = make_response(m, 200, to_tag="ue", copy_record_route=True)
    (up,) = p.receive_response(_reparse(ok), UE_S, 5.1, spi=inst.sa.spi_pc)
    u = _reparse(up.message)
    assert up.destination == SCSCF
    assert u.get_all("Record-Route") == [OWN_RR, "<sip:mt@scscf1.home1.net:5080;lr>"]
    assert p.pending_to_ue() == 0


def test_retransmitted_own_terminated_notify_is_answered_481():
    """The S-CSCF retransmits its terminating NOTIFY when our 200 was late; by then
    the subscription is gone: 481 ends its transaction (it used to be dropped as a
    request in the clear, or refused 403, and retransmitted until Timer F)."""
    p, _, acts = registered()
    notify = _own_terminated_notify(p, acts)
    out = p.receive_request(notify, Arrival(SCSCF), 5.0)
    assert out[0].message.status == 200 and p.stats()["registrations"] == 0
    contexts = len(p.pending)
    (again,) = p.receive_request(_reparse(notify), Arrival(SCSCF), 5.5)
    assert again.message.status == 481 and again.destination == SCSCF and again.spi is None
    assert p.counters["notify-unknown-subscription"] == 1
    assert len(p.pending) == contexts  # nothing forwarded, nothing kept
    assert "clear-request-from-protected-ue" not in p.stats().get("drops", {})


def test_requests_to_a_ue_are_taken_only_from_the_core():
    """A request for a served contact is relayed over the UE's SAs only when it comes
    from a node the P-CSCF routes to (its configured routes, the Service-Route of the
    200 OK): from anywhere else it would reach the UE as the network's own word."""
    p, inst, _ = registered()
    subscribe_through(p, inst)
    # another host: treated as a UE's own request in the clear, refused, not relayed
    (rep,) = p.receive_request(scscf_notify(), Arrival(("192.0.2.7", 5080)), 5.0)
    assert rep.message.status == 403 and rep.spi is None and rep.destination[0] == "192.0.2.7"
    # the S-CSCF's host but not its port over UDP (a UE on the same loopback): not relayed
    out = p.receive_request(scscf_notify(branch="z9hG4bKother"), Arrival(UE_C), 5.1)
    assert not any(isinstance(a, Reply) and a.spi is not None for a in out)
    assert p.pending_to_ue() == 0 and p.counters["terminating-forwarded"] == 0
    # over TCP the S-CSCF connects from any port of its host: relayed
    (rep,) = p.receive_request(
        scscf_notify(branch="z9hG4bKtcp"), Arrival(("127.0.0.1", 45678), "tcp"), 5.2
    )
    assert rep.spi == inst.sa.spi_us and rep.destination == UE_S
    # and from the S-CSCF's address (the Service-Route's) over UDP
    (rep,) = p.receive_request(scscf_notify(branch="z9hG4bKudp"), Arrival(SCSCF), 5.3)
    assert rep.spi == inst.sa.spi_us and p.counters["terminating-forwarded"] == 2
