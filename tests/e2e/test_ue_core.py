"""UE registration core (sans-I/O): packets 1 and 8 built from a synthetic 401."""

from __future__ import annotations

import base64
import random

import pytest

from imsaka.aka import digest
from imsaka.aka.isim import Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.sqn import SqnArray
from imsaka.aka.vectors import generate_vector
from imsaka.sip import Request, make_response, parse_message
from imsaka.ue.config import UeConfig
from imsaka.ue.core import (
    NETWORK_AUTH_FAILED,
    Registered,
    RegistrationFailed,
    SendRequest,
    SetUpSecurityAssociations,
    UeRegistration,
    UeState,
    refresh_interval,
)

K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")


def make_ue(seed: int = 1, **kw) -> UeRegistration:
    cfg = UeConfig(
        impi="user1_private@home1.net",
        impus=["sip:user1_public1@home1.net"],
        home_domain="home1.net",
        registrar="registrar.home1.net",
        k=K,
        opc=OPC,
        pcscf=("127.0.0.1", 5060),
        **kw,
    )
    isim = Isim(Milenage(K, opc=OPC), SqnArray())
    return UeRegistration(
        cfg,
        isim,
        local=("127.0.0.1", 5060),
        protected_ports=lambda: (2468, 1357),
        rng=random.Random(seed),
    )


def challenge(req: Request, *, sqn: int = 32 + 1, k: bytes = K, server: str | None = None):
    vec = generate_vector(Milenage(k, opc=OPC), sqn, b"\x80\x00")
    nonce = digest.make_nonce(vec.rand, vec.autn)
    resp = make_response(
        req,
        401,
        to_tag="5ef4",
        headers=[
            (
                "WWW-Authenticate",
                f'Digest realm="registrar.home1.net", nonce="{nonce}", algorithm=AKAv1-MD5',
            )
        ],
    )
    resp.add(
        "Security-Server",
        server
        or "ipsec-3gpp; q=0.1; alg=hmac-sha-1-96; spi-c=98765432; spi-s=87654321; port-c=8642; port-s=7531",
    )
    return parse_message(resp.to_bytes()), vec, nonce


def test_packet1_shape():
    ue = make_ue()
    events = ue.register(0.0)
    (send,) = [e for e in events if isinstance(e, SendRequest)]
    assert send.protected is False
    req = send.request
    assert req.uri == "sip:registrar.home1.net"
    assert req.get("Require") == "sec-agree" and req.get("Proxy-Require") == "sec-agree"
    assert req.get("Supported") == "path"
    sc = req.security("Security-Client")[0]
    assert (sc.alg, sc.port_c, sc.port_s) == ("hmac-sha-1-96", 2468, 1357)
    auth = req.authorization
    assert auth.username == "user1_private@home1.net" and auth.nonce == "" and auth.response == ""
    assert req.get("P-Access-Network-Info").startswith("3GPP-UTRAN-TDD")
    assert req.contacts[0].expires == 600000
    parse_message(req.to_bytes())  # well-formed on the wire


def test_challenge_gives_protected_register_and_sas():
    ue = make_ue()
    (send1,) = ue.register(0.0)
    resp, vec, nonce = challenge(send1.request)
    events = ue.receive(resp, 1.0)
    sa_ev = next(e for e in events if isinstance(e, SetUpSecurityAssociations))
    assert sa_ev.sa.ck == vec.ck and sa_ev.sa.ik == vec.ik
    assert (sa_ev.sa.port_ps, sa_ev.sa.spi_ps, sa_ev.sa.port_uc) == (7531, 87654321, 2468)
    send2 = next(e for e in events if isinstance(e, SendRequest))
    assert send2.protected
    req2 = send2.request
    assert req2.call_id == send1.request.call_id
    assert req2.cseq.seq == send1.request.cseq.seq + 1
    assert str(req2.security("Security-Verify")[0]).replace(" ", "") == (
        "ipsec-3gpp;q=0.1;alg=hmac-sha-1-96;spi-c=98765432;spi-s=87654321;port-c=8642;port-s=7531"
    )
    auth = req2.authorization
    expected = digest.compute_response(
        algorithm="AKAv1-MD5",
        username="user1_private@home1.net",
        realm="registrar.home1.net",
        password=vec.xres,
        method="REGISTER",
        uri="sip:registrar.home1.net",
        nonce=nonce,
    )
    assert auth.response == expected
    assert req2.top_via.port == 1357 and req2.contacts[0].parsed_uri.port == 1357
    ok = make_response(
        req2,
        200,
        to_tag="5ef4",
        headers=[
            ("Service-Route", "<sip:orig@scscf1.home1.net;lr>"),
            ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
            ("P-Associated-URI", "<sip:user1_public1@home1.net>, <sip:user1_public2@home1.net>"),
        ],
    )
    events = ue.receive(parse_message(ok.to_bytes()), 2.0)
    reg = next(e for e in events if isinstance(e, Registered))
    assert reg.expires == 600000 and reg.service_route == ("<sip:orig@scscf1.home1.net;lr>",)
    assert len(reg.associated_uris) == 2
    assert ue.state is UeState.REGISTERED
    assert ue.next_deadline() == 1.0 + 600000 - 600  # (from the REGISTER sent at 1 s)
    assert refresh_interval(120) == 60


