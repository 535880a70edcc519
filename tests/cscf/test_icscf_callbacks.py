"""The I-CSCF on a real SipEndpoint driven by callbacks (Icscf.on_request,
SipEndpoint.send_request_callback, a cx_ask like DiameterNode.request_callback): no Task
per REGISTER, and the same answers as the coroutine form: relay, retry with
capabilities, 480 with Retry-After, 500 on a step's failure, nothing after close()."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from imsaka.cscf.icscf import Icscf
from imsaka.diameter import cx
from imsaka.diameter.errors import DiameterTimeoutError
from imsaka.sip import make_response, parse_message
from imsaka.sip.endpoint import SipEndpoint
from tests.cscf.test_icscf_logic import SCSCFS, config, request, uaa

PCSCF = ("127.0.0.1", 5060)


class MemoryUdp:
    name = "udp"
    reliable = False
    respond_to_source = False
    local_address = ("127.0.0.1", 5070)

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def set_receiver(self, receiver) -> None:
        pass

    def set_error_handler(self, handler) -> None:
        pass

    def send(self, data: bytes, addr) -> None:
        self.sent.append((data, addr))

    def has_connection(self, addr) -> bool:
        return False

    async def close(self) -> None:
        pass


def setup(answers, **icscf):
    """An I-CSCF on an endpoint; `answers` give each UAR's (answer, exc) at once, or
    None: kept in `held` for the test to call back."""
    icscf_cfg, net = config(SCSCFS)
    icscf_cfg = replace(icscf_cfg, **icscf)
    ep = SipEndpoint(owner="icscf")
    t = MemoryUdp()
    ep.add_transport(t)
    uars, held = [], []

    def cx_ask(uar, callback):
        uars.append(uar)
        result = answers.pop(0)
        if result is None:
            held.append(callback)
        else:
            callback(*result)

    async def cx_send(uar):  # the coroutine form must not be used
        raise AssertionError("cx_send used")

    icscf = Icscf(icscf_cfg, net, endpoint=ep, cx_send=cx_send, cx_ask=cx_ask)
    ep.set_request_handler(icscf.on_request)
    return icscf, ep, t, uars, held


def receive(ep, t, data: bytes, source) -> list:
    t.sent.clear()
    ep._on_message(data, source, t)
    return [(parse_message(d), a) for d, a in t.sent]


def final(out) -> object:
    (msg, addr), *rest = [(m, a) for m, a in out if getattr(m, "status", 0) >= 200]
    assert not rest and addr == PCSCF
    return msg


FIRST = uaa(experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION)
CAPS = uaa(
    experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
    server_capabilities=cx.ServerCapabilities(server_names=tuple(e["name"] for e in SCSCFS)),
)


async def test_register_relayed_without_a_task():
    icscf, ep, t, uars, _ = setup([(FIRST, None)])
    tasks = asyncio.all_tasks()
    out = receive(ep, t, request("<sip:1.2.3.4>;expires=600").to_bytes(), PCSCF)
    assert asyncio.all_tasks() == tasks and not icscf._tasks and not ep._tasks
    (fwd, addr), *_ = [(m, a) for m, a in out if getattr(m, "method", "") == "REGISTER"]
    assert fwd.uri == "sip:a.home1.net:5080" and addr == ("127.0.0.1", 5080)
    assert ep.pending_count() == 1 and uars[0].user_authorization_type == 0
    out = receive(ep, t, make_response(fwd, 401, to_tag="s").to_bytes(), addr)
    resp = final(out)
    assert resp.status == 401 and len(resp.get_all("via")) == 1
    assert ep.pending_count() == 0 and not ep._awaiting  # answered: out of the 500 queue
    await ep.close()


async def test_480_from_the_scscf_asks_with_capabilities_and_moves_on():
    icscf, ep, t, uars, _ = setup([(CAPS, None), (CAPS, None)])
    out = receive(ep, t, request("<sip:1.2.3.4>;expires=600").to_bytes(), PCSCF)
    (fwd, addr), *_ = [(m, a) for m, a in out if getattr(m, "method", "") == "REGISTER"]
    out = receive(ep, t, make_response(fwd, 480, to_tag="s").to_bytes(), addr)
    (fwd2, addr2), *_ = [(m, a) for m, a in out if getattr(m, "method", "") == "REGISTER"]
    assert addr2 != addr and icscf.counters["scscf_retry"] == 1
    assert [u.user_authorization_type for u in uars] == [
        cx.UserAuthorizationType.REGISTRATION,
        cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES,
    ]
    assert (
        final(receive(ep, t, make_response(fwd2, 200, to_tag="t").to_bytes(), addr2)).status == 200
    )
    await ep.close()


def forwarded(out) -> list:
    return [(m, a) for m, a in out if getattr(m, "method", "") == "REGISTER"]


async def test_a_register_the_scscf_leaves_unanswered_goes_to_another_before_timer_f():
    """The assigned S-CSCF is silent (a partition, a crash): after `scscf_timeout` the
    I-CSCF asks the HSS with capabilities and sends the REGISTER to another S-CSCF,
    long before its own Timer F (32 s), which would run out with the P-CSCF's and the
    UE's. The silent one is sent no more copies, and its late answer is dropped."""
    assigned = uaa(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080")
    icscf, ep, t, uars, _ = setup([(assigned, None), (CAPS, None)], scscf_timeout=0.2)
    ((fwd, addr),) = forwarded(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    assert addr == ("127.0.0.1", 5080)
    t.sent.clear()
    await asyncio.sleep(0.35)  # past scscf_timeout, before Timer F
    ((fwd2, addr2),) = forwarded([(parse_message(d), a) for d, a in t.sent])
    assert addr2 == ("127.0.0.2", 5081) and fwd2.top_via.branch != fwd.top_via.branch
    assert [u.user_authorization_type for u in uars] == [
        cx.UserAuthorizationType.REGISTRATION,
        cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES,
    ]
    assert icscf.counters["scscf_silent"] == 1 and icscf.counters["scscf_retry"] == 1
    # the silent one's copy is no longer pending; its late answer is for nothing, the
    # other's reaches the P-CSCF
    assert ep.pending_count() == 1
    assert receive(ep, t, make_response(fwd, 401, to_tag="a").to_bytes(), addr) == []
    resp = final(receive(ep, t, make_response(fwd2, 401, to_tag="b").to_bytes(), addr2))
    assert resp.status == 401 and resp.to.tag == "b"
    t.sent.clear()
    await asyncio.sleep(0.6)  # Timer E would have sent the first copy again by now
    assert t.sent == [] and ep.pending_count() == 0 and len(uars) == 2
    await ep.close()


def _another_register(n: int) -> bytes:
    """`request`'s REGISTER as another UE's (its own branch and Call-ID)."""
    data = request("<sip:1.2.3.4>").to_bytes()
    return data.replace(b"z9hG4bK1", b"z9hG4bK1x%d" % n).replace(b"Call-ID: c", b"Call-ID: c%d" % n)


async def test_the_next_register_passes_a_silent_scscf_over_until_it_answers_a_probe():
    """The assigned S-CSCF left a REGISTER unanswered for `scscf_timeout`, which went to
    another. The next REGISTER the HSS assigns to it goes to another at once (a UAR with
    capabilities), not after the same wait, until it answers an OPTIONS probe; then it
    is sent REGISTERs again. Before 2026-11-29 (ninth session) every REGISTER of its
    users waited out its silence again."""
    assigned = uaa(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080")
    answers = [(assigned, None), (CAPS, None), (assigned, None), (CAPS, None), (assigned, None)]
    icscf, ep, t, uars, _ = setup(answers, scscf_timeout=0.2, scscf_probe_interval=0.2)
    forwarded(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    t.sent.clear()
    await asyncio.sleep(0.3)  # silent: moved on, and answered there
    ((moved, at),) = forwarded([(parse_message(d), a) for d, a in t.sent])
    assert final(receive(ep, t, make_response(moved, 401, to_tag="b").to_bytes(), at))
    assert icscf.counters["scscf_silent"] == 1 and icscf.counters["scscf_down"] == 1
    ((fwd2, addr2),) = forwarded(receive(ep, t, _another_register(2), PCSCF))
    assert addr2 == ("127.0.0.2", 5081)
    assert icscf.counters["scscf_passed_over"] == 1 and len(uars) == 4
    assert uars[3].user_authorization_type == cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES
    assert final(receive(ep, t, make_response(fwd2, 401, to_tag="b").to_bytes(), addr2))
    # the probe of the silent one, answered
    t.sent.clear()
    await asyncio.sleep(0.25)
    probes = [(parse_message(d), a) for d, a in t.sent if d.startswith(b"OPTIONS")]
    assert probes and probes[-1][1] == ("127.0.0.1", 5080)
    receive(ep, t, make_response(probes[-1][0], 200, to_tag="p").to_bytes(), ("127.0.0.1", 5080))
    assert icscf.counters["scscf_instance_up"] == 1
    ((_fwd3, addr3),) = forwarded(receive(ep, t, _another_register(3), PCSCF))
    assert addr3 == ("127.0.0.1", 5080) and icscf.counters["scscf_passed_over"] == 1
    await ep.close()
    icscf.close()


async def test_when_every_scscf_is_passed_over_the_hss_choice_stands():
    """Every S-CSCF left a REGISTER unanswered lately (a partition moving between them):
    a REGISTER goes to the one the HSS names, which may hold the challenge it answers;
    sent to another, it would only meet a new challenge there (lifecycle_chaos
    --devices 2 --scscf-moves, seed 11101: the UE gave up after three)."""
    assigned = uaa(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080")
    icscf, ep, t, uars, _ = setup([(assigned, None)], scscf_probe_interval=60.0)
    for entry in icscf.config.scscfs:
        icscf._mark_down(entry, alone=True)
    ((_fwd, addr),) = forwarded(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    assert addr == ("127.0.0.1", 5080) and len(uars) == 1
    assert not icscf.counters["scscf_passed_over"]
    await ep.close()
    icscf.close()


async def test_a_register_carrying_a_challenge_response_waits_for_a_passed_over_scscf():
    """A REGISTER with a challenge response (the answer to the challenge the HSS's
    S-CSCF holds, or a protected refresh) goes to the S-CSCF the HSS names even while
    it is passed over: moved, it would meet a new challenge, which waiting spares it
    when that S-CSCF is back before its probe says so (lifecycle_chaos --scscf-moves,
    seed 11001)."""
    assigned = uaa(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080")
    icscf, ep, t, uars, _ = setup([(assigned, None)], scscf_probe_interval=60.0)
    icscf._mark_down(icscf.config.scscfs[0], alone=True)
    data = _another_register(4).replace(b'response=""', b'response="0123456789abcdef"')
    ((_fwd, addr),) = forwarded(receive(ep, t, data, PCSCF))
    assert addr == ("127.0.0.1", 5080) and len(uars) == 1
    assert not icscf.counters["scscf_passed_over"]
    await ep.close()
    icscf.close()


async def test_a_register_at_the_last_scscf_left_goes_back_to_one_that_answers_again():
    """The HSS's S-CSCF is passed over (it left a REGISTER unanswered), so a new
    REGISTER goes to the other one, which is silent too (a partition that moved). The
    first answers its probe meanwhile: after `scscf_timeout` the REGISTER goes back to
    it instead of waiting out its Timer F at the silent one, with no S-CSCF left untried
    (before 2026-11-29, eleventh session, it was not watched at all there: lifecycle
    chaos --devices 2 --scscf-moves, seed 11136, a tablet's REGISTER ran out so)."""
    assigned = uaa(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080")
    answers = [(assigned, None), (CAPS, None), (CAPS, None)]
    icscf, ep, t, uars, _ = setup(answers, scscf_timeout=0.2, scscf_probe_interval=0.2)
    icscf.config = replace(icscf.config, scscfs=icscf.config.scscfs[:2])
    icscf._mark_down(icscf.config.scscfs[0], alone=True)
    ((_fwd, addr),) = forwarded(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    assert addr == ("127.0.0.2", 5081) and icscf.counters["scscf_passed_over"] == 1
    t.sent.clear()
    await asyncio.sleep(0.25)  # b silent past scscf_timeout; a probed
    probes = [(parse_message(d), a) for d, a in t.sent if d.startswith(b"OPTIONS")]
    assert probes and probes[-1][1] == ("127.0.0.1", 5080)
    assert not forwarded([(parse_message(d), a) for d, a in t.sent])  # nowhere to go yet
    receive(ep, t, make_response(probes[-1][0], 200, to_tag="p").to_bytes(), ("127.0.0.1", 5080))
    assert icscf.counters["scscf_instance_up"] == 1
    t.sent.clear()
    await asyncio.sleep(0.3)
    moves = [(m, a) for m, a in forwarded([(parse_message(d), a) for d, a in t.sent])]
    back = [(m, a) for m, a in moves if a == ("127.0.0.1", 5080)]
    assert back, moves
    assert icscf.counters["scscf_back_again"] == 1 and len(uars) == 3
    resp = final(receive(ep, t, make_response(back[0][0], 401, to_tag="a").to_bytes(), back[0][1]))
    assert resp.status == 401 and resp.to.tag == "a"
    await ep.close()
    icscf.close()


@pytest.mark.parametrize("case", ["none-other", "de-registration"])
async def test_a_silent_scscf_is_waited_for_when_no_other_can_serve(case):
    """With no other S-CSCF to choose, or for a de-REGISTER (another S-CSCF holds no
    registration to end), silence moves nothing: Timer F decides."""
    icscf, ep, t, uars, _ = setup([(FIRST, None)], scscf_timeout=0.2)
    contact = "<sip:1.2.3.4>"
    if case == "none-other":
        icscf.config = replace(icscf.config, scscfs=icscf.config.scscfs[:1])
    else:
        contact += ";expires=0"
    ((fwd, addr),) = forwarded(receive(ep, t, request(contact).to_bytes(), PCSCF))
    await asyncio.sleep(0.35)
    assert len(uars) == 1 and not icscf.counters["scscf_silent"] and ep.pending_count() == 1
    resp = final(receive(ep, t, make_response(fwd, 401, to_tag="a").to_bytes(), addr))
    assert resp.status == 401
    await ep.close()


async def test_hss_unreachable_is_480_with_retry_after():
    icscf, ep, t, _, _ = setup([(None, DiameterTimeoutError("no answer", reason="timeout"))])
    resp = final(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    assert resp.status == 480 and resp.get("retry-after") == "30"
    assert icscf.counters["uar_failed"] == 1


async def test_a_failing_step_is_500_as_a_failed_handler():
    _, ep, t, _, _ = setup([(object(), None)])  # not an answer: reply_for_uaa raises
    resp = final(receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF))
    assert resp.status == 500 and ep.counters["handler_errors"] == 1


async def test_an_answer_after_close_sends_nothing():
    _, ep, t, _, held = setup([None])
    receive(ep, t, request("<sip:1.2.3.4>").to_bytes(), PCSCF)
    await ep.close()
    t.sent.clear()
    held[0](None, DiameterTimeoutError("node stopped", reason="stopped"))
    assert t.sent == []
