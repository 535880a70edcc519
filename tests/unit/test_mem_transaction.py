"""What a finished transaction keeps for Timer J/K (RFC 3261 §17.2.2, §17.1.2.2), and
that it still does what the RFC asks: absorb retransmitted requests by re-sending the
very same final, then terminate at 64*T1 (J) / T4 (K)."""

from __future__ import annotations

import pytest

from imsaka.sip import LocalProtocolError, Request, Response, make_response, parse_message
from imsaka.sip.compact import PACK_GROUP, PackedItem, PackedWire, WirePacker
from imsaka.sip.transaction import (
    FinishedServerTransaction,
    Input,
    State,
    TransactionLayer,
    TransactionTerminated,
    Transmit,
)


def request(method="REGISTER", branch="z9hG4bKabc", cseq=1) -> Request:
    return Request(
        method,
        "sip:registrar.home1.net",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
            ("From", "<sip:alice@home1.net>;tag=a1"),
            ("To", "<sip:alice@home1.net>"),
            ("Call-ID", f"call-{branch}"),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
        ],
    )


def challenge(req: Request, nonce: str, ck: str) -> Response:
    return make_response(
        req,
        401,
        to_tag="s1",
        headers=[
            (
                "WWW-Authenticate",
                f'Digest realm="registrar.home1.net", nonce="{nonce}", '
                f'algorithm=AKAv1-MD5, ik="00112233445566778899aabbccddeeff", ck="{ck}"',
            )
        ],
    )


def layer() -> TransactionLayer:
    # its own packer: the process-wide one learned its dictionary from other tests
    return TransactionLayer(reliable=lambda d: d == "tcp", packer=WirePacker())


def answer(lay, branch, now, status=200):
    req = request(branch=branch)
    tx = lay.receive_request(req, "udp", now)
    lay.events()
    resp = challenge(req, "N" + branch, "ff" * 16) if status == 401 else make_response(req, 200)
    tx.respond(resp, now)
    (sent,) = lay.events()
    return tx, sent


def test_completed_server_resends_the_same_bytes_from_a_packed_final():
    lay = layer()
    finals = {}
    n = 2 * PACK_GROUP + 3  # two groups packed, three finals waiting for the next
    for i in range(n):
        tx, sent = answer(lay, f"z9hG4bK{i:04d}", now=float(i) / 10, status=401 if i % 2 else 200)
        finals[tx.key] = sent.data
        assert tx.state is State.COMPLETED and tx.request is None
        # the layer holds a compact record
        rec = lay.server_transaction(tx.key)
        assert type(rec) is FinishedServerTransaction and rec.state is State.COMPLETED
        assert rec.last_status == (401 if i % 2 else 200) and rec.destination == "udp"
    recs = [lay.server_transaction(key) for key in finals]
    items = [r._response_wire for r in recs[: 2 * PACK_GROUP]]
    assert all(type(item) is PackedItem for item in items)
    assert all(type(r._response_wire) is bytes for r in recs[2 * PACK_GROUP :])
    # each group in one deflate run, well below a quarter of its finals' octets
    groups = {id(item[0]): item[0] for item in items}
    assert len(groups) == 2
    for group in groups.values():
        assert type(group[0]) is PackedWire and len(group[1]) == PACK_GROUP
    packed = sum(len(g[0]) for g in groups.values())
    assert packed < sum(len(f) for f in list(finals.values())[: 2 * PACK_GROUP]) // 4
    for i in range(n):
        lay.receive_request(request(branch=f"z9hG4bK{i:04d}"), "udp", 5.0)
        (again,) = lay.events()
        assert isinstance(again, Transmit) and again.message is None
        assert again.data == finals[again.key] and again.destination == "udp"
    assert lay.counters["retransmissions"] == n


def test_finals_waiting_for_a_group_go_with_their_records():
    # a quiet layer (a UE's) may never fill a group: Timer J and transport errors take
    # the waiting finals out with their records, nothing is kept past them
    lay = layer()
    keys = [answer(lay, f"z9hG4bKq{i}", now=float(i))[0].key for i in range(3)]
    assert len(lay._to_pack) == 3
    lay.transport_error(keys[0], 1.5)
    lay.events()
    assert lay.next_deadline() == pytest.approx(33.0)  # the first record is gone
    assert [r.key for r in lay._to_pack] == keys[1:]
    lay.handle_timer(40.0)
    assert len(lay) == 0 and lay._to_pack == []
    for i in range(PACK_GROUP):  # a full group still packs as one
        answer(lay, f"z9hG4bKr{i}", now=50.0)
    assert lay._to_pack == []


