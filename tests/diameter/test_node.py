"""DiameterNode over real TCP on loopback: exchanges, hostile peers, Tc reconnect, DPR."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from imsaka.diameter import codec, cx
from imsaka.diameter.errors import DiameterRequestError, DiameterTimeoutError
from imsaka.diameter.node import DiameterNode, NodeConfig, PeerSpec
from imsaka.wire import WireEvent
from tests.conftest import free_port
from tests.diameter.helpers import all_commands, maa_for, mar
from tests.polling import eventually

pytestmark = pytest.mark.timeout(30)

HSS, SCSCF = "hss.ims.test", "scscf.ims.test"


async def answer_anything(req, peer):
    """A Cx server answering every request type with success."""
    if isinstance(req, cx.MAR):
        return maa_for(req)
    common = dict(origin_host=HSS, origin_realm="ims.test")
    if isinstance(req, cx.UAR):
        return req.answer(
            **common,
            experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
            server_name="sip:scscf.ims.test",
        )
    if isinstance(req, cx.SAR):
        return req.answer(**common, result_code=2001, user_data=b"<IMSSubscription/>")
    if isinstance(req, cx.LIR):
        return req.answer(**common, result_code=2001, server_name="sip:scscf.ims.test")
    return req.answer(origin_host=SCSCF, origin_realm="ims.test", result_code=2001)


@contextlib.asynccontextmanager
async def pair(
    *, tw: float = 30.0, tc: float = 0.2, handler=answer_anything, port: int = 0, observer=None
):
    server = DiameterNode(
        origin_host=HSS,
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=port,
        peers=[PeerSpec(SCSCF)],
        watchdog_interval=tw,
        owner="hss",
    )
    server.set_request_handler(handler)
    if observer is not None:
        server.add_observer(observer)
    await server.start()
    client = DiameterNode(
        origin_host=SCSCF,
        origin_realm="ims.test",
        peers=[PeerSpec(HSS, "127.0.0.1", server.port)],
        tc=tc,
        watchdog_interval=tw,
        owner="scscf",
    )
    client.set_request_handler(answer_anything)
    await client.start()
    try:
        await client.wait_open(HSS, 5)
        yield server, client
    finally:
        await client.stop()
        await server.stop()


async def test_cx_exchange_every_command_over_tcp():
    events: list[WireEvent] = []
    async with pair() as (server, client):
        server.add_observer(events.append)
        for req in [
            e for e in all_commands() if e.IS_REQUEST and not isinstance(e, (cx.RTR, cx.PPR))
        ]:
            ans = await client.request(req, timeout=3)
            assert ans.session_id == req.session_id
            assert ans.is_success
            assert type(ans) is req.ANSWER
        maa = await client.request(mar())
        assert maa == maa_for(mar())
        # HSS-initiated RTR and PPR go the other way on the same connection.
        for req in [e for e in all_commands() if isinstance(e, (cx.RTR, cx.PPR))]:
            req = dataclasses.replace(req, destination_host=SCSCF)
            ans = await server.request(req, timeout=3)
            assert ans.result_code == 2001 and ans.origin_host == SCSCF
    directions = {(e.direction, codec.decode_message(e.payload).code) for e in events}
    assert ("in", 303) in directions and ("out", 303) in directions and ("out", 304) in directions
    assert all(
        e.protocol == "diameter" and e.transport == "tcp" and e.owner == "hss" for e in events
    )
    assert events[0].src[0] == "127.0.0.1"


async def test_missing_mandatory_avp_over_tcp_gets_5005_and_server_keeps_serving():
    async with pair() as (server, client):
        msg = mar().to_message()
        stripped = dataclasses.replace(msg, avps=tuple(a for a in msg.avps if a.code != 601))
        ans = await client.request(stripped)
        assert isinstance(ans, codec.Message)
        assert ans.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_MISSING_AVP
        assert ans.find(codec.AVP_FAILED_AVP).group[0].code == 601
        assert server.counters["missing-avp"] == 1
        assert (await client.request(mar())).is_success


async def test_slow_handler_error_handler_and_none():
    calls = []

    async def handler(req, peer):
        calls.append(peer.origin_host)
        if req.user_name == "slow":
            await asyncio.sleep(0.05)
            await asyncio.sleep(0)
            return maa_for(req)
        if req.user_name == "boom":
            raise RuntimeError("handler bug")
        if req.user_name == "bad-answer":
            return maa_for(req, sip_number_auth_items="one")  # not encodable
        if req.user_name == "not-an-answer":
            return 42
        if req.user_name == "late-boom":
            await asyncio.sleep(0.01)
            raise RuntimeError("handler bug")
        return None

    async with pair(handler=handler) as (server, client):
        results = await asyncio.gather(
            client.request(mar(user_name="slow")),
            client.request(mar(user_name="boom")),
            client.request(mar(user_name="late-boom")),
            client.request(mar(user_name="none")),
            client.request(mar(user_name="bad-answer")),
            client.request(mar(user_name="not-an-answer")),
        )
        assert results[0].is_success and results[0].user_name == "slow"
        assert [r.result_code for r in results[1:]] == [5012] * 5
        assert server.counters["handler-error"] == 2 and server.counters["handler-no-answer"] == 1
        assert server.counters["handler-bad-answer"] == 2
        assert calls == [SCSCF] * 6


async def test_plain_function_handler_answers_without_a_task():
    tasks_seen = []

    def handler(req, peer):
        tasks_seen.append(asyncio.current_task())
        if req.user_name == "boom":
            raise RuntimeError("handler bug")
        if req.user_name == "none":
            return None
        if req.user_name == "bad-answer":
            return maa_for(req, sip_number_auth_items="one")  # not encodable
        if req.user_name == "later":
            return answer_anything(req, peer)  # a coroutine: awaited in a Task
        return maa_for(req)

    async with pair(handler=handler) as (server, client):
        created = []
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()

        def counting(loop, coro, **kwargs):
            created.append(coro)
            return factory(loop, coro, **kwargs) if factory else asyncio.Task(coro, loop=loop)

        loop.set_task_factory(counting)
        try:
            first = await client.request(mar(user_name="now"))
            during = len(created)
            results = await asyncio.gather(
                client.request(mar(user_name="boom")),
                client.request(mar(user_name="none")),
                client.request(mar(user_name="bad-answer")),
                client.request(mar(user_name="later")),
            )
        finally:
            loop.set_task_factory(factory)
        assert first.is_success and first.user_name == "now"
        assert during == 0 and tasks_seen[0] is None  # answered in data_received itself
        assert [r.result_code for r in results[:3]] == [5012] * 3
        assert results[3].is_success and results[3].user_name == "later"
        assert server.counters["handler-error"] == 1
        assert server.counters["handler-no-answer"] == 1
        assert server.counters["handler-bad-answer"] == 1
        assert server.handlers_running == 0


class _MemoryTransport:
    """What a node's connection uses of an asyncio transport; writes are kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 3868)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_requests_in_hand_counts_the_asker_tasks_and_the_rest_of_the_read():
    from imsaka.diameter.peer import PeerConfig, PeerConnection

    seen: list[tuple[str, int]] = []
    server = DiameterNode(origin_host=HSS, origin_realm="ims.test", peers=[PeerSpec(SCSCF)])

    async def later(req):
        seen.append((req.user_name, server.requests_in_hand))
        await asyncio.sleep(0)
        return maa_for(req)

    def handler(req, peer):
        seen.append((req.user_name, server.requests_in_hand))
        return later(req) if req.user_name.startswith("task") else maa_for(req)

    server.set_request_handler(handler)
    await server.start()
    conn = server._accept()
    transport = _MemoryTransport()
    conn.connection_made(transport)
    client = PeerConnection(PeerConfig(SCSCF, "ims.test"), initiator=True, now=0.0)
    client.connection_made(0.0)
    for _ in range(4):  # CER/CEA
        for data in client.messages_to_send():
            conn.data_received(data)
        for data in transport.written:
            client.receive_data(data, 0.0)
        transport.written.clear()
    try:
        assert server.requests_in_hand == 0
        names = ["a", "task1", "b", "task2", "c"]
        conn.data_received(
            b"".join(mar(user_name=n).encode(i, i) for i, n in enumerate(names, start=1))
        )
        # In the read: the asker, the Tasks started before it, the requests behind it.
        assert seen == [("a", 5), ("task1", 4), ("b", 4), ("task2", 3), ("c", 3)]
        seen.clear()
        for _ in range(10):
            await asyncio.sleep(0)
        # In its Task: itself and the other Task (the read is over).
        assert seen == [("task1", 2), ("task2", 2)]
        assert len(transport.written) == 5
        conn.data_received(mar(user_name="alone").encode(9, 9))
        assert seen[-1] == ("alone", 1) and server.requests_in_hand == 0
    finally:
        conn.connection_lost(None)
        await server.stop()


