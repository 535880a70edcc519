"""P-CSCF core (sans-I/O): a REGISTER over the temporary set after its challenge
response (TS 33.203 §7.2, §7.4; RFC 3261 §10.2).

A P-CSCF that crashed after relaying the 200 to a challenge response, but before its
state store wrote the change, comes back holding the registration as challenged. The
UE took the 200 and the set as established: its next REGISTER (a refresh, with new
Security-Client offers for the next set; or its de-REGISTER) comes over that set. It
is not a second try at the challenge response, whose Security-Client must repeat the
challenged REGISTER's (else a bid-down: 494): a UE sends no new REGISTER before the
final answer to the last one, so a CSeq above the challenge response that passed the
check shows the 200 went out; so does any other request over that set (the UE's
reg-event SUBSCRIBE follows its 200 at once). The state here is the restored one: the
challenge response forwarded, its 200 never relayed by this core."""

from __future__ import annotations

from dataclasses import replace

from imsaka.cscf.pcscf import (
    Arrival,
    Forward,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    PcscfCore,
    RegState,
    Reply,
    UpgradeSecurityAssociations,
)
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import (
    ICSCF,
    IMPU,
    SERVICE_ROUTE,
    UE_C,
    WWW,
    ue_subscribe,
)
from tests.e2e.test_pcscf_core import PACKET1, core, packet8

IMPI = "user1_private@home1.net"
NEW_OFFER = (
    "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=33333333; spi-s=44444444; port-c=2470; port-s=1357"
)


def _reparse(msg):
    return parse_message(msg.to_bytes())