def test_a_packed_group_unpacks_each_message_alone():
    packer = WirePacker()
    datas = [
        make_response(request(branch=f"z9hG4bK{i}", cseq=i + 1), 200 + i % 3).to_bytes()
        for i in range(40)
    ]
    singles = [packer.pack(d) for d in datas[:20]]  # the dictionary learned meanwhile
    group = packer.pack_group(datas[20:])
    assert [packer.unpack(p) for p in singles + group] == datas
    assert packer.pack_group([b"x", b"", b"yz"])[2][0][0] == b"xyz"  # short: as it is
    assert [packer.unpack(p) for p in packer.pack_group([b"x", b"", b"yz"])] == [b"x", b"", b"yz"]


def test_timer_j_fires_in_order_from_the_fifo_and_terminates():
    lay = layer()
    keys = [answer(lay, f"z9hG4bK{i}", now=float(i))[0].key for i in range(3)]
    assert lay.next_deadline() == pytest.approx(32.0)  # J = 64*T1 after the first final
    lay.handle_timer(32.5)
    assert lay.events() == [TransactionTerminated(keys[0])]
    assert lay.server_transaction(keys[0]) is None and lay.server_transaction(keys[1]) is not None
    lay.handle_timer(40.0)
    assert lay.events() == [TransactionTerminated(keys[1]), TransactionTerminated(keys[2])]
    assert len(lay) == 0 and lay.next_deadline() is None
    # the same request now is a new transaction (the TU sees it again)
    lay.receive_request(request(branch="z9hG4bK0"), "udp", 41.0)
    assert [type(e).__name__ for e in lay.events()] == ["RequestReceived"]


def test_timer_j_due_before_a_queued_one_still_fires_on_time():
    lay = layer()
    late, _ = answer(lay, "z9hG4bKlate", now=10.0)  # J at 42
    early, _ = answer(lay, "z9hG4bKearly", now=2.0)  # J at 34: a clock that went back
    tcp_req = request(branch="z9hG4bKtcp")
    tcp = lay.receive_request(tcp_req, "tcp", 3.0)
    tcp.respond(make_response(tcp_req, 200), 3.0)  # J = 0 on TCP
    lay.events()
    assert lay.next_deadline() == pytest.approx(3.0)
    lay.handle_timer(3.0)
    assert lay.events() == [TransactionTerminated(tcp.key)]
    assert lay.next_deadline() == pytest.approx(34.0)
    lay.handle_timer(34.0)
    assert lay.events() == [TransactionTerminated(early.key)]
    assert late.state is State.COMPLETED
    lay.handle_timer(42.0)
    assert lay.events() == [TransactionTerminated(late.key)]


def test_transport_error_in_completed_leaves_no_timer_behind():
    lay = layer()
    tx, _ = answer(lay, "z9hG4bKx", now=0.0)
    lay.transport_error(tx.key, 1.0)
    assert [type(e).__name__ for e in lay.events()] == ["TransportError", "TransactionTerminated"]
    assert lay.next_deadline() is None
    lay.handle_timer(100.0)
    assert lay.events() == []


def test_timer_k_of_completed_clients_from_the_fifo():
    lay = layer()
    txs = []
    for i in range(3):
        req = request("NOTIFY", branch=f"z9hG4bKn{i}")
        txs.append(lay.send_request(req, "udp", float(i)))
        lay.receive_response(make_response(req, 200, to_tag="t"), "udp", float(i) + 0.1)
    lay.events()
    assert all(tx.state is State.COMPLETED for tx in txs)
    # a retransmitted 200 is absorbed
    lay.receive_response(make_response(request("NOTIFY", branch="z9hG4bKn0"), 200), "udp", 1.0)
    assert lay.events() == [] and lay.counters["absorbed"] == 1
    assert lay.next_deadline() == pytest.approx(6.0)  # K = T4 (5.1), on the 2*T1 grid
    lay.handle_timer(7.0)  # the first two (K 6.0 and 7.0)
    assert lay.events() == [TransactionTerminated(txs[0].key), TransactionTerminated(txs[1].key)]
    assert txs[2].state is State.COMPLETED
    lay.handle_timer(7.1)  # its K (7.1) is due at 8.0
    assert lay.events() == []
    lay.handle_timer(8.0)
    assert lay.events() == [TransactionTerminated(txs[2].key)]