def test_bad_mac_stops():
    ue = make_ue()
    (send1,) = ue.register(0.0)
    resp, _vec, _ = challenge(send1.request, k=bytes(16))
    events = ue.receive(resp, 1.0)
    fail = next(e for e in events if isinstance(e, RegistrationFailed))
    assert fail.reason == NETWORK_AUTH_FAILED
    sends = [e for e in events if isinstance(e, SendRequest)]
    assert (
        sends
        and sends[0].request.authorization.response == ""
        and "auts" not in sends[0].request.authorization
    )
    assert not [e for e in events if isinstance(e, SetUpSecurityAssociations)]


def test_stale_sqn_sends_auts():
    ue = make_ue()
    (send1,) = ue.register(0.0)
    resp, _vec, _ = challenge(send1.request, sqn=64)
    ue.receive(resp, 1.0)
    ue.state = UeState.UNPROTECTED_SENT
    resp2, _vec2, _ = challenge(ue.pending, sqn=64)  # replayed SQN
    events = ue.receive(resp2, 1.0)
    (send,) = [e for e in events if isinstance(e, SendRequest)]
    auts = send.request.authorization.auts
    assert auts and len(base64.b64decode(auts)) == 14
    assert not send.protected


def test_unusable_security_server_fails():
    ue = make_ue()
    (send1,) = ue.register(0.0)
    resp, _vec, _ = challenge(
        send1.request, server="ipsec-3gpp; alg=hmac-md5-96; spi-c=1; spi-s=2; port-c=3; port-s=4"
    )
    events = ue.receive(resp, 1.0)
    assert isinstance(events[-1], RegistrationFailed)


def test_stray_response_is_counted():
    ue = make_ue()
    ue.register(0.0)
    other = make_ue(seed=2)
    (s,) = other.register(0.0)
    assert ue.receive(make_response(s.request, 200), 1.0) == []
    assert ue.drops["response-not-matching-pending-register"] == 1


def _ue_with_ports(ports, seed: int) -> UeRegistration:
    """A UE whose offers take their (port-c, port-s) from the iterator `ports`."""
    cfg = UeConfig(
        impi="user1_private@home1.net", impus=["sip:user1_public1@home1.net"], home_domain="home1.net",
        registrar="registrar.home1.net", k=K, opc=OPC,
    )  # fmt: skip
    return UeRegistration(
        cfg, Isim(Milenage(K, opc=OPC), SqnArray()), local=("127.0.0.1", 5060),
        protected_ports=lambda: next(ports), rng=random.Random(seed),
    )  # fmt: skip


def _registered_ue():
    ue = _ue_with_ports(iter([(2468, 1357), (2470, 1357), (2472, 1357), (2474, 1357)]), 3)
    (send1,) = ue.register(0.0)
    resp, _vec, _ = challenge(send1.request)
    events = ue.receive(resp, 1.0)
    req2 = next(e for e in events if isinstance(e, SendRequest)).request
    ok = make_response(
        req2, 200, to_tag="5ef4", headers=[("Contact", "<sip:127.0.0.1:1357>;expires=1200")]
    )
    ue.receive(parse_message(ok.to_bytes()), 2.0)
    return ue, req2


