"""P-CSCF core (sans-I/O): a registration that ends with no REGISTER to answer (its
expiry, a de-registration by the network) while a request the UE sent over its SA set
waits for its answer upstream.

The answer is due over the set the request came on (TS 33.203 §7.4: a set goes after the
last message due over it; TS 24.229 §5.2.2 / FACTS §1.3: the answer goes back over the
SA its request came over). The set leaves every routing table at once, so nothing new is
accepted or sent over it, but it is held until Timer F (`DEREGISTER_GRACE`) for that
answer, then released once. A set with nothing open over it goes at once, as before.
"""

from __future__ import annotations

from imsaka.cscf.pcscf import (
    DEREGISTER_GRACE,
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    ReleaseSecurityAssociations,
    Reply,
)
from imsaka.sip import make_response
from tests.cscf.test_pcscf_dialog_routing import (
    SCSCF,
    UE_C,
    _own_terminated_notify,
    _reparse,
    registered,
    ue_subscribe,
)

IMPI = "user1_private@home1.net"
# packet 13 grants 600000 s at t=3.0; the P-CSCF lets a registration go 30 s after
EXPIRY = 3.0 + 600000 + 30.0


def _sets(out) -> list:
    return [
        (type(a).__name__, a.sa.spi_ps, a.reason if hasattr(a, "reason") else "")
        for a in out
        if isinstance(a, ReleaseSecurityAssociations | HoldSecurityAssociations)
    ]


def _open_subscribe(p, inst, at: float) -> Forward:
    (fwd,) = p.receive_request(ue_subscribe(), Arrival(UE_C, spi=inst.sa.spi_ps), at)
    assert isinstance(fwd, Forward)
    return fwd


def _answer(p, fwd: Forward, at: float) -> list:
    ok = make_response(_reparse(fwd.message), 200, to_tag="s1", headers=[("Expires", "600000")])
    return p.receive_response(_reparse(ok), SCSCF, at)


def test_expiry_holds_the_set_a_request_waits_on_then_releases_it_once():
    p, inst, _ = registered()
    fwd = _open_subscribe(p, inst, EXPIRY - 5.0)
    out = p.handle_timer(EXPIRY)
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps, "")]
    (hold,) = [a for a in out if isinstance(a, HoldSecurityAssociations)]
    assert hold.until == EXPIRY + DEREGISTER_GRACE
    assert IMPI not in p.registrations and p.in_grace() == 1
    assert not set(inst.sa.inbound_spis) & set(p.by_spi)
    # nothing new is taken over it
    late = ue_subscribe("z9hG4bKsub2", **{"CSeq": "2 SUBSCRIBE"})
    (drop,) = p.receive_request(late, Arrival(UE_C, spi=inst.sa.spi_ps), EXPIRY + 1.0)
    assert isinstance(drop, DropInput)
    # the answer still goes back over the SA its request came on (before: SPI 0, lost)
    (reply,) = _answer(p, fwd, EXPIRY + 2.0)
    assert isinstance(reply, Reply) and reply.spi == inst.sa.spi_uc
    assert p.drops["reply-over-removed-sa"] == 0
    # Timer F has run: the set goes, once, with the expiry's reason
    assert not _sets(p.handle_timer(EXPIRY + DEREGISTER_GRACE - 1.0))
    out = p.handle_timer(EXPIRY + DEREGISTER_GRACE)
    assert _sets(out) == [("ReleaseSecurityAssociations", inst.sa.spi_ps, "registration expired")]
    assert p.in_grace() == 0 and not _sets(p.handle_timer(EXPIRY + 10 * DEREGISTER_GRACE))


def test_expiry_with_nothing_open_releases_at_once():
    p, inst, _ = registered()
    fwd = _open_subscribe(p, inst, EXPIRY - 20.0)
    _answer(p, fwd, EXPIRY - 19.0)  # answered before the expiry: nothing waits
    out = p.handle_timer(EXPIRY)
    assert _sets(out) == [("ReleaseSecurityAssociations", inst.sa.spi_ps, "registration expired")]
    assert p.in_grace() == 0


def test_network_deregistration_holds_the_set_for_the_ues_open_request():
    p, inst, acts = registered()
    fwd = _open_subscribe(p, inst, 9.0)
    out = p.receive_request(_own_terminated_notify(p, acts), Arrival(SCSCF), 10.0)
    assert _sets(out) == [("HoldSecurityAssociations", inst.sa.spi_ps, "")]
    assert IMPI not in p.registrations and p.in_grace() == 1
    (reply,) = _answer(p, fwd, 11.0)
    assert reply.spi == inst.sa.spi_uc
    out = p.handle_timer(10.0 + DEREGISTER_GRACE)
    assert _sets(out) == [
        (
            "ReleaseSecurityAssociations",
            inst.sa.spi_ps,
            "registration terminated (reg event)",
        )
    ]
    assert p.in_grace() == 0


def test_a_request_never_answered_leaves_nothing_after_timer_f():
    p, inst, _ = registered()
    _open_subscribe(p, inst, EXPIRY - 1.0)
    p.handle_timer(EXPIRY)
    p.handle_timer(EXPIRY + DEREGISTER_GRACE + 40.0)
    assert p.in_grace() == 0 and not p._open_by_impi and not p.by_spi
    assert p.open_transactions() == 0
