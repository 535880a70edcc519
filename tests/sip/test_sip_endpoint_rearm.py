"""The endpoint re-arms its one loop timer without a full look at the transaction
layer while nothing armed since is due earlier (RFC 3261 §17 timers, the 500 after
`answer_timeout`): a deadline armed later than the wake-up keeps it, one armed
earlier moves it, whether a transaction timer or an unanswered request's timeout."""

from __future__ import annotations

from imsaka.sip import Request
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transaction import TimerConfig
from tests.unit.test_sipcpu_timers import FakeLoop, FakeUdp


def options(n: int) -> bytes:
    return Request(
        "OPTIONS",
        "sip:home1.net",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKrearm{n}"),
            ("From", "<sip:ue@home1.net>;tag=r1"),
            ("To", "<sip:ue@home1.net>"),
            ("Call-ID", f"rearm-{n}"),
            ("CSeq", f"{n} OPTIONS"),
        ],
    ).to_bytes()


def test_an_unanswered_request_due_before_the_armed_wake_up_moves_it_earlier():
    timers = TimerConfig()  # Timer J 32 s
    ep = SipEndpoint(timers=timers, answer_timeout=2.0)
    clock = FakeLoop()
    clock.now = 50.02
    ep._loop = clock
    t = FakeUdp()
    ep.add_transport(t)
    parked: list = []
    ep.set_request_handler(
        lambda req, tx: tx.reply(200) if req.cseq.seq == 1 else parked.append(tx)
    )
    t.receiver(options(1), ("127.0.0.1", 5062), t)  # answered: J due in 32 s
    (j_wake,) = (h.when for h in clock.armed("_on_timer"))
    assert j_wake >= clock.now + 64 * timers.t1
    t.receiver(options(2), ("127.0.0.1", 5062), t)  # parked: its 500 due in 2 s
    (wake,) = (h.when for h in clock.armed("_on_timer"))
    assert clock.now + 2.0 <= wake <= clock.now + 2.0 + timers.t1 / 10
    t.receiver(options(3), ("127.0.0.1", 5062), t)  # due later than the wake-up: kept
    assert [h.when for h in clock.armed("_on_timer")] == [wake]
    assert len(parked) == 2 and len(t.sent) == 1


def test_a_request_answered_while_a_wake_up_is_armed_keeps_it():
    ep = SipEndpoint(timers=TimerConfig())
    clock = FakeLoop()
    clock.now = 50.02
    ep._loop = clock
    t = FakeUdp()
    ep.add_transport(t)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    for n in range(1, 4):  # each J later than the first one's wake-up
        clock.now += 0.2
        t.receiver(options(n), ("127.0.0.1", 5062), t)
    assert len(clock.armed("_on_timer")) == 1 and len(clock.handles) == 1
    assert len(t.sent) == 3 and len(ep.layer) == 3