def test_refresh_is_protected_with_new_offer_and_same_port_s():
    ue, req2 = _registered_ue()
    # 1200 s granted: refresh at half, from when the REGISTER went (1 s; its 200 at 2 s)
    assert ue.next_deadline() == 1.0 + 600
    assert ue.handle_timer(100.0) == []  # not yet
    (send,) = ue.handle_timer(601.0)
    assert send.protected
    req = send.request
    sc = req.security("Security-Client")[0]
    old = req2.security("Security-Client")[0]
    assert sc.port_s == old.port_s == 1357 and sc.port_c != old.port_c and sc.spi_c != old.spi_c
    assert [str(v) for v in req.security("Security-Verify")] == [
        str(v) for v in req2.security("Security-Verify")
    ]
    assert req.authorization.response == req2.authorization.response  # last response reused
    assert req.cseq.seq == req2.cseq.seq + 1 and req.call_id == req2.call_id
    assert ue.state is UeState.REREGISTERING


def test_a_late_200_times_the_refresh_from_when_the_register_went():
    """TS 24.229 §5.1.1.4.1: refresh at half of a grant of 1200 s or less. The S-CSCF
    granted 30 s when the challenge response first reached it; its 200, lost, came on
    a retransmission 20 s later. Counted from the 200, the refresh (at 35 s) came after
    the registration had lapsed at the network (at 31 s; chaos seed 10174); counted
    from the sending it is due at 16 s, so it goes at once."""
    ue = _ue_with_ports(iter([(2468, 1357), (2470, 1357)]), 3)
    (send1,) = ue.register(0.0)
    resp, _vec, _ = challenge(send1.request)
    req2 = next(e for e in ue.receive(resp, 1.0) if isinstance(e, SendRequest)).request
    ok = make_response(
        req2, 200, to_tag="5ef4", headers=[("Contact", "<sip:127.0.0.1:1357>;expires=30")]
    )
    ue.receive(parse_message(ok.to_bytes()), 21.0)
    assert ue.next_deadline() == 1.0 + 15
    (send,) = ue.handle_timer(21.0)
    assert send.protected and send.request.method == "REGISTER"
    assert ue.state is UeState.REREGISTERING


def test_unchallenged_refresh_moves_the_sa_lifetime():
    """TS 24.229 §5.1.1.4.1: the 200 OK to a re-REGISTER that was not challenged sets
    the lifetime of the set in use to the longer of what it had and the new
    registration's plus 30 s (before 2026-11-27 it stayed at the first registration's,
    and a UE registered longer than that lost its SAs while still registered)."""
    from imsaka.ue.core import SecurityAssociationsEstablished

    ue, _ = _registered_ue()
    sa = ue.sa
    (send,) = ue.handle_timer(602.0)
    ok = make_response(
        send.request, 200, to_tag="5ef4", headers=[("Contact", "<sip:127.0.0.1:1357>;expires=1200")]
    )
    events = ue.receive(parse_message(ok.to_bytes()), 603.0)
    assert SecurityAssociationsEstablished(sa, 1230.0) in events
    assert ue.sa is sa and ue.state is UeState.REGISTERED


def test_deregister_expires_zero_over_the_sas_then_released():
    from imsaka.ue.core import Deregistered, SecurityAssociationsReleased

    ue, _ = _registered_ue()
    (send,) = ue.deregister(10.0)
    assert send.protected and send.request.contacts[0].expires == 0
    ok = make_response(send.request, 200, to_tag="5ef4")
    events = ue.receive(parse_message(ok.to_bytes()), 11.0)
    assert any(isinstance(e, SecurityAssociationsReleased) for e in events)
    assert isinstance(events[-1], Deregistered) and ue.state is UeState.DEREGISTERED
    assert ue.sa is None and ue.next_deadline() is None


def test_inputs_outside_the_table_are_counted_drops():
    ue = make_ue()
    assert ue.deregister(0.0) == []  # not registered
    assert ue.drops["deregister-in-idle"] == 1
    assert ue.transaction_timeout(0.0) == []  # nothing pending
    (_send,) = ue.register(0.0)
    events = ue.transaction_timeout(40.0)
    assert isinstance(events[-1], RegistrationFailed) and events[-1].status == 408


def _answer(req: Request, status: int, retry_after: str | None):
    headers = [("Retry-After", retry_after)] if retry_after is not None else []
    return parse_message(make_response(req, status, to_tag="5ef4", headers=headers).to_bytes())


