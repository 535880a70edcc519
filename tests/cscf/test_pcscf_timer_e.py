"""P-CSCF core (sans-I/O): its own client transactions retransmit over UDP (RFC 3261
§17.1.2.2, Timer E) and its server transactions absorb the retransmissions that reach
them meanwhile (§17.2.2), so each hop recovers its own losses.

Covered here: the P-CSCF's own reg-event SUBSCRIBE (TS 24.229 §5.2.3), which nothing
else would send again, and a request of the core's taken to the UE, sent again only
over an SA set the P-CSCF still has. The UE's own requests: `tests/e2e/test_pcscf_rereg.py`
(`test_retransmission_in_flight_is_absorbed_and_timer_e_sends_the_first_copy`).
"""

from __future__ import annotations

from imsaka.cscf.pcscf import Arrival, Forward, Reply
from imsaka.sip import make_response, parse_message
from tests.cscf.test_pcscf_dialog_routing import SCSCF, scscf_notify
from tests.cscf.test_pcscf_superseded_set import IMPI, _reauthenticated, _released
from tests.e2e.test_pcscf_core import core
from tests.e2e.test_pcscf_rereg import _registered

OTHER_OFFER = "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=555; spi-s=666; port-c=3335; port-s=1357"


def _sent(actions, kind=Forward) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_own_reg_subscribe_is_sent_again_until_its_answer():
    p = core()
    _registered(p)  # the 200 OK at 3.0 sent the SUBSCRIBE; no answer yet
    subscribe = next(c.forward for c in p.pending.values() if getattr(c, "kind", "") == "subscribe")
    assert subscribe.message.method == "SUBSCRIBE"
    assert p.next_deadline() == 3.5
    assert _sent(p.handle_timer(3.5)) == [subscribe]
    assert _sent(p.handle_timer(4.5)) == [subscribe]  # 2·T1 later
    ok = make_response(parse_message(subscribe.message.to_bytes()), 200, to_tag="reg")
    assert p.receive_response(parse_message(ok.to_bytes()), SCSCF, 4.6) == []
    assert p.counters["reg-subscribed"] == 1
    assert _sent(p.handle_timer(6.5)) == []  # answered: Timer E stopped
    assert p.counters["retransmitted"] == 2


def test_request_to_the_ue_is_sent_again_over_its_newest_set():
    p = core()
    old, server, over_old = _registered(p)
    p.pending.clear()  # (the P-CSCF's own SUBSCRIBE: not this test's)
    (notify,) = _sent(p.receive_request(scscf_notify(), Arrival(SCSCF), 5.0), Reply)
    assert notify.spi == old.spi_us
    # the S-CSCF's retransmission is absorbed; ours goes at T1 over the same SA
    assert p.receive_request(scscf_notify(), Arrival(SCSCF), 5.3) == []
    assert _sent(p.handle_timer(5.5), Reply) == [notify]
    # a re-authentication moves the UE to a new set, and the UE deletes the old one
    # once our 200 OK over the new one reaches it (TS 33.203 §7.4): a copy of ours lost
    # before that is sent again over the new set (found by lifecycle_chaos seed 9701:
    # the NOTIFY went on into the SPI the UE had deleted until Timer F)
    new, _ = _reauthenticated(p, server, over_old, 6.0)
    assert p.registrations[IMPI].previous.spi_ps == old.spi_ps
    (again,) = _sent(p.handle_timer(6.5), Reply)
    assert again.message is notify.message
    assert (again.spi, again.over, again.destination) == (
        new.spi_us,
        new.spi_ps,
        (new.ue_host, new.port_us),
    )
    assert p.counters["retransmitted-over-new-set"] == 1
    # a second one replaces that set too: the next copy takes the newest
    new_server = p.registrations[IMPI].security_server[0]
    over_new = Arrival(("127.0.0.1", 3333), spi=new.spi_ps)
    newest, acts = _reauthenticated(p, new_server, over_new, 7.0, OTHER_OFFER, 3335)
    assert [r.sa.spi_ps for r in _released(acts)] == [old.spi_ps]
    (third,) = _sent(p.handle_timer(12.0), Reply)
    assert third.spi == newest.spi_us and p.counters["retransmitted-over-new-set"] == 2
    # the UE's answer, over the newest set, ends it
    ok = make_response(parse_message(notify.message.to_bytes()), 200)
    ue_port_s = (newest.ue_host, newest.port_us)
    out = p.receive_response(parse_message(ok.to_bytes()), ue_port_s, 12.1, newest.spi_pc)
    assert [type(a).__name__ for a in out] == ["Forward"]
    assert _sent(p.handle_timer(20.0), Reply) == []
