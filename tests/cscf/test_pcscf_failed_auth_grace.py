"""P-CSCF core (sans-I/O): the answer to a failed challenge response (the protected
REGISTER over the temporary SA set whose RES was wrong) is the last message due over
that set (TS 33.203 §7.4, TS 24.229 §5.2.2): it goes out over the temporary SA the
REGISTER came on, and the set goes after it. Over UDP the set is then held as a
de-REGISTER's is (`DEREGISTER_GRACE`, `HoldSecurityAssociations`): a retransmission of
that REGISTER (its answer was lost) gets the cached answer over the same SA until Timer
J, then the set is released once. Over TCP it goes with the answer."""

from __future__ import annotations

import pytest

from imsaka.cscf.pcscf import (
    DEREGISTER_GRACE,
    Arrival,
    DropInput,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
    Reply,
)
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import ICSCF, UE_C, WWW, registered
from tests.e2e.test_pcscf_core import PACKET1, core, packet8

IMPI = "user1_private@home1.net"
UE = ("127.0.0.1", 40000)


def _reparse(msg):
    return parse_message(msg.to_bytes())


def _challenged(p: PcscfCore, clear: str = PACKET1, at: float = 0.0):
    """The UE's REGISTER in the clear answered 401: the temporary set's install and
    the challenge response (packet 8) the UE sends over it."""
    (fwd,) = p.receive_request(parse_message(clear.encode()), Arrival(UE), at)
    c401 = make_response(
        _reparse(fwd.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(c401), ICSCF, at + 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    r7 = next(a for a in acts if isinstance(a, Reply)).message
    return inst, packet8(r7)


def _refused(p: PcscfCore, inst, p8: str, at: float, status: int = 403, transport="udp"):
    """The challenge response over the temporary set, answered `status` upstream."""
    (fwd,) = p.receive_request(
        parse_message(p8.encode()), Arrival(UE_C, transport, spi=inst.sa.spi_ps), at
    )
    headers = [("WWW-Authenticate", WWW)] if status == 401 else None
    answer = make_response(_reparse(fwd.message), status, to_tag="5ef4", headers=headers)
    return p.receive_response(_reparse(answer), ICSCF, at + 0.1)


def test_403_goes_over_the_temporary_sa_then_the_set_is_held_for_retransmissions():
    p = core()
    inst, p8 = _challenged(p)
    out = _refused(p, inst, p8, 2.0)
    (reply,) = [a for a in out if isinstance(a, Reply)]
    assert reply.message.status == 403
    assert reply.spi == inst.sa.spi_uc and reply.destination == UE_C
    # held after the reply, not released: the 403 was the last message due over it
    assert [type(a) for a in out] == [Reply, HoldSecurityAssociations]
    assert out[1].sa.spi_ps == inst.sa.spi_ps and out[1].until == 2.1 + DEREGISTER_GRACE
    assert p.in_grace() == 1 and p.stats()["registrations"] == 0
    assert not set(inst.sa.inbound_spis) & set(p.by_spi)
    # the 403 was lost: the UE retransmits over the temporary SA, gets the same 403
    first = reply.message.to_bytes()
    for at in (2.6, 3.6, 5.6):
        (again,) = p.receive_request(
            parse_message(p8.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), at
        )
        assert isinstance(again, Reply) and again.spi == inst.sa.spi_uc
        assert again.destination == UE_C and again.message.to_bytes() == first
    assert p.counters["answered-again-in-grace"] == 3
    assert p.open_transactions() == 0
    # nothing else over the held set: a new REGISTER over it is dropped
    other = p8.replace("z9hG4bKsecond", "z9hG4bKthird").replace("CSeq: 2", "CSeq: 3")
    (drop,) = p.receive_request(
        parse_message(other.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 6.0
    )
    assert isinstance(drop, DropInput) and drop.reason == "request-over-deregistered-sa"
    # Timer J from the answer: one release, with the reason of the failure
    assert p.next_deadline() is not None
    out = p.handle_timer(2.1 + DEREGISTER_GRACE)
    released = [(a.sa.spi_ps, a.reason) for a in out if isinstance(a, ReleaseSecurityAssociations)]
    assert released == [(inst.sa.spi_ps, "authentication failed (403)")]
    assert p.in_grace() == 0 and p.handle_timer(1000.0) == []


def test_failed_reauthentication_keeps_the_registered_set():
    """A registered UE re-authenticated (its re-REGISTER challenged, a new temporary
    set): the 403 to its wrong response goes over the temporary SA, which is held; the
    established set keeps serving."""
    p, inst, _ = registered()
    reg = p.registrations[IMPI]
    clear = PACKET1.replace("z9hG4bKnashds7", "z9hG4bKreauth").replace("CSeq: 1", "CSeq: 5")
    # the re-REGISTER over the established set, challenged
    text = clear.replace(
        "\r\nRequire: sec-agree\r\n",
        f"\r\nSecurity-Verify: {reg.security_server[0]}\r\nRequire: sec-agree\r\n",
        1,
    )
    (fwd,) = p.receive_request(parse_message(text.encode()), Arrival(UE_C, spi=inst.sa.spi_ps), 5.0)
    c401 = make_response(
        _reparse(fwd.message), 401, to_tag="5ef4", headers=[("WWW-Authenticate", WWW)]
    )
    acts = p.receive_response(_reparse(c401), ICSCF, 5.1)
    temp = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    r7 = next(a for a in acts if isinstance(a, Reply)).message
    p8 = packet8(r7).replace("z9hG4bKsecond", "z9hG4bKreauth2").replace("CSeq: 2", "CSeq: 6")
    out = _refused(p, temp, p8, 6.0)
    assert [type(a) for a in out] == [Reply, HoldSecurityAssociations]
    assert out[0].spi == temp.sa.spi_uc and out[1].sa.spi_ps == temp.sa.spi_ps
    assert p.registrations[IMPI].sa.spi_ps == inst.sa.spi_ps
    assert set(p.by_spi) == set(inst.sa.inbound_spis)


def _downgraded(p8: str) -> str:
    """Packet 8 with a Security-Verify that is not the Security-Server sent (RFC 3329
    §2.3.1: a bid-down)."""
    return "\r\n".join(
        ln.replace("alg=hmac-sha-1-96", "alg=hmac-md5-96")
        if ln.startswith("Security-Verify")
        else ln
        for ln in p8.split("\r\n")
    )


def test_494_to_a_downgrade_goes_over_the_temporary_sa_then_the_set_is_held():
    """The 494 to a challenge response whose Security-Verify differs is the last message
    due over the temporary set: held for that REGISTER's retransmissions (each gets the
    same 494 over the same SA), then released once; no registration record stays."""
    p = core()
    inst, p8 = _challenged(p)
    bad = _downgraded(p8)
    over_temp = Arrival(UE_C, spi=inst.sa.spi_ps)
    out = p.receive_request(parse_message(bad.encode()), over_temp, 2.0)
    assert [type(a) for a in out] == [Reply, HoldSecurityAssociations]
    assert out[0].message.status == 494 and out[0].spi == inst.sa.spi_uc
    assert out[1].sa.spi_ps == inst.sa.spi_ps and out[1].until == 2.0 + DEREGISTER_GRACE
    assert p.stats()["registrations"] == 0 and p.in_grace() == 1 and not p.by_spi
    first = out[0].message.to_bytes()
    for at in (2.5, 3.5):
        (again,) = p.receive_request(parse_message(bad.encode()), over_temp, at)
        assert isinstance(again, Reply) and again.spi == inst.sa.spi_uc
        assert again.message.to_bytes() == first
    assert p.counters["answered-again-in-grace"] == 2 and p.counters["downgrade-refused"] == 1
    out = p.handle_timer(2.0 + DEREGISTER_GRACE)
    released = [(a.sa.spi_ps, a.reason) for a in out if isinstance(a, ReleaseSecurityAssociations)]
    assert released == [(inst.sa.spi_ps, "downgrade attempt")]
    assert p.in_grace() == 0 and p.handle_timer(1000.0) == []


@pytest.mark.parametrize("status", [403, 494])
def test_over_tcp_or_without_grace_the_temporary_set_goes_with_the_answer(status):
    """The 403 from upstream to a wrong response, or our 494 to a downgrade."""
    for transport, grace in (("tcp", DEREGISTER_GRACE), ("udp", 0.0)):
        p = core()
        p.dereg_grace = grace
        inst, p8 = _challenged(p)
        if status == 494:
            arrival = Arrival(UE_C, transport, spi=inst.sa.spi_ps)
            out = p.receive_request(parse_message(_downgraded(p8).encode()), arrival, 2.0)
        else:
            out = _refused(p, inst, p8, 2.0, transport=transport)
        assert [type(a) for a in out] == [Reply, ReleaseSecurityAssociations]
        assert out[0].spi == inst.sa.spi_uc and out[0].message.status == status
        assert out[1].sa.spi_ps == inst.sa.spi_ps and p.in_grace() == 0
        assert p.stats()["registrations"] == 0