def test_504_with_retry_after_is_retried_after_the_indicated_time():
    from imsaka.ue.core import RetryScheduled

    ue = make_ue()
    (send,) = ue.register(0.0)
    events = ue.receive(_answer(send.request, 504, "30"), 1.0)
    assert [type(e) for e in events] == [RetryScheduled]
    assert events[0].at == 31.0 and events[0].attempt == 1
    assert ue.state is UeState.WAITING_RETRY and ue.next_deadline() == 31.0
    assert ue.handle_timer(30.0) == []  # not before the time the network asked for
    (again,) = ue.handle_timer(31.0)
    assert isinstance(again, SendRequest) and not again.protected
    assert again.request.call_id != send.request.call_id  # a fresh phase 1
    assert ue.state is UeState.UNPROTECTED_SENT


def test_retries_are_bounded_and_need_retry_after():
    ue = make_ue(max_retries=2)
    (send,) = ue.register(0.0)
    now = 0.0
    for attempt in (1, 2):
        ev = ue.receive(_answer(send.request, 503, "5;duration=60"), now)
        assert ev[-1].attempt == attempt
        now = ue.next_deadline()
        (send,) = ue.handle_timer(now)
    events = ue.receive(_answer(send.request, 503, "5"), now)
    assert isinstance(events[-1], RegistrationFailed) and events[-1].status == 503
    # no Retry-After, a status that is no temporary condition, a wait above the bound
    for status, ra, kw in ((500, None, {}), (403, "5", {}), (504, "7200", {})):
        ue = make_ue(**kw)
        (send,) = ue.register(0.0)
        events = ue.receive(_answer(send.request, status, ra), 1.0)
        assert isinstance(events[-1], RegistrationFailed), (status, ra)


def test_failed_refresh_with_retry_after_refreshes_over_the_same_sas():
    from imsaka.ue.core import RetryScheduled

    ue, req2 = _registered_ue()
    (send,) = ue.handle_timer(602.0)
    events = ue.receive(_answer(send.request, 480, "10 (HSS unreachable)"), 603.0)
    assert isinstance(events[-1], RetryScheduled) and ue.sa is not None
    (again,) = ue.handle_timer(613.0)
    assert again.protected and again.request.call_id == req2.call_id
    ok = make_response(
        again.request,
        200,
        to_tag="5ef4",
        headers=[("Contact", "<sip:127.0.0.1:1357>;expires=1200")],
    )
    events = ue.receive(parse_message(ok.to_bytes()), 614.0)
    assert isinstance(events[-1], Registered) and ue.retries == 0


def test_a_failed_refresh_is_followed_by_an_initial_registration():
    """TS 24.229 §5.1.1.4.1: a re-registration that times out (Timer F: a restarted
    P-CSCF knows none of the UE's SAs and drops what comes over them) or is answered
    408, 500 or 504 is followed by an initial registration, not by a UE that stays
    failed; so is a 494 (RFC 3329 §2.3.1: the P-CSCF holds no agreement it accepts for
    the set); that one's own failure ends the attempt (no loop)."""
    from imsaka.ue.core import RegisteringAnew, SecurityAssociationsReleased

    for fail in ("timeout", 408, 494, 500, 504):
        ue, req2 = _registered_ue()
        sa = ue.sa
        (send,) = ue.handle_timer(602.0)
        if fail == "timeout":
            events = ue.transaction_timeout(634.0)
        else:
            events = ue.receive(_answer(send.request, fail, None), 603.0)
        assert [type(e) for e in events] == [
            RegisteringAnew,
            SecurityAssociationsReleased,
            SendRequest,
        ], fail
        assert events[1].sa is sa and ue.sa is None
        again = events[-1]
        assert not again.protected and again.request.call_id != req2.call_id
        assert again.request.get("Authorization").count('response=""') == 1
        assert again.request.security("Security-Client")[0].port_s == 1357  # same contact
        assert ue.state is UeState.UNPROTECTED_SENT
        events = ue.transaction_timeout(700.0)
        assert [type(e) for e in events] == [RegistrationFailed], fail


