"""The SIP endpoint's timer wake-ups fall on a grid of T1/10, and the timers that only
end a transaction (D, I, J, K, L, M) on a grid of 2*T1: the Timer J of the transactions
finished within one such step ends them all in one wake-up, none early; the
answer timeout of requests the application has not answered rides on the same wake-up
(no loop timer per request); a wake-up armed earlier than needed is kept."""

from __future__ import annotations

from imsaka.sip import Request
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.proxy import push_via
from imsaka.sip.transaction import TimerConfig


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float, callback, args) -> None:
        self.loop, self.when, self.callback, self.args = loop, when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what the endpoint's receive path asks of its loop, with a clock we set."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback, *args) -> FakeHandle:
        h = FakeHandle(self, when, callback, args)
        self.handles.append(h)
        return h

    def call_later(self, delay: float, callback, *args) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def fire(self, handle: FakeHandle) -> None:
        self.handles.remove(handle)
        self.now = handle.when
        handle.callback(*handle.args)

    def armed(self, callback_name: str) -> list[FakeHandle]:
        return [
            h
            for h in self.handles
            if not h.cancelled and getattr(h.callback, "__name__", "") == callback_name
        ]


class FakeUdp:
    name = "udp"
    reliable = False
    local_address = ("127.0.0.1", 5060)

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, addr) -> None:
        self.sent.append(data)

    def set_receiver(self, receiver) -> None:
        self.receiver = receiver

    def set_error_handler(self, handler) -> None:
        pass


def register(n: int) -> bytes:
    return Request(
        "REGISTER",
        "sip:home1.net",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKgrid{n}"),
            ("From", "<sip:ue@home1.net>;tag=u1"),
            ("To", "<sip:ue@home1.net>"),
            ("Call-ID", f"grid-{n}"),
            ("CSeq", f"{n} REGISTER"),
        ],
    ).to_bytes()


def answering_endpoint(timers: TimerConfig) -> tuple[SipEndpoint, FakeLoop, FakeUdp]:
    """An endpoint on a fake loop that answers every request 200 at once."""
    ep = SipEndpoint(timers=timers)
    loop = FakeLoop()
    ep._loop = loop
    t = FakeUdp()
    ep.add_transport(t)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    return ep, loop, t


def test_timer_j_of_one_grid_step_ends_in_one_wake_up_never_early():
    timers = TimerConfig()  # T1 0.5 s: Timer J 32 s, grid 50 ms
    ep, loop, t = answering_endpoint(timers)
    start = loop.now = 100.01  # inside a grid step (a grid point is its own wake-up)
    for n in range(5):  # answered 1 ms apart: Timer J due 32.000 .. 32.004 s later
        loop.now = start + n * 0.001
        t.receiver(register(n), ("127.0.0.1", 5062), t)
    assert len(t.sent) == 5 and len(ep.layer) == 5
    (wake,) = loop.armed("_on_timer")
    first_due = start + 64 * timers.t1
    # never early; on the 2*T1 grid of transaction-ending timers (TimerConfig.end_at)
    assert first_due <= wake.when <= timers.end_at(first_due) + timers.t1 / 10
    # one wake-up ends all five (each due by then); before the grid it ended one
    loop.fire(wake)
    assert len(ep.layer) == 0
    assert not loop.armed("_on_timer")


def test_end_timers_fall_on_a_grid_of_two_t1_never_early():
    timers = TimerConfig()
    for due in (0.0, 32.0, 32.001, 32.999, 133.3, 1e6 + 0.25):
        at = timers.end_at(due)
        assert due <= at < due + 2 * timers.t1
        assert at % (2 * timers.t1) == 0
    ue = TimerConfig.ims_ue()  # T1 2 s: a 4 s grid
    assert ue.end_at(129.0) == 132.0


def test_a_second_of_requests_ends_in_at_most_two_wake_ups():
    # 100 requests/s answered over one second: their Timer J (32 s later) used to wake
    # the loop once per T1/10 step (20 a second); on the 2*T1 grid, once or twice
    timers = TimerConfig()
    ep, loop, t = answering_endpoint(timers)
    for n in range(100):
        loop.now = 200.005 + n * 0.01
        t.receiver(register(n), ("127.0.0.1", 5062), t)
    assert len(ep.layer) == 100
    wake_ups = 0
    while len(ep.layer):
        (wake,) = loop.armed("_on_timer")
        loop.fire(wake)
        wake_ups += 1
    assert wake_ups <= 2
    assert loop.now <= timers.end_at(201.0 + 64 * timers.t1) + timers.t1 / 10