def test_a_finished_server_transaction_takes_no_answer_and_is_counted():
    lay = layer()
    req = request()
    tx = lay.receive_request(req, "udp", 0.0)
    assert lay.pending() == 1
    tx.respond(make_response(req, 200), 0.1)
    lay.events()
    assert len(lay) == 1 and lay.pending() == 0
    with pytest.raises(LocalProtocolError):
        lay.respond(tx.key, make_response(req, 500), 0.2)
    with pytest.raises(LocalProtocolError):
        tx.respond(make_response(req, 500), 0.2)  # the TU's own handle: Completed too
    # an ACK never matches a non-INVITE transaction: it goes to the TU
    ack = request("ACK")
    assert lay.receive_request(ack, "udp", 0.3) is None
    assert [type(e).__name__ for e in lay.events()] == ["RequestReceived"]


def test_re_armed_swept_transaction_uses_its_new_timer():
    lay = layer()
    req = request("NOTIFY", branch="z9hG4bKr")
    tx = lay.send_request(req, "udp", 0.0)
    lay.receive_response(make_response(req, 200, to_tag="t"), "udp", 0.0)
    lay.events()
    assert lay.next_deadline() == pytest.approx(5.0)  # K from the FIFO
    # a timer set directly (as the table tests do) takes the transaction off the FIFO
    tx._set_timer(Input.TIMER_K, 0.0, 1.0)
    tx._rearm()
    assert lay.next_deadline() == pytest.approx(1.0)
    lay.handle_timer(1.0)
    assert lay.events() == [TransactionTerminated(tx.key)]
    assert lay.next_deadline() is None


def test_packer_round_trips_and_learns_no_credentials():
    packer = WirePacker()
    seen = []
    for i in range(40):
        req = request(branch=f"z9hG4bK{i:08x}", cseq=i + 1)
        nonce = f"NONCE{i:04d}SECRETVALUE+/="
        ck = f"{i:032x}"
        data = (challenge(req, nonce, ck) if i % 3 else make_response(req, 200)).to_bytes()
        packed = packer.pack(data)
        assert packer.unpack(packed) == data
        seen.append((packed, data, nonce, ck))
    for packed, data, _, _ in seen:  # older versions still unpack
        assert packer.unpack(packed) == data
    for zdict in packer._versions:
        assert b"SECRETVALUE" not in zdict and b"00112233" not in zdict
        for _, _, _nonce, ck in seen:
            assert ck.encode() not in zdict
    assert b"WWW-Authenticate: Digest realm=, nonce=" in packer._versions[-1]
    # short or incompressible data stays as it is
    assert packer.pack(b"x") == b"x" and type(packer.pack(b"x")) is bytes
    noise = bytes(range(256)) * 2
    assert packer.unpack(packer.pack(noise)) == noise


def test_packer_dictionary_is_bounded_and_frozen():
    packer = WirePacker()
    for i in range(50):
        req = request(method=f"M{i}", branch=f"z9hG4bK{i}")
        data = make_response(req, 200 + i).to_bytes()
        assert packer.unpack(packer.pack(data)) == data
    assert len(packer._versions) == WirePacker.MAX_KINDS
    assert all(len(v) <= WirePacker.MAX_DICTIONARY for v in packer._versions)


def test_a_packed_final_is_parsed_back_whole():
    lay = layer()
    req = request()
    tx = lay.receive_request(req, "udp", 0.0)
    lay.events()
    tx.respond(challenge(req, "abc", "ee" * 16), 0.0)
    (sent,) = lay.events()
    lay.receive_request(request(), "udp", 1.0)
    (again,) = lay.events()
    assert parse_message(again.data).status == 401 and again.data == sent.data


def test_layers_share_the_process_packer_by_default():
    a, b = TransactionLayer(), TransactionLayer()
    assert a.packer is b.packer
    tx, sent = answer(a, "z9hG4bKshared", now=0.0)
    b_req = request(branch="z9hG4bKshared2")
    btx = b.receive_request(b_req, "udp", 0.0)
    b.events()
    btx.respond(make_response(b_req, 200), 0.0)
    (bsent,) = b.events()
    for lay, key, data in ((a, tx.key, sent.data), (b, btx.key, bsent.data)):
        lay.receive_request(request(branch=key[1]), "udp", 1.0)
        (again,) = lay.events()
        assert again.data == data