def test_a_494_to_a_challenge_response_registers_anew_and_to_phase_1_ends():
    """A challenged re-registration whose answer (over the temporary set, the
    established one still held) gets 494 starts over from phase 1 with both sets
    released; a 494 to that unprotected REGISTER is final."""
    from imsaka.ue.core import RegisteringAnew, SecurityAssociationsReleased

    ue, _ = _registered_ue()
    (send,) = ue.handle_timer(602.0)
    resp, _vec, _ = challenge(send.request, sqn=64)
    answer = next(e for e in ue.receive(resp, 603.0) if isinstance(e, SendRequest))
    assert answer.protected and ue.temporary_sa is not None and ue.sa is not None
    events = ue.receive(_answer(answer.request, 494, None), 603.5)
    assert [type(e) for e in events] == [
        RegisteringAnew,
        SecurityAssociationsReleased,
        SecurityAssociationsReleased,
        SendRequest,
    ]
    assert ue.temporary_sa is None and ue.sa is None and not events[-1].protected
    events = ue.receive(_answer(events[-1].request, 494, None), 604.0)
    assert [type(e) for e in events] == [RegistrationFailed] and events[0].status == 494
    assert ue.state is UeState.FAILED and ue.next_deadline() is None


def test_a_refresh_refused_otherwise_fails_and_keeps_its_set():
    ue, _ = _registered_ue()
    sa = ue.sa
    (send,) = ue.handle_timer(602.0)
    events = ue.receive(_answer(send.request, 403, None), 603.0)
    assert [type(e) for e in events] == [RegistrationFailed] and ue.sa is sa


def test_a_challenged_refresh_whose_answer_times_out_registers_anew():
    from imsaka.ue.core import RegisteringAnew

    ue, _ = _registered_ue()
    (send,) = ue.handle_timer(602.0)
    resp, _vec, _ = challenge(send.request, sqn=64)  # a fresh SQN
    events = ue.receive(resp, 603.0)
    assert ue.state is UeState.RESPONSE_SENT and ue.temporary_sa is not None
    events = ue.transaction_timeout(640.0)
    assert isinstance(events[0], RegisteringAnew) and isinstance(events[-1], SendRequest)
    assert ue.temporary_sa is None and ue.sa is None and not events[-1].protected


def test_deregister_refused_for_now_is_sent_again_over_the_same_sas():
    """A de-REGISTER answered 480 with Retry-After (the HSS unreachable from the
    I-CSCF) waits that long and goes again over the SAs, which stay meanwhile; a
    refusal without Retry-After ends the UE's side at once, as before."""
    from imsaka.ue.core import Deregistered, RetryScheduled, SecurityAssociationsReleased

    ue, _ = _registered_ue()
    sa = ue.sa
    (send,) = ue.deregister(10.0)
    events = ue.receive(_answer(send.request, 480, "1 (HSS unreachable)"), 11.0)
    assert [type(e) for e in events] == [RetryScheduled]
    assert ue.sa is sa and ue.state is UeState.WAITING_RETRY
    (again,) = ue.handle_timer(12.0)
    assert again.protected and ";expires=0" in again.request.get("Contact")
    assert again.request.cseq.seq > send.request.cseq.seq
    events = ue.receive(_answer(again.request, 200, None), 12.5)
    assert isinstance(events[-1], Deregistered) and events[-1].status == 200
    assert any(isinstance(e, SecurityAssociationsReleased) for e in events)
    ue, _ = _registered_ue()
    (send,) = ue.deregister(10.0)
    events = ue.receive(_answer(send.request, 480, None), 11.0)
    assert isinstance(events[-1], Deregistered) and events[-1].status == 480
    assert ue.sa is None


def test_a_failure_that_may_pass_is_followed_by_registering_again_after_a_back_off():
    """With `recovery_base_time` (RFC 5626 §4.5 base-time) a failed attempt (no answer,
    5xx, 600) is followed by a new initial registration after rand(½…1) · min(max-time,
    base · 2^failures) s; the waits double up to max-time and start again after a
    success. Without it the UE stays failed, as before."""
    from imsaka.ue.core import RecoveryScheduled

    ue = make_ue(recovery_base_time=30, recovery_max_time=200)
    (send,) = ue.register(0.0)
    now, waits = 0.0, []
    for fail in ("timeout", 500, 600, 503, "timeout"):
        if fail == "timeout":
            events = ue.transaction_timeout(now + 32.0)
            now += 32.0
        else:
            events = ue.receive(_answer(send.request, fail, None), now + 1.0)
            now += 1.0
        assert [type(e) for e in events] == [RegistrationFailed, RecoveryScheduled], fail
        rec = events[-1]
        assert rec.status == (408 if fail == "timeout" else fail) and rec.at == now + rec.after
        ceiling = min(200.0, 30.0 * 2**rec.failures)
        assert ceiling / 2 <= rec.after <= ceiling, (rec.failures, rec.after)
        waits.append(rec.after)
        assert ue.state is UeState.WAITING_RETRY and ue.next_deadline() == rec.at
        assert ue.handle_timer(rec.at - 0.5) == []
        (send,) = ue.handle_timer(rec.at)
        now = rec.at
        assert isinstance(send, SendRequest) and not send.protected
        assert send.request.get("Authorization").count('response=""') == 1  # phase 1
    assert rec.failures == 5 and waits[-1] >= 100.0  # 200 s max-time reached
    # registered at last: the count starts again
    resp, _vec, _ = challenge(send.request)
    req2 = next(e for e in ue.receive(resp, now + 1) if isinstance(e, SendRequest)).request
    ok = make_response(
        req2, 200, to_tag="5ef4", headers=[("Contact", "<sip:127.0.0.1:1357>;expires=1200")]
    )
    events = ue.receive(parse_message(ok.to_bytes()), now + 2)
    assert any(isinstance(e, Registered) for e in events)
    assert ue.recoveries == 0 and ue.state is UeState.REGISTERED
    # without the setting, as before: failed, no deadline
    ue = make_ue()
    (send,) = ue.register(0.0)
    assert [type(e) for e in ue.transaction_timeout(32.0)] == [RegistrationFailed]
    assert ue.state is UeState.FAILED and ue.next_deadline() is None