async def test_request_timeout_and_failed_on_disconnect():
    async def never(req, peer):
        await asyncio.sleep(20)

    async with pair(handler=never) as (server, client):
        with pytest.raises(DiameterTimeoutError):
            await client.request(mar(), timeout=0.2)
        with pytest.raises(TimeoutError):
            await client.request(mar(), timeout=0.2)
        pending = asyncio.ensure_future(client.request(mar(), timeout=10))
        await asyncio.sleep(0.1)
        for conn in list(server._connections):
            conn.transport.abort()
        with pytest.raises(DiameterRequestError) as info:
            await pending
        assert info.value.reason == "disconnected"


async def test_no_connection():
    node = DiameterNode(
        origin_host=SCSCF,
        origin_realm="ims.test",
        peers=[PeerSpec(HSS, "127.0.0.1", free_port())],
        tc=0.1,
    )
    await node.start()
    try:
        with pytest.raises(DiameterRequestError) as info:
            await node.request(mar(), timeout=0.3)
        assert info.value.reason == "no-connection"
        assert node.counters["connect-failed"] >= 1
    finally:
        await node.stop()


# --- hostile peers with raw sockets ------------------------------------------------------------


@contextlib.asynccontextmanager
async def server_only(tw: float = 30.0, cer_timeout: float = 10.0):
    server = DiameterNode(
        origin_host=HSS,
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=0,
        peers=[PeerSpec(SCSCF)],
        watchdog_interval=tw,
        cer_timeout=cer_timeout,
    )
    server.set_request_handler(answer_anything)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def raw_exchange(
    port: int, data: bytes, wait: float = 3.0
) -> tuple[list[codec.Message], bool]:
    """Send data; collect framed messages until the server closes (True) or `wait` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    framer = codec.Framer()
    got: list[codec.Message] = []
    closed = False
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    try:
        while loop.time() < end:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), end - loop.time())
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            got += [codec.decode_message(f) for f in framer.feed(chunk)]
    finally:
        writer.close()
    return got, closed


def cer(host: str = SCSCF) -> bytes:
    return codec.Message(
        257,
        0x80,
        0,
        1,
        1,
        (
            codec.ORIGIN_HOST(host),
            codec.ORIGIN_REALM("ims.test"),
            codec.HOST_IP_ADDRESS("127.0.0.1"),
            codec.VENDOR_ID(0),
            codec.PRODUCT_NAME("raw"),
            codec.VENDOR_SPECIFIC_APPLICATION_ID(
                [codec.VENDOR_ID(10415), codec.AUTH_APPLICATION_ID(16777216)]
            ),
        ),
    ).encode()


@pytest.mark.parametrize(
    ("data", "trigger"),
    [
        (b"\x01\x00\x00\x00" + b"\0" * 16, "length-too-small"),
        (b"\x01\x00\x00\x16" + b"\0" * 18, "length-not-multiple-of-4"),
        (b"\x01\xff\xff\xf0", "length-too-large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad-version"),
    ],
    ids=["length-0", "not-multiple-of-4", "oversized", "garbage"],
)
async def test_hostile_framing_closes_connection(data, trigger):
    async with server_only() as server:
        got, closed = await raw_exchange(server.port, data)
        assert closed and got == []
        assert server.counters[trigger] == 1
        # and the server keeps serving others
        got, _ = await raw_exchange(server.port, cer(), wait=0.3)
        assert got[0].find(codec.AVP_RESULT_CODE).u32 == 2001


async def test_hostile_oversized_after_cer_too():
    async with server_only() as server:
        got, closed = await raw_exchange(server.port, cer() + b"\x01\x20\x00\x00")
        assert got[0].code == 257 and closed
        assert server.counters["length-too-large"] == 1


async def test_request_before_cer_refused_and_closed():
    async with server_only() as server:
        got, closed = await raw_exchange(server.port, mar().encode(77, 78))
        assert closed
        [ans] = got
        assert ans.code == 303 and ans.hop_by_hop == 77 and not ans.is_request
        assert ans.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_UNKNOWN_PEER
        assert server.counters["request-before-cer"] == 1


async def test_unknown_peer_refused_3010_then_closed():
    async with server_only() as server:
        got, closed = await raw_exchange(server.port, cer("intruder.example.org"))
        assert closed
        [cea] = got
        assert cea.code == 257 and cea.find(codec.AVP_RESULT_CODE).u32 == 3010
        assert server.counters["unknown-peer"] == 1
        assert server.open_peers == []


async def test_silence_past_watchdog_dwr_then_disconnect():
    async with server_only(tw=0.3) as server:
        loop = asyncio.get_running_loop()
        start = loop.time()
        got, closed = await raw_exchange(server.port, cer(), wait=5.0)
        elapsed = loop.time() - start
        assert [m.code for m in got] == [257, 280]  # CEA, then one DWR, then silence → close
        assert got[1].is_request
        assert closed and 0.6 < elapsed < 2.5
        assert server.counters["watchdog-expired"] == 1


async def test_silence_before_cer_times_out():
    async with server_only(cer_timeout=0.3) as server:
        got, closed = await raw_exchange(server.port, b"", wait=3.0)
        assert closed and got == [] and server.counters["cer-timeout"] == 1


async def test_watchdog_kept_alive_between_nodes():
    async with pair(tw=0.2) as (server, client):
        await asyncio.sleep(1.0)
        assert client.is_open(HSS) and server.is_open(SCSCF)
        assert (await client.request(mar())).is_success
        assert client.counters["watchdog-expired"] == 0


async def test_tc_reconnect_after_server_restart():
    port = free_port()
    server = DiameterNode(
        origin_host=HSS,
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=port,
        peers=[PeerSpec(SCSCF)],
    )
    server.set_request_handler(answer_anything)
    await server.start()
    client = DiameterNode(
        origin_host=SCSCF, origin_realm="ims.test", peers=[PeerSpec(HSS, "127.0.0.1", port)], tc=0.2
    )
    await client.start()
    try:
        await client.wait_open(HSS, 5)
        assert (await client.request(mar())).is_success
        await server.stop()
        assert await eventually(lambda: not client.is_open(HSS))
        server = DiameterNode(
            origin_host=HSS,
            origin_realm="ims.test",
            listen_address="127.0.0.1",
            listen_port=port,
            peers=[PeerSpec(SCSCF)],
        )
        server.set_request_handler(answer_anything)
        await server.start()
        await client.wait_open(HSS, 5)
        assert (await client.request(mar())).is_success
    finally:
        await client.stop()
        await server.stop()


async def test_stop_sends_dpr_and_peer_sees_it():
    seen: list[WireEvent] = []
    async with pair() as (server, client):
        server.add_observer(seen.append)
        await client.stop()
        assert await eventually(lambda: not server.is_open(SCSCF))
    codes = [(e.direction, codec.decode_message(e.payload).code) for e in seen]
    assert ("in", 282) in codes and ("out", 282) in codes


async def test_node_config_validation():
    with pytest.raises(ValueError, match="listen_port"):
        NodeConfig(origin_host="h", origin_realm="r", listen_port=70000)
    with pytest.raises(ValueError, match="peers"):
        NodeConfig(origin_host="h", origin_realm="r", peers=(PeerSpec("a"), PeerSpec("a")))
    with pytest.raises(ValueError, match="tc"):
        NodeConfig(origin_host="h", origin_realm="r", tc=0)


def test_exchange_on_uvloop():
    """The deployed event loop: uvloop transports are not asyncio.Transport subclasses."""
    import uvloop

    async def main():
        async with pair() as (_server, client):
            return await client.request(mar())

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()).is_success
    finally:
        loop.close()


async def test_election_when_both_ends_connect():
    """RFC 6733 §5.6.4: both nodes connect to each other; both keep the same connection."""
    port_a, port_b = free_port(), free_port()
    a = DiameterNode(
        origin_host="a.ims.test",
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=port_a,
        peers=[PeerSpec("b.ims.test", "127.0.0.1", port_b)],
        tc=0.2,
    )
    b = DiameterNode(
        origin_host="b.ims.test",
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=port_b,
        peers=[PeerSpec("a.ims.test", "127.0.0.1", port_a)],
        tc=0.2,
    )
    for node, me in ((a, "a.ims.test"), (b, "b.ims.test")):

        async def handler(req, peer, me=me):
            return req.answer(origin_host=me, origin_realm="ims.test", result_code=2001)

        node.set_request_handler(handler)
    await a.start()
    await b.start()
    try:
        await a.wait_open("b.ims.test", 5)
        await b.wait_open("a.ims.test", 5)
        await asyncio.sleep(0.8)  # let both connect loops and any election settle
        assert a.is_open("b.ims.test") and b.is_open("a.ims.test")
        assert len(a._connections) == 1 and len(b._connections) == 1
        conn_a = a._open["b.ims.test"]
        conn_b = b._open["a.ims.test"]
        assert conn_a.local == conn_b.remote_addr  # the very same TCP connection
        # b.ims.test > a.ims.test: b keeps the connection it initiated
        assert conn_b.core.initiator and not conn_a.core.initiator
        lir = cx.LIR(
            session_id="s;e",
            origin_host="a.ims.test",
            origin_realm="ims.test",
            destination_realm="ims.test",
            public_identity="sip:u@ims.test",
        )
        assert (await a.request(lir, peer="b.ims.test")).result_code == 2001
        assert (await b.request(dataclasses.replace(lir, origin_host="b.ims.test"))).is_success
    finally:
        await a.stop()
        await b.stop()


async def test_request_to_unconfigured_peer_fails_at_once():
    async with pair() as (_server, client):
        with pytest.raises(DiameterRequestError) as info:
            await client.request(mar(), peer="stranger.test", timeout=5)
        assert info.value.reason == "no-connection"


async def test_too_many_requests_in_flight_get_3004():
    async def slow(req, peer):
        await asyncio.sleep(0.2)
        return maa_for(req)

    server = DiameterNode(
        origin_host=HSS,
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=0,
        peers=[PeerSpec(SCSCF)],
        max_inflight=2,
    )
    server.set_request_handler(slow)
    await server.start()
    client = DiameterNode(
        origin_host=SCSCF, origin_realm="ims.test", peers=[PeerSpec(HSS, "127.0.0.1", server.port)]
    )
    await client.start()
    try:
        await client.wait_open(HSS, 5)
        answers = await asyncio.gather(*(client.request(mar()) for _ in range(5)))
        codes = sorted(a.result_code for a in answers)
        assert codes == [2001, 2001, 3004, 3004, 3004]
        assert server.counters["too-busy"] == 3
        assert (await client.request(mar())).result_code == 2001  # slots given back
    finally:
        await client.stop()
        await server.stop()


async def test_backpressure_pauses_reading():
    async with pair() as (server, _client):
        conn = next(iter(server._connections))
        conn.pause_writing()
        assert not conn.transport.is_reading()
        conn.resume_writing()
        assert conn.transport.is_reading()
        assert server.counters["backpressure"] == 1


async def test_host_names_compare_without_case():
    server = DiameterNode(
        origin_host=HSS,
        origin_realm="ims.test",
        listen_address="127.0.0.1",
        listen_port=0,
        peers=[PeerSpec(SCSCF.upper())],
    )
    server.set_request_handler(answer_anything)
    await server.start()
    client = DiameterNode(
        origin_host=SCSCF,
        origin_realm="ims.test",
        peers=[PeerSpec("HSS.Ims.Test", "127.0.0.1", server.port)],
    )
    await client.start()
    try:
        assert await client.wait_open("hss.ims.test", 5) == "hss.ims.test"
        assert client.open_peers == ["HSS.Ims.Test"]
        assert (await client.request(mar(), peer="HSS.IMS.TEST")).is_success
        await server.wait_open(SCSCF, 5)
        assert server.is_open(SCSCF.upper())
    finally:
        await client.stop()
        await server.stop()


async def test_answer_with_wrong_command_or_undecodable_is_bad_answer():
    async def wrong(req, peer):
        if req.user_name == "undecodable":
            # an MAA without Origin-Host: cannot become a MultimediaAuthAnswer
            return codec.Message(
                303,
                0x40,
                cx.CX_APPLICATION_ID,
                0,
                0,
                (codec.SESSION_ID(req.session_id), codec.RESULT_CODE(2001)),
            )
        return codec.Message(300, 0x40, cx.CX_APPLICATION_ID, 0, 0, (codec.RESULT_CODE(2001),))

    async with pair(handler=wrong) as (_server, client):
        for user in ("wrong-command", "undecodable"):
            with pytest.raises(DiameterRequestError) as info:
                await client.request(mar(user_name=user))
            assert info.value.reason == "bad-answer"
        assert client.counters["answer-wrong-command"] == 1
        assert client.counters["missing-avp"] == 1


def test_framer_fast_path_keeps_a_partial_tail():
    msgs = [mar(session_id=f"s;{i}").encode(i, i) for i in range(3)]
    stream = b"".join(msgs)
    framer = codec.Framer()
    cut = len(msgs[0]) + len(msgs[1]) + 7
    assert framer.feed(stream[:cut]) == msgs[:2]
    assert framer.buffered == 7
    assert framer.feed(stream[cut:]) == msgs[2:]
    assert framer.buffered == 0


async def test_reconnect_after_a_watchdog_failure_is_reopen_until_three_dwas():
    """RFC 3539 §3.4.1: the S-CSCF's first connection goes silent and fails the HSS's
    watchdog; when the S-CSCF connects again the HSS keeps it in REOPEN (no requests to
    it) until three DWR/DWA exchanges, Tw apart, succeed."""
    tw = 0.3
    async with server_only(tw=tw) as server:
        _, closed = await raw_exchange(server.port, cer(), wait=5.0)
        assert closed and server.counters["watchdog-expired"] == 1
        client = DiameterNode(
            origin_host=SCSCF,
            origin_realm="ims.test",
            peers=[PeerSpec(HSS, "127.0.0.1", server.port)],
            tc=0.2,
            watchdog_interval=tw,
        )
        client.set_request_handler(answer_anything)
        loop = asyncio.get_running_loop()
        await client.start()
        try:
            await client.wait_open(HSS, 5)  # the client saw no failure: OKAY at once
            start = loop.time()
            while server.counters["reopen"] == 0 and loop.time() - start < 5:
                await asyncio.sleep(0.01)
            assert server.counters["reopen"] == 1
            assert not server.is_open(SCSCF) and server.open_peers == []
            # A request of the HSS waits for the peer to be usable, then goes through.
            answer = await server.request(mar(), peer=SCSCF, timeout=5.0)
            elapsed = loop.time() - start
            assert answer.is_success and server.is_open(SCSCF)
            assert 2 * tw * 0.8 < elapsed < 3.0  # DWA 1 at once, 2 and 3 one Tw apart
            assert not server._reopen_hosts
        finally:
            await client.stop()


async def test_reconnect_after_a_transport_loss_is_usable_at_once():
    """A connection that ended without a watchdog failure (the peer closed it) is not
    followed by REOPEN: the reconnected peer is usable once CER/CEA succeed."""
    async with pair(tw=30.0, tc=0.1) as (server, client):
        conn = server._open[SCSCF]
        conn.transport.abort()
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 5 and not (
            server.is_open(SCSCF) and server._open[SCSCF] is not conn
        ):
            await asyncio.sleep(0.01)
        assert server.is_open(SCSCF) and server.counters["reopen"] == 0
        assert (await client.request(mar(), timeout=5.0)).is_success
