"""DiameterNode.request_callback: the answers and exceptions of request(), called back
without a Task (an open connection) or through one (waiting for a connection)."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.diameter import cx
from imsaka.diameter.errors import DiameterRequestError, DiameterTimeoutError
from imsaka.diameter.node import DiameterNode, PeerSpec
from tests.conftest import free_port
from tests.diameter.helpers import maa_for, mar
from tests.diameter.test_node import HSS, SCSCF, pair

pytestmark = pytest.mark.timeout(30)


def asker(node: DiameterNode, request, **kw) -> asyncio.Future:
    """request_callback's one call as a future (set with the answer or the exception)."""
    fut = asyncio.get_running_loop().create_future()
    calls = []

    def callback(answer, exc):
        calls.append((answer, exc))
        assert len(calls) == 1, "called back twice"
        fut.set_exception(exc) if exc is not None else fut.set_result(answer)

    node.request_callback(request, callback, **kw)
    return fut


async def test_answer_called_back_without_a_task_and_same_as_request():
    async with pair() as (_server, client):
        tasks = len(asyncio.all_tasks())
        fut = asker(client, mar())
        assert len(asyncio.all_tasks()) == tasks  # no Task for an open connection
        assert client.pending_counts()["request_futures"] == 1
        answer = await fut
        assert answer == maa_for(mar()) == await client.request(mar())
        assert client.pending_counts()["request_futures"] == 0
        uaa = await asker(
            client,
            cx.UAR(
                session_id="s1",
                origin_host=SCSCF,
                origin_realm="ims.test",
                destination_realm="ims.test",
                user_name="u@ims.test",
                public_identity="sip:u@ims.test",
                visited_network_identifier="ims.test",
            ),
        )
        assert type(uaa) is cx.UAA and uaa.server_name == "sip:scscf.ims.test"


async def test_timeout_wrong_command_and_disconnect_are_called_back():
    async def handler(req, peer):
        if req.user_name == "wrong":  # an answer of another command, same ids
            return cx.UAA(
                session_id=req.session_id,
                origin_host=HSS,
                origin_realm="ims.test",
                result_code=2001,
            )
        await asyncio.sleep(20)

    async with pair(handler=handler) as (server, client):
        with pytest.raises(DiameterTimeoutError):
            await asker(client, mar(), timeout=0.2)
        with pytest.raises(DiameterRequestError) as info:
            await asker(client, mar(user_name="wrong"))
        assert info.value.reason == "bad-answer"
        assert client.counters["answer-wrong-command"] == 1
        pending = asker(client, mar(), timeout=10)
        await asyncio.sleep(0.1)
        for conn in list(server._connections):
            conn.transport.abort()
        with pytest.raises(DiameterRequestError) as info:
            await pending
        assert info.value.reason == "disconnected"
        with pytest.raises(DiameterRequestError) as info:
            await asker(client, mar(), peer="stranger.test")
        assert info.value.reason == "no-connection"


async def test_a_failing_callback_is_counted_and_the_connection_goes_on():
    async with pair() as (_server, client):

        def broken(answer, exc):
            raise RuntimeError("caller bug")

        client.request_callback(mar(), broken)
        assert (await client.request(mar())).is_success
        assert client.counters["callback-error"] == 1


async def test_no_connection_waits_in_a_task_and_stop_cancels_it():
    node = DiameterNode(
        origin_host=SCSCF,
        origin_realm="ims.test",
        peers=[PeerSpec(HSS, "127.0.0.1", free_port())],
        tc=0.1,
    )
    await node.start()
    try:
        with pytest.raises(DiameterRequestError) as info:
            await asker(node, mar(), timeout=0.3)
        assert info.value.reason == "no-connection"
        calls = []
        node.request_callback(mar(), lambda a, e: calls.append((a, e)), timeout=10)
        assert len(node._request_tasks) == 1
    finally:
        await node.stop()
    assert calls == [] and not node._request_tasks