def test_a_refusal_of_the_ue_itself_is_not_tried_again():
    for status in (403, 404, 420, 494):
        ue = make_ue(recovery_base_time=30)
        (send,) = ue.register(0.0)
        events = ue.receive(_answer(send.request, status, None), 1.0)
        assert [type(e) for e in events] == [RegistrationFailed], status
        assert ue.state is UeState.FAILED and ue.next_deadline() is None
    # nor a network whose AUTN fails the ISIM's MAC check (another K)
    ue = make_ue(recovery_base_time=30)
    (send,) = ue.register(0.0)
    resp, _vec, _ = challenge(send.request, k=bytes(16))
    events = ue.receive(resp, 1.0)
    assert isinstance(events[0], SendRequest) and ue.failure == NETWORK_AUTH_FAILED
    assert isinstance(events[-1], RegistrationFailed)
    assert ue.state is UeState.FAILED and ue.next_deadline() is None


def test_retry_settings_are_validated():
    import pytest

    from imsaka.clierror import CliError

    with pytest.raises(CliError, match="max_retries"):
        make_ue(max_retries=-1)
    with pytest.raises(CliError, match="recovery_base_time"):
        make_ue(recovery_base_time=-5)
    with pytest.raises(CliError, match="recovery_max_time"):
        make_ue(recovery_max_time=True)
    with pytest.raises(CliError, match="max_retry_after"):
        UeConfig.from_dict(
            {
                "impi": "a@b.net",
                "impus": ["sip:a@b.net"],
                "home_domain": "b.net",
                "k": K.hex(),
                "opc": OPC.hex(),
                "max_retry_after": "soon",
            }
        )


def test_security_client_text_checks_its_numbers() -> None:
    # The configured part is grammar-checked once; the numbers on every build.
    from imsaka.sip import SipParseError
    from imsaka.sip.headers import SecurityMechanism
    from imsaka.ue.core import _mechanism_text

    text = _mechanism_text([("alg", "hmac-sha-1-96")], 4000, 4001, 5000, 5001)
    assert text == "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=4000; spi-s=4001; port-c=5000; port-s=5001"
    assert SecurityMechanism.parse(text).port_s == 5001
    with pytest.raises(SipParseError):
        _mechanism_text([("alg", "hmac-sha-1-96")], 4000, 4001, 0, 5001)
    with pytest.raises(SipParseError):
        _mechanism_text([("alg", "hmac-sha-1-96")], 2**32, 4001, 5000, 5001)
    with pytest.raises(SipParseError):
        _mechanism_text([("alg", "not a token")], 4000, 4001, 5000, 5001)


def _challenged_ue():
    """A registered UE whose every new offer gets fresh ports, and a 401 for any request."""
    ue = _ue_with_ports(((port_c, 1357) for port_c in range(2468, 2600, 2)), 5)
    sqn = iter(range(33, 1000))

    def answer_challenge(send: SendRequest, now: float) -> SendRequest:
        resp, _vec, _ = challenge(send.request, sqn=next(sqn))
        events = ue.receive(resp, now)
        return next(e for e in events if isinstance(e, SendRequest))

    def ok(send: SendRequest, now: float, expires: int = 1200) -> list:
        resp = make_response(
            send.request, 200, to_tag="5ef4",
            headers=[("Contact", f"<sip:127.0.0.1:1357>;expires={expires}")],
        )  # fmt: skip
        return ue.receive(parse_message(resp.to_bytes()), now)

    (send1,) = ue.register(0.0)
    ok(answer_challenge(send1, 1.0), 2.0)
    assert ue.state is UeState.REGISTERED
    return ue, answer_challenge, ok


