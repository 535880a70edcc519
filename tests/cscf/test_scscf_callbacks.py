"""The S-CSCF's callback forms (`cx_ask`: DiameterNode.request_callback; a NOTIFY sender:
`notify_sender` over SipEndpoint.send_request_callback): a registration runs with no
Task; a failed Cx request is 504 as in the Task form; a NOTIFY answered 481 ends the
subscription; nothing happens after close(); a large NOTIFY goes the coroutine way when
a stream transport is there (RFC 3261 §18.1.1, as send_request)."""

from __future__ import annotations

import asyncio

from imsaka.cscf.scscf import notify_sender
from imsaka.sip import Request
from imsaka.sip.endpoint import SipEndpoint

from .test_bench_scscf import _bench


async def _harness(n: int = 2):
    bench = _bench()
    h = bench._Harness(bench.Workload(n), codec=True)
    spawned = []
    await h.start()
    real = h.scscf._spawn
    h.scscf._spawn = lambda coro: spawned.append(coro) or real(coro)
    return bench, h, spawned


async def test_a_registration_and_its_reg_event_run_without_a_task():
    _bench_mod, h, spawned = await _harness()
    ue = h.w.ues[0]
    await h.register(ue)
    await h.reregister(ue)
    assert spawned == []  # MAR, SAR, NOTIFY: callbacks, not Tasks
    assert h.scscf.core.counters["registered"] == 1
    assert h.scscf.core.counters["reregistered"] == 1
    assert len(h.scscf.subscriptions) == 1
    await h.ep.close()
    await h.scscf.close()


async def test_a_failed_cx_request_is_504():
    bench, h, _ = await _harness()

    def fail(request, callback):
        asyncio.get_running_loop().call_soon(callback, None, TimeoutError("no answer"))

    h.scscf._cx_ask = fail
    ue = h.w.ues[0]
    first = dict(ue.fields, **{"@CSEQ@": "1", "@CRED@": bench._NO_CRED})
    (answer,) = await h._exchange(bench._fill(bench._REGISTER, first), bench.ICSCF, 1, "register")
    assert answer.startswith(b"SIP/2.0 504 ") and b"Retry-After: " in answer
    assert h.scscf.core.counters["cx_unavailable"] == 1
    await h.ep.close()
    await h.scscf.close()


async def test_a_notify_answered_481_ends_the_subscription():
    _bench_mod, h, _ = await _harness()
    ue = h.w.ues[0]
    await h.register(ue)
    (sub,) = list(h.scscf.subscriptions)
    h.scscf._notify_answered(sub, False, _response(481))
    assert len(h.scscf.subscriptions) == 0
    assert h.scscf.core.counters["notify_failed"] == 1
    await h.ep.close()
    await h.scscf.close()


async def test_nothing_after_close():
    bench, h, _ = await _harness()
    held = []
    h.scscf._cx_ask = lambda request, callback: held.append(callback)
    ue = h.w.ues[0]
    first = dict(ue.fields, **{"@CSEQ@": "1", "@CRED@": bench._NO_CRED})
    h.ep._on_message(bench._fill(bench._REGISTER, first).encode(), bench.ICSCF, h.t)
    assert len(held) == 1 and h.t.sent == []
    await h.scscf.close()
    held[0](None, RuntimeError("stopped"))  # the node calls back as it stops
    assert h.t.sent == [] and h.scscf.core.counters["internal_errors"] == 0
    await h.ep.close()


class _Transport:
    def __init__(self, reliable: bool) -> None:
        self.reliable = reliable


class _Endpoint:
    def __init__(self, *reliable: bool) -> None:
        self.transports = [_Transport(r) for r in reliable]
        self.sent: list = []

    def send_request_callback(self, request, address, transport, callback):
        self.sent.append((request, address, transport))

    stream_for = SipEndpoint.stream_for  # the real §18.1.1 rule over these transports


def _notify(size: int) -> Request:
    return Request("NOTIFY", "sip:127.0.0.1:5060", [("Event", "reg")], b"x" * size)


def test_notify_sender_declines_what_send_request_carries_over_a_stream():
    udp_tcp = _Endpoint(False, True)
    send = notify_sender(udp_tcp)
    assert send(_notify(100), ("127.0.0.1", 5060), print)
    assert udp_tcp.sent[0][2] is udp_tcp.transports[0]
    assert not send(_notify(1300), ("127.0.0.1", 5060), print)  # TCP: send_request's way
    udp_only = _Endpoint(False)
    assert notify_sender(udp_only)(_notify(1300), ("127.0.0.1", 5060), print)
    assert not notify_sender(_Endpoint())(_notify(10), ("127.0.0.1", 5060), print)


def _response(status: int):
    from imsaka.sip import Response

    return Response(status)