def test_a_timer_never_fires_before_its_deadline():
    timers = TimerConfig()
    ep, loop, t = answering_endpoint(timers)
    starts = (100.01, 100.02, 100.03, 100.3, 101.3)
    for n, at in enumerate(starts):
        loop.now = at
        t.receiver(register(n), ("127.0.0.1", 5062), t)
    ends = sorted(at + 64 * timers.t1 for at in starts)
    wake_ups = 0
    while ep.layer.pending() or len(ep.layer):
        (wake,) = loop.armed("_on_timer")
        due = [e for e in ends if e <= wake.when]
        assert due, "a wake-up with nothing due"
        assert wake.when <= timers.end_at(min(ends)) + timers.t1 / 10
        loop.fire(wake)
        ends = [e for e in ends if e > wake.when]
        assert len(ep.layer) == len(ends)
        wake_ups += 1
    assert wake_ups == 2  # the first four in one 2*T1 step (J by 133 s), then the last


def parking_endpoint(timers: TimerConfig) -> tuple[SipEndpoint, FakeLoop, FakeUdp, list]:
    """An endpoint on a fake loop whose application answers only when the test says."""
    ep = SipEndpoint(timers=timers)
    loop = FakeLoop()
    ep._loop = loop
    t = FakeUdp()
    ep.add_transport(t)
    parked: list = []
    ep.set_request_handler(lambda req, tx: parked.append(tx))
    return ep, loop, t, parked


def test_a_request_answered_later_arms_no_loop_timer_of_its_own():
    # the 500 for an application that never answers is served by the endpoint's one
    # wake-up: no loop timer made (and cancelled) per request
    ep, loop, t, parked = parking_endpoint(TimerConfig())
    for n in range(5):
        loop.now = 100.01 + n * 0.001
        t.receiver(register(n), ("127.0.0.1", 5062), t)
    assert len(loop.handles) == 1 and loop.armed("_on_timer")
    assert len(ep._awaiting) == 5
    for tx in parked:
        tx.reply(200)
    assert len(t.sent) == 5 and not ep._awaiting
    # answered: one wake-up moved earlier, to their Timer J (32 s, before the 37 s of
    # the answer timeout), for all five
    (wake,) = loop.armed("_on_timer")
    assert len(loop.handles) == 2
    assert wake.when <= TimerConfig().end_at(100.01 + 64 * 0.5) + 0.05


def test_an_unanswered_request_gets_500_after_the_answer_timeout_never_before():
    timers = TimerConfig()
    ep, loop, t, parked = parking_endpoint(timers)
    loop.now = 100.01
    t.receiver(register(1), ("127.0.0.1", 5062), t)
    loop.now = 100.02
    t.receiver(register(2), ("127.0.0.1", 5062), t)
    parked[1].reply(200)  # the second is answered; the first never is
    due = 100.01 + ep.answer_timeout
    while not any(b.startswith(b"SIP/2.0 500") for b in t.sent):
        (wake,) = loop.armed("_on_timer")
        loop.fire(wake)
        assert loop.now <= due + timers.t1 / 10
    assert loop.now >= due
    assert ep.counters["dropped: no answer from the application"] == 1
    assert not ep._awaiting and not ep._answer_due
    assert sum(b.startswith(b"SIP/2.0 500") for b in t.sent) == 1


def test_an_early_wake_up_is_kept_not_moved_later():
    # a client transaction answered before its Timer E leaves the wake-up for E armed:
    # it finds nothing due and arms again, instead of a new loop timer per message
    timers = TimerConfig()
    ep, loop, t = answering_endpoint(timers)
    loop.now = 100.01
    t.receiver(register(1), ("127.0.0.1", 5062), t)  # answered: Timer J in 32 s
    (j_wake,) = loop.armed("_on_timer")
    req = Request(
        "OPTIONS",
        "sip:peer.example.com",
        [
            ("From", "<sip:a@home1.net>;tag=1"),
            ("To", "<sip:b@home1.net>"),
            ("Call-ID", "early-1"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    push_via(req, "UDP", "127.0.0.1", 5060, branch="z9hG4bKearly1")
    ep.layer.send_request(req, (t, ("127.0.0.1", 5070)), loop.now)
    ep._drain()  # Timer E due in T1: the wake-up moves earlier
    (e_wake,) = loop.armed("_on_timer")
    assert j_wake.cancelled and e_wake.when <= loop.now + timers.t1 + timers.t1 / 10
    answer = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKearly1\r\n"
        b"From: <sip:a@home1.net>;tag=1\r\nTo: <sip:b@home1.net>;tag=2\r\n"
        b"Call-ID: early-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    t.receiver(answer, ("127.0.0.1", 5070), t)
    assert loop.armed("_on_timer") == [e_wake]  # kept, though nothing is due then
    loop.fire(e_wake)
    (next_wake,) = loop.armed("_on_timer")  # armed again for what is due next
    assert next_wake.when > e_wake.when