def test_every_refresh_challenged_succeeds_however_many_there_are():
    """A network that challenges every REGISTER (the S-CSCF's reauthenticate = "always",
    TS 24.229 §5.4.1.2.2 lets it): the limit on challenges is per attempt. The UE counted
    them from its initial registration on, so its third refresh met the fourth challenge
    and failed with "too many authentication challenges"."""
    ue, answer_challenge, ok = _challenged_ue()
    for n in range(6):
        (send,) = ue.register(10.0 + n)
        events = ok(answer_challenge(send, 10.2 + n), 10.4 + n)
        assert any(isinstance(e, Registered) for e in events), (n, events)
        assert ue.state is UeState.REGISTERED
    (send,) = ue.deregister(20.0)
    events = ok(answer_challenge(send, 20.2), 20.4, expires=0)
    assert ue.state is UeState.DEREGISTERED, events


def test_challenges_within_one_attempt_are_still_bounded():
    """Four 401s in a row to one refresh (each answered) end it: the network keeps
    rejecting the responses, and the UE stops instead of looping."""
    ue, answer_challenge, _ok = _challenged_ue()
    (send,) = ue.register(10.0)
    for n in range(3):
        send = answer_challenge(send, 10.2 + n)
    resp, _vec, _ = challenge(send.request, sqn=900)
    events = ue.receive(resp, 14.0)
    failed = next(e for e in events if isinstance(e, RegistrationFailed))
    assert failed.reason == "too many authentication challenges"
    assert ue.state is UeState.FAILED


def test_the_bound_on_challenges_is_followed_by_registering_again_after_a_back_off():
    """With `recovery_base_time` the attempt that met its fourth challenge (S-CSCFs
    that each challenge anew as a partition moves the answers between them) is tried
    again after the RFC 5626 §4.5 back-off, as any failure that may pass; without it
    the UE stays failed. Before the twelfth session (2026-11-29) it stayed failed
    either way (chaos seed 11212)."""
    from imsaka.ue.core import RecoveryScheduled

    for base in (30, 0):
        ue = make_ue(recovery_base_time=base)
        (send,) = ue.register(0.0)
        for n in range(4):
            resp, _vec, _ = challenge(send.request, sqn=40 + n)
            events = ue.receive(resp, 1.0 + n)
            if n < 3:
                send = next(e for e in events if isinstance(e, SendRequest))
        failed = next(e for e in events if isinstance(e, RegistrationFailed))
        assert failed.reason == "too many authentication challenges"
        recovery = [e for e in events if isinstance(e, RecoveryScheduled)]
        if not base:
            assert not recovery and ue.state is UeState.FAILED and ue.next_deadline() is None
            continue
        (rec,) = recovery
        assert rec.status == 401 and ue.state is UeState.WAITING_RETRY
        (again,) = ue.handle_timer(rec.at)
        assert isinstance(again, SendRequest) and not again.protected
        assert ue.auth_rounds == 0


def test_deregister_while_waiting_or_failed_ends_at_once():
    """`deregister()` of a UE that waits to try again (Retry-After, recovery) or whose
    attempt failed: without an SA set nothing goes to the network and the UE is
    de-registered at once (no more attempts); with one the de-REGISTER goes over it."""
    from imsaka.ue.core import Deregistered

    ue = make_ue(recovery_base_time=30)
    (send,) = ue.register(0.0)
    ue.transaction_timeout(32.0)  # recovery planned
    assert ue.state is UeState.WAITING_RETRY
    assert ue.deregister(40.0) == [Deregistered(0)]
    assert ue.state is UeState.DEREGISTERED and ue.next_deadline() is None
    ue = make_ue()
    (send,) = ue.register(0.0)
    ue.receive(_answer(send.request, 403, None), 1.0)
    assert ue.state is UeState.FAILED and ue.deregister(2.0) == [Deregistered(0)]
    # a refresh waiting out a Retry-After still holds its set: the de-REGISTER goes over it
    ue, _ = _registered_ue()
    (send,) = ue.handle_timer(602.0)
    ue.receive(_answer(send.request, 503, "60"), 603.0)
    assert ue.state is UeState.WAITING_RETRY and ue.sa is not None
    (dereg,) = ue.deregister(610.0)
    assert dereg.protected and ";expires=0" in dereg.request.get("Contact")
    assert ue.state is UeState.DEREGISTERING and ue.next_deadline() is None


