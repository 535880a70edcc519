"""A client and a server transaction layer wired back to back in memory over a lossy
"UDP" channel, with a fake clock: whatever the loss pattern (hypothesis), the server's
TU sees each request once, and the client ends with the final response or a timeout
– never both, never neither."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.sip import Request, make_response, parse_message
from imsaka.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTimeout,
    Transmit,
)


def request(method: str) -> Request:
    return Request(
        method,
        "sip:registrar.home1.net",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKpair"),
            ("From", "<sip:ue@home1.net>;tag=u"),
            ("To", "<sip:ue@home1.net>"),
            ("Call-ID", "pair"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
    )


def run(method: str, losses: list[bool], answer_delay: float, status: int) -> dict:
    client = TransactionLayer()
    server = TransactionLayer()
    loss = iter(losses)
    in_flight: list[tuple[float, str, bytes]] = []  # (arrival, to, data)
    now = 0.0
    tu_requests = []
    finals = []
    timeouts = []
    pending_answer: list[tuple[float, tuple, Request]] = []

    def pump():
        for side, layer in (("server", client), ("client", server)):
            for ev in layer.events():
                if isinstance(ev, Transmit):
                    if not next(loss, False):
                        in_flight.append((now + 0.01, side, ev.data))
                elif isinstance(ev, RequestReceived) and side == "client" and ev.key is not None:
                    tu_requests.append(ev.request)
                    pending_answer.append((now + answer_delay, ev.key, ev.request))
                elif isinstance(ev, ResponseReceived) and ev.response.status >= 200:
                    finals.append(ev.response.status)
                elif isinstance(ev, TransactionTimeout) and side == "server":
                    timeouts.append(ev.timer)

    client.send_request(request(method), "server", now)
    pump()
    for _ in range(10_000):
        candidates = [t for t, _, _ in in_flight] + [t for t, _, _ in pending_answer]
        for d in (client.next_deadline(), server.next_deadline()):
            if d is not None:
                candidates.append(d)
        if not candidates:
            break
        now = min(candidates)
        for item in [i for i in in_flight if i[0] <= now]:
            in_flight.remove(item)
            _, to, data = item
            msg = parse_message(data)
            if to == "server":
                if msg.__class__ is Request:
                    server.receive_request(msg, "client", now)
            else:
                client.receive_response(msg, "server", now)
        for item in [p for p in pending_answer if p[0] <= now]:
            pending_answer.remove(item)
            _, key, req = item
            if server.server_transaction(key) is not None:
                server.respond(key, make_response(req, status, to_tag="s"), now)
        client.handle_timer(now)
        server.handle_timer(now)
        pump()
    return {
        "tu": tu_requests,
        "finals": finals,
        "timeouts": timeouts,
        "client": client,
        "server": server,
        "now": now,
    }


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["REGISTER", "INVITE"]),
    st.lists(st.booleans(), max_size=40),
    st.floats(0.0, 3.0),
    st.sampled_from([200, 401, 486]),
)
def test_lossy_channel(method, losses, answer_delay, status):
    out = run(method, losses, answer_delay, status)
    assert len(out["tu"]) <= 1  # retransmissions are absorbed by the server transaction
    if out["finals"]:
        assert not out["timeouts"]
        assert set(out["finals"]) == {status}
        if not (method == "INVITE" and status == 200):
            assert len(out["finals"]) == 1  # non-2xx finals reach the TU once
    else:
        # B/F: nothing came back; C: a 1xx came, the final was lost (RFC 6026: the
        # server does not retransmit a 2xx, its TU does)
        assert out["timeouts"] in (["B"], ["F"], ["C"])
    # everything ends: no transaction lingers once all timers ran out
    assert len(out["client"]) == 0 and len(out["server"]) == 0


def test_no_loss_register_takes_one_round_trip():
    out = run("REGISTER", [], 0.0, 200)
    assert out["finals"] == [200] and len(out["tu"]) == 1


def test_total_loss_times_out():
    out = run("REGISTER", [True] * 40, 0.0, 200)
    assert out["finals"] == [] and out["timeouts"] == ["F"] and out["tu"] == []
