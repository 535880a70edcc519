"""Transaction state machines (RFC 3261 §17, RFC 6026) with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from imsaka.sip import LocalProtocolError, Request, make_response, parse_message
from imsaka.sip.transaction import (
    INVITE_CLIENT_TABLE,
    INVITE_SERVER_TABLE,
    NON_INVITE_CLIENT_TABLE,
    NON_INVITE_SERVER_TABLE,
    AckReceived,
    ClientTransaction,
    Dropped,
    Input,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    TransportError,
    server_key,
)


def request(method="OPTIONS", branch="z9hG4bKabc", sent_by="192.0.2.1:5060", cseq=1) -> Request:
    return Request(
        method,
        "sip:bob@example.net",
        [
            ("Via", f"SIP/2.0/UDP {sent_by};branch={branch}"),
            ("From", "<sip:alice@example.net>;tag=a1"),
            ("To", "<sip:bob@example.net>"),
            ("Call-ID", "call-1"),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
            ("Route", "<sip:proxy.example.net;lr>"),
        ],
    )


def layer(**kw) -> TransactionLayer:
    return TransactionLayer(reliable=lambda d: d == "tcp", **kw)


def run_until(lay: TransactionLayer, end: float) -> list[tuple[float, object]]:
    """Advance the fake clock deadline by deadline up to `end`; events with times."""
    out = []
    while (d := lay.next_deadline()) is not None and d <= end:
        lay.handle_timer(d)
        out += [(round(d, 6), e) for e in lay.events()]
    return out


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# -- non-INVITE client --------------------------------------------------------------


def test_non_invite_client_retransmits_with_e_and_times_out_with_f():
    lay = layer()
    tx = lay.send_request(request(), "udp", now=0.0)
    assert isinstance(tx, ClientTransaction) and tx.state is State.TRYING
    (first,) = lay.events()
    assert isinstance(first, Transmit) and first.destination == "udp"
    assert parse_message(first.data).method == "OPTIONS"
    timeline = run_until(lay, 100)
    sends = [t for t, e in timeline if isinstance(e, Transmit)]
    # E: T1, doubling, capped at T2 = 4 s; F = 64*T1 = 32 s
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    tail = [e for t, e in timeline if t == 32.0]
    assert isinstance(tail[0], TransactionTimeout) and tail[0].timer == "F"
    assert isinstance(tail[1], TransactionTerminated)
    assert len(lay) == 0 and lay.next_deadline() is None
    assert lay.counters["retransmissions"] == 10


def test_an_abandoned_client_sends_no_more_and_its_key_is_free_again():
    """`abandon` (a proxy takes the request to another instance of the next hop, with
    the same branch): no retransmission, no timeout, no event after it; a response to it
    is a stray; a new transaction with the same key gets the next response."""
    lay = layer()
    tx = lay.send_request(request(branch="z9hG4bKsame"), "udp", now=0.0)
    lay.events()
    run_until(lay, 2.0)  # E at 0.5 and 1.5
    assert lay.counters["retransmissions"] == 2
    lay.events()
    lay.abandon(tx.key)
    assert len(lay) == 0 and run_until(lay, 100.0) == []
    answer = make_response(parse_message(bytes(request(branch="z9hG4bKsame"))), 200)
    lay.receive_response(answer, "udp", 100.0)
    assert kinds(lay.events()) == ["StrayResponse"]
    again = lay.send_request(request(branch="z9hG4bKsame"), "udp2", now=100.0)
    assert again.key == tx.key
    lay.events()
    lay.receive_response(answer, "udp", 100.1)
    assert kinds(lay.events()) == ["ResponseReceived"]
    assert lay.counters["retransmissions"] == 2 and lay.counters["abandoned"] == 1


def test_non_invite_client_proceeding_uses_t2_and_completes():
    lay = layer()
    req = request()
    lay.send_request(req, "udp", 0.0)
    lay.events()
    lay.receive_response(make_response(req, 100), "udp", 0.2)
    (ev,) = lay.events()
    assert isinstance(ev, ResponseReceived) and ev.response.status == 100
    lay.handle_timer(0.5)  # E fires in Proceeding: next interval is T2
    assert kinds(lay.events()) == ["Transmit"]
    assert lay.next_deadline() == pytest.approx(4.5)
    ok = make_response(req, 200, to_tag="b1")
    lay.receive_response(ok, "udp", 1.0)
    (ev,) = lay.events()
    assert ev.response.status == 200
    tx = lay.client_transaction(("c", "z9hG4bKabc", "OPTIONS"))
    assert tx.state is State.COMPLETED
    lay.receive_response(ok, "udp", 1.1)  # retransmitted final: absorbed
    assert lay.events() == []
    assert lay.counters["absorbed"] == 1
    assert lay.next_deadline() == pytest.approx(6.0)  # K = T4
    lay.handle_timer(6.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


def test_non_invite_client_over_tcp_has_no_retransmissions_and_k_zero():
    lay = layer()
    req = request()
    lay.send_request(req, "tcp", 0.0)
    lay.events()
    assert lay.next_deadline() == 32.0  # only F
    lay.receive_response(make_response(req, 404), "tcp", 1.0)
    lay.events()
    assert lay.next_deadline() == 1.0  # K = 0 on reliable transports
    lay.handle_timer(1.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


# -- INVITE client ----------------------------------------------------------------


def test_invite_client_timer_a_doubles_without_cap_and_b_times_out():
    lay = layer()
    lay.send_request(request("INVITE"), "udp", 0.0)
    lay.events()
    timeline = run_until(lay, 100)
    sends = [t for t, e in timeline if isinstance(e, Transmit)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    timeout = [e for _, e in timeline if isinstance(e, TransactionTimeout)]
    assert timeout[0].timer == "B"


def test_invite_client_non_2xx_final_acks_inside_the_transaction():
    lay = layer()
    req = request("INVITE")
    lay.send_request(req, "udp", 0.0)
    lay.events()
    lay.receive_response(make_response(req, 180, to_tag="t9"), "udp", 0.1)
    assert kinds(lay.events()) == ["ResponseReceived"]
    busy = make_response(req, 486, to_tag="t9")
    lay.receive_response(busy, "udp", 0.3)
    ack_ev, resp_ev = lay.events()
    ack = parse_message(ack_ev.data)
    assert ack.method == "ACK" and ack.uri == req.uri
    assert ack.get_all("via") == req.get_all("via")[:1]
    assert ack.to.tag == "t9" and ack.from_ == req.from_ and ack.call_id == req.call_id
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.get_all("route") == req.get_all("route")
    assert resp_ev.response.status == 486
    # a retransmitted 486 is answered with the ACK again, not passed up
    lay.receive_response(busy, "udp", 1.0)
    (again,) = lay.events()
    assert isinstance(again, Transmit) and parse_message(again.data).method == "ACK"
    # Timer D = 32 s on UDP (32.3), due on the 2*T1 grid: never before, at most 1 s after
    assert lay.next_deadline() == pytest.approx(33.0)
    lay.handle_timer(32.3)
    assert lay.events() == []
    lay.handle_timer(33.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


def test_invite_client_2xx_goes_to_accepted_and_m():
    lay = layer()
    req = request("INVITE")
    lay.send_request(req, "udp", 0.0)
    lay.events()
    ok = make_response(req, 200, to_tag="t1")
    lay.receive_response(ok, "udp", 0.1)
    assert kinds(lay.events()) == ["ResponseReceived"]
    # RFC 6026: retransmitted 2xx (and forked 2xx) go to the TU
    lay.receive_response(ok, "udp", 0.6)
    assert kinds(lay.events()) == ["ResponseReceived"]
    assert lay.next_deadline() == pytest.approx(33.0)  # M = 64*T1 (32.1), on the grid
    lay.handle_timer(32.1)
    assert lay.events() == []
    lay.handle_timer(33.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


def test_client_transport_error():
    lay = layer()
    req = request()
    lay.send_request(req, "udp", 0.0)
    lay.events()
    lay.transport_error(("c", "z9hG4bKabc", "OPTIONS"), 0.1)
    assert kinds(lay.events()) == ["TransportError", "TransactionTerminated"]


def test_client_rejects_ack_and_duplicate_branch():
    lay = layer()
    with pytest.raises(LocalProtocolError):
        lay.send_request(request("ACK"), "udp", 0.0)
    lay.send_request(request(), "udp", 0.0)
    with pytest.raises(LocalProtocolError):
        lay.send_request(request(), "udp", 0.0)


# -- non-INVITE server ------------------------------------------------------------


def test_non_invite_server_absorbs_and_retransmits_final():
    lay = layer()
    req = request("REGISTER")
    tx = lay.receive_request(req, "udp", 0.0)
    (ev,) = lay.events()
    assert isinstance(ev, RequestReceived) and ev.request is req and ev.key == tx.key
    lay.receive_request(request("REGISTER"), "udp", 0.5)  # retransmission in Trying
    assert lay.events() == []
    tx.respond(make_response(req, 100), 0.6)
    assert kinds(lay.events()) == ["Transmit"]
    lay.receive_request(request("REGISTER"), "udp", 1.0)  # now the 100 is resent
    (ev,) = lay.events()
    assert parse_message(ev.data).status == 100
    final = make_response(req, 401, to_tag="s1")
    lay.respond(tx.key, final, 1.1)
    (ev,) = lay.events()
    assert parse_message(ev.data).status == 401 and tx.state is State.COMPLETED
    lay.receive_request(request("REGISTER"), "udp", 2.0)
    (ev,) = lay.events()
    assert parse_message(ev.data).status == 401
    with pytest.raises(LocalProtocolError):
        tx.respond(make_response(req, 200), 2.1)
    assert lay.next_deadline() == pytest.approx(34.0)  # J = 64*T1 (33.1), on the grid
    lay.handle_timer(33.1)
    assert lay.events() == []
    lay.handle_timer(34.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]
    with pytest.raises(LocalProtocolError):
        lay.respond(tx.key, final, 34)


def test_non_invite_server_tcp_j_zero():
    lay = layer()
    req = request()
    tx = lay.receive_request(req, "tcp", 0.0)
    lay.events()
    tx.respond(make_response(req, 200), 0.1)
    lay.events()
    lay.handle_timer(0.1)
    assert kinds(lay.events()) == ["TransactionTerminated"]


# -- INVITE server ----------------------------------------------------------------


def test_invite_server_sends_100_trying_and_g_h():
    lay = layer()
    req = request("INVITE")
    tx = lay.receive_request(req, "udp", 0.0)
    rr, trying = lay.events()
    assert isinstance(rr, RequestReceived) and parse_message(trying.data).status == 100
    lay.receive_request(request("INVITE"), "udp", 0.3)
    (ev,) = lay.events()
    assert parse_message(ev.data).status == 100  # retransmission answered with the last 1xx
    tx.respond(make_response(req, 486, to_tag="s1"), 1.0)
    lay.events()
    timeline = run_until(lay, 100)
    sends = [t for t, e in timeline if isinstance(e, Transmit)]
    # G: T1 doubling, capped at T2; H = 64*T1 after the final
    assert sends == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    timeout = [e for _, e in timeline if isinstance(e, TransactionTimeout)]
    assert timeout[0].timer == "H"
    assert kinds([e for _, e in timeline])[-1] == "TransactionTerminated"


def test_invite_server_ack_confirms_and_i_terminates():
    lay = layer()
    req = request("INVITE")
    tx = lay.receive_request(req, "udp", 0.0)
    lay.events()
    resp = make_response(req, 603, to_tag="s1")
    tx.respond(resp, 0.1)
    lay.events()
    ack = request("ACK")
    ack.set("CSeq", "1 ACK")
    ack.set("To", resp.get("to"))
    assert lay.receive_request(ack, "udp", 0.2) is tx
    assert tx.state is State.CONFIRMED and lay.events() == []
    lay.receive_request(ack, "udp", 0.3)  # absorbed
    assert lay.events() == []
    assert lay.next_deadline() == pytest.approx(6.0)  # I = T4 (5.2), on the grid
    lay.handle_timer(5.2)
    assert lay.events() == []
    lay.handle_timer(6.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


def test_invite_server_accepted_state_rfc6026():
    lay = layer()
    req = request("INVITE")
    tx = lay.receive_request(req, "udp", 0.0)
    lay.events()
    ok = make_response(req, 200, to_tag="s1")
    tx.respond(ok, 0.1)
    lay.events()
    assert tx.state is State.ACCEPTED
    lay.receive_request(request("INVITE"), "udp", 0.5)  # absorbed, not re-answered
    assert lay.events() == []
    tx.respond(ok, 0.6)  # the TU retransmits its 2xx itself
    assert kinds(lay.events()) == ["Transmit"]
    ack = request("ACK", branch="z9hG4bKabc")
    ack.set("CSeq", "1 ACK")
    lay.receive_request(ack, "udp", 0.7)
    (ev,) = lay.events()
    assert isinstance(ev, AckReceived)
    lay.handle_timer(32.1)  # L = 64*T1, due on the 2*T1 grid: not yet
    assert lay.events() == []
    lay.handle_timer(33.0)
    assert kinds(lay.events()) == ["TransactionTerminated"]


def test_invite_server_no_auto_trying():
    lay = layer(auto_trying=False)
    lay.receive_request(request("INVITE"), "udp", 0.0)
    assert kinds(lay.events()) == ["RequestReceived"]


# -- matching ---------------------------------------------------------------------


def test_matching_by_branch_sent_by_and_method():
    lay = layer()
    a = lay.receive_request(request(branch="z9hG4bK1"), "udp", 0)
    b = lay.receive_request(request(branch="z9hG4bK2"), "udp", 0)
    c = lay.receive_request(request(branch="z9hG4bK1", sent_by="192.0.2.2"), "udp", 0)
    d = lay.receive_request(request("INVITE", branch="z9hG4bK1"), "udp", 0)
    assert len({a.key, b.key, c.key, d.key}) == 4
    cancel = request("CANCEL", branch="z9hG4bK1")
    e = lay.receive_request(cancel, "udp", 0)
    assert e.key != d.key and lay.find_cancel_target(cancel) is d
    # ACK matches the INVITE transaction
    ack = request("ACK", branch="z9hG4bK1")
    ack.set("CSeq", "1 ACK")
    assert server_key(ack) == d.key


def test_unmatched_ack_goes_to_the_tu():
    lay = layer()
    ack = request("ACK", branch="z9hG4bKnew")
    ack.set("CSeq", "1 ACK")
    assert lay.receive_request(ack, "udp", 0) is None
    (ev,) = lay.events()
    assert isinstance(ev, RequestReceived) and ev.key is None


def test_rfc2543_fallback_matching():
    lay = layer()
    old = request("INVITE", branch="oldstyle1")
    tx = lay.receive_request(old, "udp", 0.0)
    assert tx.key[0] == "s2543"
    lay.events()
    lay.receive_request(request("INVITE", branch="oldstyle1"), "udp", 0.1)
    assert len(lay) == 1  # the retransmission matched
    lay.events()
    resp = make_response(old, 486, to_tag="x1")
    tx.respond(resp, 0.2)
    lay.events()
    wrong = request("ACK", branch="oldstyle1")
    wrong.set("CSeq", "1 ACK")
    wrong.set("To", "<sip:bob@example.net>;tag=other")
    lay.receive_request(wrong, "udp", 0.3)
    assert isinstance(lay.events()[0], Dropped) and tx.state is State.COMPLETED
    right = request("ACK", branch="oldstyle1")
    right.set("CSeq", "1 ACK")
    right.set("To", resp.get("to"))
    lay.receive_request(right, "udp", 0.4)
    assert tx.state is State.CONFIRMED
    # without any branch at all
    nob = request()
    nob.set("Via", "SIP/2.0/UDP 192.0.2.1:5060")
    assert lay.receive_request(nob, "udp", 0).key[0] == "s2543"


def test_response_matching_and_strays():
    lay = layer()
    req = request("INVITE")
    lay.send_request(req, "udp", 0.0)
    lay.events()
    # same branch but another method (the CANCEL's response) does not match
    other = make_response(req, 200)
    other.set("CSeq", "1 CANCEL")
    lay.receive_response(other, "udp", 0.1)
    (ev,) = lay.events()
    assert isinstance(ev, StrayResponse)
    bad = make_response(req, 200)
    bad.set("Via", "SIP/2.0/UDP h")  # no branch
    lay.receive_response(bad, "udp", 0.1)
    (ev,) = lay.events()
    assert isinstance(ev, Dropped) and "Via" in ev.reason


def test_capacity_limit():
    lay = layer(max_transactions=2)
    lay.receive_request(request(branch="z9hG4bK1"), "udp", 0)
    lay.receive_request(request(branch="z9hG4bK2"), "udp", 0)
    with pytest.raises(LocalProtocolError):
        lay.receive_request(request(branch="z9hG4bK3"), "udp", 0)
    assert lay.counters["overload"] == 1


def test_timer_config_validation():
    with pytest.raises(ValueError, match="t1"):
        TimerConfig(t1=0)
    with pytest.raises(ValueError, match="t2"):
        TimerConfig(t1=5, t2=1)
    ue = layer(config=TimerConfig.ims_ue())
    ue.send_request(request(), "udp", 0.0)
    assert ue.next_deadline() == 2.0
    ue.handle_timer(200)
    assert [type(e).__name__ for e in ue.events()][-2:] == [
        "TransactionTimeout",
        "TransactionTerminated",
    ]
    lay = layer(config=TimerConfig(t1=0.01, t2=0.04, t4=0.05))
    lay.send_request(request(), "udp", 0.0)
    assert lay.next_deadline() == pytest.approx(0.01)


# -- every state x every input of every table ------------------------------------

TABLES = [
    ("client", "INVITE", INVITE_CLIENT_TABLE),
    ("client", "OPTIONS", NON_INVITE_CLIENT_TABLE),
    ("server", "INVITE", INVITE_SERVER_TABLE),
    ("server", "OPTIONS", NON_INVITE_SERVER_TABLE),
]
TU_INPUTS = {Input.SEND_1XX, Input.SEND_2XX, Input.SEND_FINAL}


def _feed(tx, inp: Input, req: Request) -> None:
    lay = tx._layer
    status = {
        Input.RECV_1XX: 180,
        Input.SEND_1XX: 180,
        Input.RECV_2XX: 200,
        Input.SEND_2XX: 200,
    }.get(inp, 486)
    if inp.name.startswith("TIMER"):
        interval = (tx._intervals or {}).get(inp, 0.5)
        tx._set_timer(inp, 10.0 - interval, interval)
        tx.handle_timer(10.0)
    elif inp is Input.TRANSPORT_ERROR:
        tx.transport_error(10.0)
    elif inp in TU_INPUTS and isinstance(tx, ServerTransaction):
        tx.respond(make_response(req, status, to_tag="s"), 10.0)
    elif inp in TU_INPUTS:
        tx._input(inp, 10.0, make_response(req, status, to_tag="s"))
    elif inp is Input.RECV_ACK:
        ack = request("ACK")
        ack.set("CSeq", "1 ACK")
        tx._input(inp, 10.0, ack)
    elif inp is Input.RECV_REQUEST:
        tx._input(inp, 10.0, req)
    else:
        tx._input(inp, 10.0, make_response(req, status, to_tag="s"))
    assert lay is tx._layer


@pytest.mark.parametrize(
    ("side", "method", "table", "state", "inp"),
    [
        (side, method, table, state, inp)
        for side, method, table in TABLES
        for state, inp in itertools.product(State, Input)
        if state is not State.TERMINATED
    ],
)
def test_every_state_and_input(side, method, table, state, inp):
    lay = layer()
    req = request(method)
    if side == "client":
        tx = lay.send_request(req, "udp", 0.0)
    else:
        tx = lay.receive_request(req, "udp", 0.0)
        tx.last_response = make_response(req, 180)
    assert isinstance(tx, ClientTransaction | ServerTransaction)
    tx.state = state
    lay.events()
    entry = table.get((state, inp))
    if entry is None:
        if inp in TU_INPUTS:
            with pytest.raises(LocalProtocolError):
                _feed(tx, inp, req)
        else:
            _feed(tx, inp, req)
            assert tx.state is state
            assert any(isinstance(e, Dropped) for e in lay.events())
        return
    _feed(tx, inp, req)
    assert tx.state is entry[1] or (inp.name.startswith("TIMER") and tx.state is State.TERMINATED)
    if entry[1] is State.TERMINATED:
        assert TransactionTerminated(tx.key) in lay.events()
        assert lay.client_transaction(tx.key) is None and lay.server_transaction(tx.key) is None


def test_unused_names_are_exported():
    # the event classes the endpoint handles are all reachable
    assert {TransportError, AckReceived, StrayResponse}


def test_invite_client_timer_c_in_proceeding():
    lay = layer()
    req = request("INVITE")
    lay.send_request(req, "udp", 0.0)
    lay.events()
    lay.receive_response(make_response(req, 180, to_tag="t"), "udp", 0.1)
    lay.events()
    assert lay.next_deadline() == pytest.approx(180.1)
    lay.receive_response(make_response(req, 183, to_tag="t"), "udp", 100.0)  # re-armed
    lay.events()
    assert lay.next_deadline() == pytest.approx(280.0)
    lay.handle_timer(280.0)
    timeout, terminated = lay.events()
    assert isinstance(timeout, TransactionTimeout) and timeout.timer == "C"
    assert isinstance(terminated, TransactionTerminated) and len(lay) == 0


def test_retransmissions_are_the_bytes_first_sent():
    lay = layer()
    req = request()
    lay.send_request(req, "udp", 0.0)
    (first,) = lay.events()
    req.set("Subject", "edited after sending")  # the TU must not change what goes out
    lay.handle_timer(0.5)
    (again,) = lay.events()
    assert again.data == first.data
    srv = layer()
    sreq = request("REGISTER")
    tx = srv.receive_request(sreq, "udp", 0.0)
    srv.events()
    resp = make_response(sreq, 200)
    tx.respond(resp, 0.1)
    (sent,) = srv.events()
    resp.set("Subject", "edited")
    srv.receive_request(request("REGISTER"), "udp", 0.2)
    (resent,) = srv.events()
    assert resent.data == sent.data


# -- what a finished transaction keeps (memory: up to 32 s per request) -----------


def test_completed_server_transaction_keeps_only_the_final_bytes():
    lay = layer()
    req = request("REGISTER")
    tx = lay.receive_request(req, "udp", 0.0)
    lay.events()
    tx.respond(make_response(req, 100), 0.1)
    lay.events()
    assert tx.request is req  # Trying/Proceeding: the TU may still need it
    final = make_response(req, 401, to_tag="s1")
    tx.respond(final, 0.2)
    (sent,) = lay.events()
    assert tx.state is State.COMPLETED
    assert tx.request is None and tx.last_response is None and tx._intervals is None
    assert tx.last_status == 401
    # §17.2.2: a retransmitted request is recognised by the key and gets the same bytes
    lay.receive_request(request("REGISTER"), "udp", 1.0)
    (again,) = lay.events()
    assert isinstance(again, Transmit) and again.data == sent.data and again.message is None
    assert again.destination == sent.destination


def test_completed_invite_server_retransmits_bytes_and_matches_ack():
    lay = layer()
    req = request("INVITE")
    tx = lay.receive_request(req, "udp", 0.0)
    lay.events()
    tx.respond(make_response(req, 486, to_tag="s2"), 0.1)
    (sent,) = [e for e in lay.events() if isinstance(e, Transmit)]
    assert tx.request is None and tx.last_response is None
    lay.handle_timer(0.6)  # Timer G
    (again,) = lay.events()
    assert again.data == sent.data
    ack = request("ACK")
    ack.set("CSeq", "1 ACK")
    lay.receive_request(ack, "udp", 0.7)
    assert tx.state is State.CONFIRMED


def test_completed_client_transactions_keep_only_the_key():
    lay = layer()
    req = request("OPTIONS")
    tx = lay.send_request(req, "udp", 0.0)
    lay.events()
    lay.receive_response(make_response(req, 200, to_tag="t"), "udp", 0.1)
    assert tx.state is State.COMPLETED and tx.last_status == 200
    assert tx.request is None and tx._request_wire is None and tx._intervals is None
    inv = request("INVITE", branch="z9hG4bKinv")
    itx = lay.send_request(inv, "udp", 0.0)
    lay.events()
    busy = make_response(inv, 486, to_tag="t9")
    lay.receive_response(busy, "udp", 0.2)
    ack = lay.events()[0]
    assert itx.request is None and itx._request_wire is None
    lay.receive_response(busy, "udp", 0.5)
    (again,) = lay.events()
    assert again.data == ack.data  # the same ACK, from its bytes