def test_an_initial_registration_whose_challenge_answer_gets_no_reply_starts_again():
    """TS 33.203 O.3.1.4: the answer to the challenge got no reply (its 200 OK lost,
    and the network ended the registration before a retransmission came, so the
    P-CSCF no longer took them): a new registration procedure at once, the temporary
    set released, a new Call-ID, the challenge answered again; `max_retries` (3) times
    in a row, then the attempt fails with 408. Before, the first such timeout ended it.
    A 200 in between starts the count again."""
    from imsaka.ue.core import RegisteringAnew, SecurityAssociationsReleased

    ue = _ue_with_ports(iter([(2468 + 2 * i, 1357 + 2 * i) for i in range(8)]), 3)
    (send,) = ue.register(0.0)
    call_ids = {send.request.call_id}
    now = 1.0
    for sqn in (33, 65, 97):
        resp, _vec, _ = challenge(send.request, sqn=sqn)
        (_up, answer) = ue.receive(resp, now)
        temporary = ue.temporary_sa
        assert ue.state is UeState.RESPONSE_SENT and answer.protected
        events = ue.transaction_timeout(now + 32)
        assert [type(e) for e in events] == [
            RegisteringAnew,
            SecurityAssociationsReleased,
            SendRequest,
        ]
        assert events[0].unanswered and events[1].sa is temporary
        assert events[0].what == "no reply to the answer to the challenge"
        send = events[-1]
        assert not send.protected and send.request.call_id not in call_ids
        assert send.request.get("Authorization").count('response=""') == 1
        call_ids.add(send.request.call_id)
        assert ue.state is UeState.UNPROTECTED_SENT and ue.temporary_sa is None
        now += 40
    resp, _vec, _ = challenge(send.request, sqn=129)
    ue.receive(resp, now)
    events = ue.transaction_timeout(now + 32)
    assert [type(e) for e in events] == [SecurityAssociationsReleased, RegistrationFailed]
    assert events[-1].status == 408 and ue.state is UeState.FAILED


def test_unanswered_challenge_answers_are_counted_from_the_last_registration():
    """Two answers unanswered, then a registration; its refresh times out and the
    initial registration that follows (§5.1.1.4.1) has its three again."""
    from imsaka.ue.core import RegisteringAnew

    ue = _ue_with_ports(iter([(2468 + 2 * i, 1357) for i in range(12)]), 3)
    (send,) = ue.register(0.0)
    now, sqn = 1.0, 1

    def answer_then_silence(send):
        nonlocal now, sqn
        sqn += 32
        resp, _vec, _ = challenge(send.request, sqn=sqn)
        (_up, answer) = ue.receive(resp, now)
        now += 40
        return answer, ue.transaction_timeout(now)

    for _ in range(2):
        _answer_sent, events = answer_then_silence(send)
        assert isinstance(events[0], RegisteringAnew) and events[0].unanswered
        send = events[-1]
    sqn += 32
    resp, _vec, _ = challenge(send.request, sqn=sqn)
    (_up, answer) = ue.receive(resp, now)
    ok = make_response(
        answer.request,
        200,
        to_tag="5ef4",
        headers=[("Contact", "<sip:127.0.0.1:1357>;expires=1200")],
    )
    ue.receive(parse_message(ok.to_bytes()), now + 1)
    assert ue.state is UeState.REGISTERED
    now += 700  # (the refresh is due 600 s after the REGISTER went)
    (_refresh,) = ue.handle_timer(now)
    now += 32
    events = ue.transaction_timeout(now)
    assert isinstance(events[0], RegisteringAnew) and not events[0].unanswered
    send = events[-1]
    for _ in range(3):
        _answer_sent, events = answer_then_silence(send)
        assert isinstance(events[0], RegisteringAnew) and events[0].unanswered, events
        send = events[-1]
    _answer_sent, events = answer_then_silence(send)
    assert isinstance(events[-1], RegistrationFailed) and events[-1].status == 408