def _challenged(p: PcscfCore) -> tuple[InstallSecurityAssociations, str]:
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(("127.0.0.1", 40000)), 0.0)
    c401 = make_response(
        _reparse(fwd.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(c401), ICSCF, 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    return inst, packet8(next(a for a in acts if isinstance(a, Reply)).message)


def _over(p: PcscfCore, inst, text: str, at: float) -> list:
    return p.receive_request(parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), at)


def _next_register(p8: str, cseq: int, branch: str, expires: int = 600000) -> str:
    """The UE's next REGISTER after `p8` over the same set: a later CSeq, new offers."""
    return (
        p8.replace("CSeq: 2", f"CSeq: {cseq}")
        .replace("z9hG4bKsecond", branch)
        .replace("spi-c=23456789; spi-s=12345678; port-c=2468", "spi-c=33333333; spi-s=44444444; port-c=2470")
        .replace("expires=600000", f"expires={expires}")
    )  # fmt: skip


def test_a_later_register_over_the_set_makes_it_the_established_one():
    p = core()
    inst, p8 = _challenged(p)
    (fwd9,) = _over(p, inst, p8, 2.0)
    assert isinstance(fwd9, Forward)  # ... its 200 went out; the record did not see it

    refresh = _next_register(p8, 3, "z9hG4bKthird")
    assert NEW_OFFER in refresh
    acts = _over(p, inst, refresh, 60.0)
    assert [type(a) for a in acts] == [UpgradeSecurityAssociations, Forward], acts
    assert acts[0].sa.inbound_spis == inst.sa.inbound_spis and acts[0].lifetime > 200
    reg = p.registrations[IMPI]
    assert reg.state is RegState.REGISTERED and reg.temporary is None
    assert reg.sa.spi_ps == inst.sa.spi_ps and not reg.security_client
    assert p.counters["established-by-later-register"] == 1
    assert p.counters["downgrade-refused"] == 0
    up = acts[1].message
    assert 'integrity-protected="yes"' in up.get("Authorization")

    # the refresh's 200 goes over the set, and the P-CSCF subscribes (it had not yet)
    ok = make_response(
        _reparse(up), 200, to_tag="5ef4",
        headers=[("Service-Route", SERVICE_ROUTE), ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
                 ("P-Associated-URI", f"<{IMPU}>")],
    )  # fmt: skip
    out = p.receive_response(_reparse(ok), ICSCF, 60.1)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.spi == inst.sa.spi_uc and reply.message.status == 200
    assert [a.message.method for a in out if isinstance(a, Forward)] == ["SUBSCRIBE"]
    assert reg.expires_at == 60.1 + 600000 and reg.service_route == (SERVICE_ROUTE,)


def test_a_de_register_over_the_set_is_answered_over_it_then_the_set_goes():
    p = core()
    inst, p8 = _challenged(p)
    _over(p, inst, p8, 2.0)
    acts = _over(p, inst, _next_register(p8, 3, "z9hG4bKbye", expires=0), 5.0)
    assert [type(a) for a in acts] == [UpgradeSecurityAssociations, Forward], acts
    ok = make_response(_reparse(acts[1].message), 200, to_tag="5ef4",
                       headers=[("Contact", "<sip:127.0.0.1:1357>;expires=0")])  # fmt: skip
    out = p.receive_response(_reparse(ok), ICSCF, 5.1)
    assert [type(a) for a in out] == [Reply, HoldSecurityAssociations], out
    assert out[0].spi == inst.sa.spi_uc
    assert IMPI not in p.registrations


def test_the_challenge_response_with_other_offers_is_still_refused():
    """The same CSeq as the response that passed (its copy with the offers changed),
    or a later one when no response passed yet: a bid-down, 494 as before."""
    p = core()
    inst, p8 = _challenged(p)
    _over(p, inst, p8, 2.0)
    (reply, *_) = _over(p, inst, _next_register(p8, 2, "z9hG4bKcopy"), 2.5)
    assert reply.message.status == 494
    assert p.counters["established-by-later-register"] == 0

    q = core()
    inst, p8 = _challenged(q)
    (reply, *_) = _over(q, inst, _next_register(p8, 3, "z9hG4bKthird"), 2.0)
    assert reply.message.status == 494
    assert q.counters["established-by-later-register"] == 0


def test_a_new_challenge_wants_its_own_response():
    """Challenged again (the 401 to the challenge response): the response that passed
    over the first set is no proof for the second; a later CSeq over the new set with
    other offers than the challenged REGISTER's is refused."""
    p = core()
    inst, p8 = _challenged(p)
    (fwd9,) = _over(p, inst, p8, 2.0)
    again = make_response(
        _reparse(fwd9.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(again), ICSCF, 2.1)
    second = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    assert second.sa.spi_ps != inst.sa.spi_ps
    assert p.registrations[IMPI].answered_cseq == 0
    r = next(a for a in acts if isinstance(a, Reply)).message
    tampered = _next_register(packet8(r), 3, "z9hG4bKthird")
    (reply, *_) = _over(p, second, tampered, 2.5)
    assert reply.message.status == 494
    assert p.counters["established-by-later-register"] == 0


def test_another_request_over_the_set_after_the_challenge_response_makes_it_established():
    """The UE's reg-event SUBSCRIBE follows its 200 at once, over the new set: after the
    challenge response passed, such a request shows the 200 went out too. Before any
    response passed, only REGISTER may use the temporary set (403)."""
    route = "<sip:127.0.0.1:5063;lr>, " + SERVICE_ROUTE
    p = core()
    inst, p8 = _challenged(p)
    sub = ue_subscribe(Route=route)
    (refused,) = p.receive_request(sub, Arrival(UE_C, spi=inst.sa.spi_ps), 1.5)
    assert refused.message.status == 403 and IMPI in p.registrations

    _over(p, inst, p8, 2.0)
    acts = p.receive_request(
        ue_subscribe("z9hG4bKsub2", Route=route), Arrival(UE_C, spi=inst.sa.spi_ps), 2.5
    )
    assert [type(a) for a in acts] == [UpgradeSecurityAssociations, Forward], acts
    assert acts[1].message.method == "SUBSCRIBE"
    assert p.registrations[IMPI].state is RegState.REGISTERED
    assert p.counters["established-by-later-register"] == 1


def test_a_record_taken_back_before_its_response_counts_that_response_as_the_next_cseq():
    """Written after the 401, before any challenge response passed (then the response,
    its 200 and a crash): the P-CSCF that takes the record back counts the response
    as the challenged REGISTER's CSeq + 1 (RFC 3261 §10.2), so the UE's refresh after
    it (+2) takes the set as established, while the response itself with other offers
    is still refused."""
    p = core()
    inst, p8 = _challenged(p)
    written = replace(p.registrations[IMPI])
    assert (written.challenged_cseq, written.answered_cseq) == (1, 0)

    q = core()
    q.adopt(replace(written), None, 10.0)
    assert q.registrations[IMPI].answered_cseq == 2
    (reply, *_) = _over(q, inst, _next_register(p8, 2, "z9hG4bKcopy"), 11.0)
    assert reply.message.status == 494

    r = core()
    r.adopt(replace(written), None, 10.0)
    acts = _over(r, inst, _next_register(p8, 3, "z9hG4bKthird"), 11.0)
    assert [type(a) for a in acts] == [UpgradeSecurityAssociations, Forward], acts
    assert r.counters["established-by-later-register"] == 1
