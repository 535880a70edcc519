"""Sans-I/O peer: RFC 6733 §5.6 state table, CER/CEA, DWR/DWA (RFC 3539), DPR/DPA,
duplicate detection, hostile input. In-memory pairs and a fake clock; no sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.diameter import codec, cx
from imsaka.diameter import peer as P
from imsaka.diameter.errors import LocalProtocolError
from tests.diameter.helpers import maa_for, mar

CLIENT, SERVER = "scscf.ims.test", "hss.ims.test"
TW = 10.0


def make(initiator: bool, **cfg) -> P.PeerConnection:
    host = CLIENT if initiator else SERVER
    config = P.PeerConfig(host, "ims.test", watchdog_interval=TW, **cfg)
    return P.PeerConnection(
        config,
        initiator=initiator,
        now=0.0,
        allowed_hosts={CLIENT},
        expected_host=SERVER if initiator else None,
        rng=random.Random(7),
    )


def pump(a: P.PeerConnection, b: P.PeerConnection, now: float) -> None:
    for _ in range(10):
        moved = False
        for x, y in ((a, b), (b, a)):
            for m in x.messages_to_send():
                moved = True
                y.receive_data(m, now)
        if not moved:
            return


def opened_pair() -> tuple[P.PeerConnection, P.PeerConnection]:
    a, b = make(True), make(False)
    a.connection_made(0.0)
    pump(a, b, 0.0)
    assert a.state is P.PeerState.I_OPEN and b.state is P.PeerState.R_OPEN
    a.pop_events()
    b.pop_events()
    return a, b


def decoded(conn: P.PeerConnection) -> list[codec.Message]:
    return [codec.decode_message(m) for m in conn.messages_to_send()]


def test_capabilities_exchange_contents():
    a, b = make(True), make(False)
    a.connection_made(0.0)
    [cer] = decoded(a)
    assert cer.code == 257 and cer.is_request
    b.receive_data(cer.encode(), 0.0)
    [cea] = decoded(b)
    assert cea.find(codec.AVP_RESULT_CODE).u32 == 2001
    assert cea.find(codec.AVP_ORIGIN_HOST).text == SERVER
    assert cea.find(codec.AVP_HOST_IP_ADDRESS).address == "127.0.0.1"
    assert cea.find(codec.AVP_PRODUCT_NAME).text == "imsaka"
    assert cea.find(codec.AVP_VENDOR_ID) is not None
    assert cea.find(codec.AVP_SUPPORTED_VENDOR_ID).u32 == 10415
    vsai = cea.find(codec.AVP_VENDOR_SPECIFIC_APPLICATION_ID).group
    assert [(x.code, x.u32) for x in vsai] == [(266, 10415), (258, 16777216)]
    [ev] = b.pop_events()
    assert isinstance(ev, P.PeerOpened) and ev.remote.origin_host == CLIENT
    a.receive_data(cea.encode(), 0.0)
    [ev] = a.pop_events()
    assert isinstance(ev, P.PeerOpened) and ev.remote.auth_application_ids == {16777216}


def _cer(origin_host=CLIENT, *, with_ip=True, apps=(16777216,), extra=()) -> bytes:
    avps = []
    if origin_host is not None:
        avps.append(codec.ORIGIN_HOST(origin_host))
    avps.append(codec.ORIGIN_REALM("ims.test"))
    if with_ip:
        avps.append(codec.HOST_IP_ADDRESS("127.0.0.1"))
    avps += [codec.VENDOR_ID(0), codec.PRODUCT_NAME("kamailio")]
    avps += [
        codec.VENDOR_SPECIFIC_APPLICATION_ID([codec.VENDOR_ID(10415), codec.AUTH_APPLICATION_ID(x)])
        for x in apps
    ]
    avps += list(extra)
    return codec.Message(257, 0x80, 0, 1, 2, tuple(avps)).encode()


def test_unknown_peer_refused_3010_then_closed():
    b = make(False)
    b.receive_data(_cer("intruder.example"), 0.0)
    [cea] = decoded(b)
    assert cea.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_UNKNOWN_PEER
    assert cea.is_error
    assert b.state is P.PeerState.CLOSED
    events = b.pop_events()
    assert P.ConnectionTerminated("unknown-peer") in events
    assert b.counters["unknown-peer"] == 1


def test_cer_without_host_ip_address_tolerated():
    b = make(False)
    b.receive_data(_cer(with_ip=False), 0.0)
    assert b.state is P.PeerState.R_OPEN


def test_cer_plain_auth_application_id_accepted():
    b = make(False)
    b.receive_data(_cer(apps=(), extra=[codec.AUTH_APPLICATION_ID(16777216)]), 0.0)
    assert b.state is P.PeerState.R_OPEN


def test_cer_missing_origin_host_5005():
    b = make(False)
    b.receive_data(_cer(None), 0.0)
    [cea] = decoded(b)
    assert cea.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_MISSING_AVP
    assert cea.find(codec.AVP_FAILED_AVP).group[0].code == codec.AVP_ORIGIN_HOST
    assert b.state is P.PeerState.CLOSED


def test_no_common_application_5010():
    b = make(False)
    b.receive_data(_cer(apps=(16777217,)), 0.0)
    [cea] = decoded(b)
    assert cea.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_NO_COMMON_APPLICATION
    assert b.state is P.PeerState.CLOSED


@pytest.mark.parametrize("code", [303, 280, 282])
def test_request_before_cer_refused(code):
    b = make(False)
    req = (
        mar().to_message(5, 6)
        if code == 303
        else codec.Message(
            code, 0x80, 0, 5, 6, (codec.ORIGIN_HOST(CLIENT), codec.ORIGIN_REALM("ims.test"))
        )
    )
    b.receive_data(req.encode(), 0.0)
    [ans] = decoded(b)
    assert (ans.hop_by_hop, ans.end_to_end) == (5, 6) and not ans.is_request
    assert ans.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_UNKNOWN_PEER
    assert b.state is P.PeerState.CLOSED
    assert b.counters["request-before-cer"] == 1
    assert not any(isinstance(e, P.RequestReceived) for e in b.pop_events())


def test_answer_before_cer_is_protocol_error():
    b = make(False)
    b.receive_data(maa_for(mar()).encode(1, 1), 0.0)
    assert b.state is P.PeerState.CLOSED
    assert b.counters["unexpected-message"] == 1


def test_cer_timeout_and_cea_timeout():
    b = make(False, cer_timeout=3.0)
    assert b.next_deadline() == 3.0
    b.handle_timer(2.9)
    assert b.state is P.PeerState.WAIT_CER
    b.handle_timer(3.0)
    assert b.state is P.PeerState.CLOSED and b.counters["cer-timeout"] == 1
    a = make(True, cer_timeout=3.0)
    a.connection_made(1.0)
    a.handle_timer(4.0)
    assert a.state is P.PeerState.CLOSED and a.counters["cea-timeout"] == 1


def test_cea_from_unexpected_host_or_refused():
    a = make(True)
    a.connection_made(0.0)
    a.messages_to_send()
    other = P.PeerConnection(
        P.PeerConfig("other.test", "ims.test"), initiator=False, now=0, allowed_hosts={CLIENT}
    )
    other.receive_data(_cer(), 0.0)
    a.receive_data(b"".join(other.messages_to_send()), 0.0)
    assert a.state is P.PeerState.CLOSED and a.counters["unexpected-peer-host"] == 1
    a = make(True)
    a.connection_made(0.0)
    cer = a.messages_to_send()[0]
    refusing = P.PeerConnection(
        P.PeerConfig(SERVER, "ims.test"), initiator=False, now=0, allowed_hosts=set()
    )
    refusing.receive_data(cer, 0.0)
    a.receive_data(b"".join(refusing.messages_to_send()), 0.0)
    assert a.state is P.PeerState.CLOSED and a.counters["cea-refused"] == 1


def test_request_answer_and_ids():
    a, b = opened_pair()
    sent = a.send_request(mar().to_message(), 1.0, timeout=5.0)
    assert sent.hop_by_hop and sent.end_to_end
    pump(a, b, 1.0)
    [ev] = b.pop_events()
    assert isinstance(ev, P.RequestReceived) and ev.message == sent
    req = cx.decode(ev.message)
    b.send_answer(maa_for(req).to_message(sent.hop_by_hop, sent.end_to_end), 1.0)
    pump(a, b, 1.0)
    [ev] = a.pop_events()
    assert isinstance(ev, P.AnswerReceived)
    assert cx.decode(ev.message) == maa_for(req)
    assert a.pending_count == 0
    second = a.send_request(mar().to_message(), 1.0)
    assert second.hop_by_hop == sent.hop_by_hop + 1
    assert second.end_to_end == sent.end_to_end + 1


def test_request_timeout_and_disconnect_fail_pending():
    a, _b = opened_pair()
    first = a.send_request(mar().to_message(), 1.0, timeout=2.0)
    second = a.send_request(mar().to_message(), 1.0, timeout=50.0)
    assert a.next_deadline() == 3.0
    a.handle_timer(3.0)
    assert a.pop_events() == [P.RequestFailed(first.hop_by_hop, "timeout")]
    # A late answer to the timed-out request is an unknown hop-by-hop id.
    a.receive_data(maa_for(mar()).encode(first.hop_by_hop, first.end_to_end), 3.5)
    assert a.counters["unknown-hop-by-hop"] == 1
    a.connection_lost(4.0)
    events = a.pop_events()
    assert P.RequestFailed(second.hop_by_hop, "disconnected") in events
    assert P.ConnectionTerminated("connection-lost") in events


def test_send_before_open_is_local_error():
    a = make(True)
    with pytest.raises(LocalProtocolError):
        a.send_request(mar().to_message(), 0.0)
    a, _ = opened_pair()
    with pytest.raises(LocalProtocolError):
        a.send_request(maa_for(mar()).to_message(), 0.0)
    with pytest.raises(LocalProtocolError):
        a.send_answer(mar().to_message(), 0.0)


def test_watchdog_silence_dwr_suspect_down():
    a, _b = opened_pair()
    t = a.next_deadline()
    assert TW - 1.0 <= t <= TW + 1.0  # Tw with jitter ±Tw/10
    a.handle_timer(t)
    [dwr] = decoded(a)
    assert dwr.code == 280 and dwr.is_request
    assert a.watchdog is P.WatchdogState.OKAY
    t2 = a.next_deadline()
    a.handle_timer(t2)
    assert a.watchdog is P.WatchdogState.SUSPECT
    assert a.pop_events() == [P.WatchdogChanged(P.WatchdogState.OKAY, P.WatchdogState.SUSPECT)]
    a.handle_timer(a.next_deadline())
    assert a.watchdog is P.WatchdogState.DOWN and a.state is P.PeerState.CLOSED
    assert a.counters["watchdog-expired"] == 1
    assert P.ConnectionTerminated("watchdog") in a.pop_events()


def test_watchdog_answered_stays_okay_and_traffic_recovers_suspect():
    a, b = opened_pair()
    now = 0.0
    for _ in range(5):
        now = a.next_deadline()
        a.handle_timer(now)
        b.handle_timer(now)
        pump(a, b, now)  # DWR answered by DWA
    assert a.state is P.PeerState.I_OPEN and a.watchdog is P.WatchdogState.OKAY
    # Make a SUSPECT by not delivering the DWA, then any message heals it.
    now = a.next_deadline()
    a.handle_timer(now)
    a.messages_to_send()
    now = a.next_deadline()
    a.handle_timer(now)
    assert a.watchdog is P.WatchdogState.SUSPECT
    b.send_request(codec.Message(303, 0xC0, 16777216, 0, 0, mar().to_message().avps), now)
    pump(a, b, now)
    assert a.watchdog is P.WatchdogState.OKAY


def test_dpr_dpa_both_ways():
    a, b = opened_pair()
    a.close(5.0, cause=P.BUSY)
    assert a.state is P.PeerState.CLOSING
    [dpr] = decoded(a)
    assert dpr.code == 282 and dpr.find(codec.AVP_DISCONNECT_CAUSE).i32 == P.BUSY
    b.receive_data(dpr.encode(), 5.0)
    assert b.state is P.PeerState.CLOSED
    assert P.ConnectionTerminated("peer-disconnect", P.BUSY) in b.pop_events()
    a.receive_data(b"".join(b.messages_to_send()), 5.0)
    assert a.state is P.PeerState.CLOSED
    assert P.ConnectionTerminated("disconnected-by-us") in a.pop_events()


def test_dpa_timeout():
    a, _ = opened_pair()
    a.close(1.0)
    a.handle_timer(1.0 + a.config.dpa_timeout)
    assert a.state is P.PeerState.CLOSED and a.counters["dpa-timeout"] == 1


def test_requests_while_closing_refused_answers_still_delivered():
    a, b = opened_pair()
    pending = a.send_request(mar().to_message(), 1.0)
    b_req = b.send_request(mar().to_message(), 1.0)
    a.messages_to_send()
    a.close(1.0)
    a.messages_to_send()
    a.receive_data(b_req.encode(), 1.0)
    [ans] = decoded(a)
    assert ans.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_UNABLE_TO_DELIVER
    a.receive_data(maa_for(mar()).encode(pending.hop_by_hop, pending.end_to_end), 1.0)
    assert any(isinstance(e, P.AnswerReceived) for e in a.pop_events())


def test_duplicate_request_answered_from_cache():
    a, b = opened_pair()
    sent = a.send_request(mar().to_message(), 1.0)
    data = a.messages_to_send()[0]
    b.receive_data(data, 1.0)
    [_ev] = b.pop_events()
    b.receive_data(data, 1.1)  # same end-to-end id while in progress
    assert (
        b.counters["duplicate-in-progress"] == 1
        and b.pop_events()[0].trigger == "duplicate-in-progress"
    )
    answer = maa_for(mar()).to_message(sent.hop_by_hop, sent.end_to_end)
    b.send_answer(answer, 1.2)
    b.messages_to_send()
    retrans = codec.Message(
        sent.code,
        sent.flags | codec.FLAG_RETRANSMIT,
        sent.app_id,
        sent.hop_by_hop + 100,
        sent.end_to_end,
        sent.avps,
    )
    b.receive_data(retrans.encode(), 2.0)
    [again] = decoded(b)
    assert again.hop_by_hop == sent.hop_by_hop + 100
    assert again.with_ids(0, 0) == answer.with_ids(0, 0)
    assert b.counters["duplicate-request"] == 1
    assert not any(isinstance(e, P.RequestReceived) for e in b.pop_events())
    # After the window it is a new request again.
    b.receive_data(retrans.encode(), 2.0 + b.config.duplicate_window + 1)
    assert any(isinstance(e, P.RequestReceived) for e in b.pop_events())


def test_duplicate_cache_bounded():
    cache = P.DuplicateCache(window=10.0, max_entries=3)
    for i in range(5):
        cache.started(("h", i))
        cache.answered(("h", i), b"x%d" % i, float(i))
    assert len(cache) == 3 and cache.lookup(("h", 0), 5.0) is None
    cache.answered(("h", 9), b"y", 100.0)
    assert len(cache) == 1


def test_application_unsupported_3007():
    a, b = opened_pair()
    a.send_request(codec.Message(316, 0xC0, 16777251, 0, 0, mar().to_message().avps), 1.0)
    pump(a, b, 1.0)
    assert b.counters["application-unsupported"] == 1
    [ev] = a.pop_events()
    assert ev.message.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_APPLICATION_UNSUPPORTED


def test_undecodable_request_gets_5014_and_framing_error_closes():
    _a, b = opened_pair()
    good = mar().to_message(9, 9).encode()
    bad = bytearray(good)
    bad[20 + 5 : 20 + 8] = (0xFFFF).to_bytes(3, "big")  # first AVP length far too big
    b.receive_data(bytes(bad), 1.0)
    [ans] = decoded(b)
    assert ans.hop_by_hop == 9 and ans.find(codec.AVP_RESULT_CODE).u32 == 5014
    assert b.state is P.PeerState.R_OPEN
    b.receive_data(b"\x01\x00\x00\x00", 1.0)
    assert b.state is P.PeerState.CLOSED and b.counters["length-too-small"] == 1


def test_second_cer_on_open_connection_closes():
    _, b = opened_pair()
    b.receive_data(_cer(), 1.0)
    assert b.state is P.PeerState.CLOSED and b.counters["cer-when-open"] == 1


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="origin_host"):
        P.PeerConfig("", "r")
    with pytest.raises(ValueError, match="watchdog_interval"):
        P.PeerConfig("h", "r", watchdog_interval=0)
    with pytest.raises(ValueError, match="host_ip_addresses"):
        P.PeerConfig("h", "r", host_ip_addresses=("nope",))


# --- every state × every input ------------------------------------------------------------

_CEA_OK = None


def _conn_in(state: P.PeerState) -> P.PeerConnection:
    if state is P.PeerState.WAIT_CONN_ACK:
        return make(True)
    if state is P.PeerState.WAIT_I_CEA:
        a = make(True)
        a.connection_made(0.0)
        a.messages_to_send()
        return a
    if state is P.PeerState.WAIT_CER:
        return make(False)
    a, b = opened_pair()
    if state is P.PeerState.I_OPEN:
        return a
    if state is P.PeerState.R_OPEN:
        return b
    if state is P.PeerState.CLOSING:
        a.close(0.0)
        a.messages_to_send()
        return a
    a.connection_lost(0.0)
    return a


def _message_for(inp: P.PeerInput) -> bytes | None:
    base = (codec.ORIGIN_HOST(SERVER), codec.ORIGIN_REALM("ims.test"))
    ok = codec.RESULT_CODE(2001)
    vsai = codec.VENDOR_SPECIFIC_APPLICATION_ID(
        [codec.VENDOR_ID(10415), codec.AUTH_APPLICATION_ID(16777216)]
    )
    table = {
        P.PeerInput.RCV_CER: lambda: _cer(),
        P.PeerInput.RCV_CEA: lambda: codec.Message(257, 0, 0, 1, 1, (ok, *base, vsai)).encode(),
        P.PeerInput.RCV_DWR: lambda: codec.Message(280, 0x80, 0, 1, 1, base).encode(),
        P.PeerInput.RCV_DWA: lambda: codec.Message(280, 0, 0, 1, 1, (ok, *base)).encode(),
        P.PeerInput.RCV_DPR: lambda: codec.Message(282, 0x80, 0, 1, 1, base).encode(),
        P.PeerInput.RCV_DPA: lambda: codec.Message(282, 0, 0, 1, 1, (ok, *base)).encode(),
        P.PeerInput.RCV_REQUEST: lambda: mar().encode(1, 1),
        P.PeerInput.RCV_ANSWER: lambda: maa_for(mar()).encode(1, 1),
    }
    return table[inp]() if inp in table else None


def _apply(conn: P.PeerConnection, inp: P.PeerInput, now: float) -> None:
    data = _message_for(inp)
    if data is not None:
        conn.receive_data(data, now)
    elif inp is P.PeerInput.CONN_ACK:
        conn.connection_made(now)
    elif inp is P.PeerInput.TIMEOUT:
        conn.handle_timer(conn.next_deadline() or now)
    elif inp is P.PeerInput.STOP:
        conn.close(now)
    elif inp is P.PeerInput.PEER_DISC:
        conn.connection_lost(now)


@pytest.mark.parametrize("state", list(P.PeerState), ids=lambda s: s.name)
@pytest.mark.parametrize("inp", list(P.PeerInput), ids=lambda i: i.name)
def test_every_state_and_input(state, inp):
    conn = _conn_in(state)
    assert conn.state is state
    _apply(conn, inp, 1.0)
    entry = P.TRANSITIONS.get((state, inp))
    is_message = _message_for(inp) is not None
    if state is P.PeerState.CLOSED and is_message:
        assert conn.state is P.PeerState.CLOSED  # a closed connection reads nothing
    elif entry is None and is_message:
        assert conn.state is P.PeerState.CLOSED
        assert conn.counters["unexpected-message"] == 1
    elif entry is None:
        # local inputs outside the table do nothing harmful (e.g. CONN_ACK on a responder)
        assert conn.counters["unexpected-message"] <= 1
    else:
        assert conn.state in (entry[1], P.PeerState.CLOSED)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(list(P.PeerInput)), max_size=12),
    st.sampled_from([P.PeerState.WAIT_CER, P.PeerState.WAIT_I_CEA, P.PeerState.R_OPEN]),
)
def test_random_input_sequences_never_raise(inputs, start):
    conn = _conn_in(start)
    now = 1.0
    for inp in inputs:
        now += 0.5
        _apply(conn, inp, now)
        conn.messages_to_send()
        conn.pop_events()
    assert conn.state in set(P.PeerState)


def test_cea_without_origin_host_or_common_application():
    a = make(True)
    a.connection_made(0.0)
    a.messages_to_send()
    a.receive_data(codec.Message(257, 0, 0, 1, 1, (codec.RESULT_CODE(2001),)).encode(), 0.0)
    assert a.state is P.PeerState.CLOSED and a.counters["missing-avp"] == 1
    a = make(True)
    a.connection_made(0.0)
    a.messages_to_send()
    cea = codec.Message(
        257,
        0,
        0,
        1,
        1,
        (
            codec.RESULT_CODE(2001),
            codec.ORIGIN_HOST(SERVER),
            codec.ORIGIN_REALM("ims.test"),
            codec.AUTH_APPLICATION_ID(16777251),
        ),
    )
    a.receive_data(cea.encode(), 0.0)
    assert a.state is P.PeerState.CLOSED and a.counters["no-common-application"] == 1


def test_relay_application_is_common():
    b = make(False)
    b.receive_data(_cer(apps=(), extra=[codec.AUTH_APPLICATION_ID(0xFFFFFFFF)]), 0.0)
    assert b.state is P.PeerState.R_OPEN


def test_broken_answer_fails_its_request_and_bad_message_before_open_closes():
    a, _ = opened_pair()
    sent = a.send_request(mar().to_message(), 1.0, timeout=5)
    a.messages_to_send()
    good = maa_for(mar()).encode(sent.hop_by_hop, sent.end_to_end)
    bad = bytearray(good)
    bad[20 + 5 : 20 + 8] = (0xFFFF).to_bytes(3, "big")
    a.receive_data(bytes(bad), 1.0)
    assert P.RequestFailed(sent.hop_by_hop, "bad-answer") in a.pop_events()
    b = make(False)
    bad_req = bytearray(mar().encode(1, 1))
    bad_req[20 + 5 : 20 + 8] = (0xFFFF).to_bytes(3, "big")
    b.receive_data(bytes(bad_req), 0.0)
    assert b.state is P.PeerState.CLOSED and b.counters["avp-bad-length"] == 1


def test_answer_after_close_is_dropped():
    _, b = opened_pair()
    req = mar().to_message(3, 4)
    b.receive_data(req.encode(), 1.0)
    b.connection_lost(1.5)
    b.send_answer(maa_for(mar()).to_message(3, 4), 2.0)
    assert b.counters["answer-after-close"] == 1 and b.messages_to_send() == []


_FRAMES = [
    mar().encode(1, 1),
    maa_for(mar()).encode(1, 1),
    _cer(),
    codec.Message(280, 0x80, 0, 2, 2, (codec.ORIGIN_HOST(CLIENT),)).encode(),
    codec.Message(282, 0x80, 0, 3, 3, (codec.ORIGIN_HOST(CLIENT),)).encode(),
    codec.Message(282, 0, 0, 3, 3, (codec.RESULT_CODE(2001),)).encode(),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(_FRAMES)), max_size=8), st.booleans()
)
def test_fuzz_peer_never_raises(chunks, initiator_side):
    """Whatever arrives, the core answers, drops or closes; it never raises."""
    a, b = opened_pair()
    conn = a if initiator_side else b
    now = 1.0
    for chunk in chunks:
        now += 0.1
        conn.receive_data(chunk, now)
        conn.handle_timer(now)
        for out in conn.messages_to_send():
            codec.decode_message(out)  # everything we emit is well-formed
        conn.pop_events()


def test_unanswered_request_is_not_in_progress_after_disconnect():
    cache = P.DuplicateCache()
    b = make(False)
    b.duplicates = cache
    b.receive_data(_cer(), 0.0)
    b.messages_to_send()
    req = mar().encode(1, 99)
    b.receive_data(req, 1.0)
    assert cache.lookup((CLIENT, 99), 1.0) == "in-progress"
    b.connection_lost(1.5)
    assert cache.lookup((CLIENT, 99), 1.5) is None
    b2 = make(False)
    b2.duplicates = cache
    b2.receive_data(_cer() + req, 2.0)  # retransmitted on a new connection: processed
    assert any(isinstance(e, P.RequestReceived) for e in b2.pop_events())


# --- RFC 3539 §3.4.1 REOPEN -------------------------------------------------------------


def reopened_pair(**cfg) -> tuple[P.PeerConnection, P.PeerConnection]:
    """The client reconnects to a server whose last connection failed its watchdog."""
    config = P.PeerConfig(CLIENT, "ims.test", watchdog_interval=TW, **cfg)
    a = P.PeerConnection(
        config,
        initiator=True,
        now=0.0,
        expected_host=SERVER,
        rng=random.Random(7),
        reopen_hosts={SERVER},
    )
    b = make(False)
    a.connection_made(0.0)
    a.receive_data(b"".join(b.messages_to_send()), 0.0)  # nothing yet
    b.receive_data(b"".join(a.messages_to_send()), 0.0)  # CER
    a.receive_data(b"".join(b.messages_to_send()), 0.0)  # CEA
    b.pop_events()
    return a, b


def test_reopen_needs_three_dwas_spaced_by_tw_before_requests():
    a, b = reopened_pair()
    assert [type(e) for e in a.pop_events()] == [P.PeerOpened, P.WatchdogChanged]
    assert a.is_open and not a.usable and a.watchdog is P.WatchdogState.REOPEN
    with pytest.raises(LocalProtocolError, match="REOPEN"):
        a.send_request(mar().to_message(), 0.0)
    with pytest.raises(LocalProtocolError, match="REOPEN"):
        a.send_encoded_request(301, 16777216, b"", 0.0)
    [dwr] = decoded(a)  # DWR at once (Connection up: SendWatchdog)
    assert dwr.code == 280 and dwr.is_request
    b.receive_data(dwr.encode(), 0.0)
    pump(a, b, 0.0)  # DWA 1
    assert a.watchdog is P.WatchdogState.REOPEN
    t = a.next_deadline()
    assert TW - 1.0 <= t <= TW + 1.0  # the next DWR one Tw later, not at once
    assert decoded(a) == []
    a.handle_timer(t)
    pump(a, b, t)  # DWR/DWA 2
    assert a.watchdog is P.WatchdogState.REOPEN and not a.usable
    t = a.next_deadline()
    a.handle_timer(t)
    pump(a, b, t)  # DWR/DWA 3
    assert a.watchdog is P.WatchdogState.OKAY and a.usable
    assert P.WatchdogChanged(P.WatchdogState.REOPEN, P.WatchdogState.OKAY) in a.pop_events()
    a.send_request(mar().to_message(), t)
    pump(a, b, t)
    assert any(isinstance(e, P.RequestReceived) for e in b.pop_events())


def test_reopen_throws_away_the_peers_requests_and_ignores_unsolicited_dwas():
    a, b = reopened_pair()
    a.pop_events()
    a.messages_to_send()  # the first DWR, left unanswered
    b.send_request(codec.Message(303, 0xC0, 16777216, 0, 0, mar().to_message().avps), 1.0)
    a.receive_data(b"".join(b.messages_to_send()), 1.0)
    assert a.messages_to_send() == [] and a.counters["reopen-throwaway"] == 1
    assert not any(isinstance(e, P.RequestReceived) for e in a.pop_events())
    # An application message does not restart the watchdog timer in REOPEN.
    assert a.next_deadline() <= TW + 1.0
    dwa = codec.Message(280, 0, 0, 99, 99, (codec.RESULT_CODE(2001),))
    a.receive_data(dwa.encode(), 2.0)  # answers our pending DWR: counts (1)
    a.receive_data(dwa.encode(), 2.0)  # none pending: does not count
    a.receive_data(dwa.encode(), 2.0)
    assert a.watchdog is P.WatchdogState.REOPEN and a.counters["unsolicited-dwa"] == 2
    assert a.state is P.PeerState.I_OPEN


def test_reopen_unanswered_dwr_restarts_the_count_then_closes():
    a, b = reopened_pair()
    a.pop_events()
    pump(a, b, 0.0)  # DWA 1
    t = a.next_deadline()
    a.handle_timer(t)
    a.messages_to_send()  # DWR 2 lost
    t = a.next_deadline()
    a.handle_timer(t)  # unanswered for one Tw: NumDWA = -1, still REOPEN
    assert a.watchdog is P.WatchdogState.REOPEN and a.state is P.PeerState.I_OPEN
    dwa = codec.Message(280, 0, 0, 99, 99, (codec.RESULT_CODE(2001),))
    a.receive_data(dwa.encode(), t + 1)  # late DWA: NumDWA = 0, the count starts over
    for _ in range(2):
        t = a.next_deadline()
        a.handle_timer(t)
        pump(a, b, t)
    assert a.watchdog is P.WatchdogState.REOPEN  # only 2 since the restart
    t = a.next_deadline()
    a.handle_timer(t)
    pump(a, b, t)
    assert a.watchdog is P.WatchdogState.OKAY
    # A second reopened connection whose DWRs go unanswered for 2 Tw closes: DOWN.
    c, _ = reopened_pair()
    c.pop_events()
    c.messages_to_send()
    t = c.next_deadline()
    c.handle_timer(t)
    assert c.state is P.PeerState.I_OPEN
    c.handle_timer(c.next_deadline())
    assert c.state is P.PeerState.CLOSED and c.watchdog is P.WatchdogState.DOWN
    assert P.ConnectionTerminated("watchdog") in c.pop_events()
    assert c.counters["watchdog-expired"] == 1


def test_reopen_dwas_configurable_and_hosts_not_listed_open_okay():
    a, b = reopened_pair(reopen_dwas=1)
    pump(a, b, 0.0)
    assert a.watchdog is P.WatchdogState.OKAY and a.usable
    c, _ = opened_pair()
    assert c.watchdog is P.WatchdogState.OKAY and c.usable
    with pytest.raises(ValueError, match="reopen_dwas"):
        P.PeerConfig("h", "r", reopen_dwas=0)
