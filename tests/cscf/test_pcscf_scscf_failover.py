"""A P-CSCF's request to an instance of an S-CSCF that runs as several
(`PcscfConfig.scscf_instances`, RFC 3263 §4.3 as for the targets of one SRV record)
that stays unanswered for `scscf_timeout` s, or is answered 503, goes on to the next
instance as a new client transaction, the same copy with a branch of its own (RFC
3261 §16.6 step 7: our context's branch and `x<n>`, n the instance's place in its
group); the answers of either come back to the one context; the silent one is passed over for
`scscf_down_time` s (or until it answers an OPTIONS), one that answered 503 for its
Retry-After.
Sans-I/O: the core's actions read directly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from imsaka.config import load_config, parse_config
from imsaka.cscf.pcscf import Forward, PcscfCore, RegState

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imsaka.toml"
FIRST, SECOND = ("127.0.0.1", 6060), ("127.0.0.1", 6061)


def _core(groups=(("sip:127.0.0.1:6060", "sip:127.0.0.1:6061"),), probe=0.0) -> PcscfCore:
    cfg = load_config(EXAMPLE)
    core = PcscfCore(replace(cfg.pcscf, scscf_instances=groups), network=cfg.network)
    core.scscf_timeout, core.scscf_down_time = 4.0, 30.0
    core.scscf_probe_interval = probe
    return core


def _registered(core: PcscfCore, n: int, now: float) -> list:
    """A registration taken back without its subscription, Service-Route to the first
    instance: the SUBSCRIBE it makes at once."""
    reg = core.registration_type(
        impi=f"u{n}@home1.net",
        impu=f"sip:u{n}@home1.net",
        ue_host="127.0.0.9",
        state=RegState.REGISTERED,
        expires_at=now + 600.0,
        service_route=("<sip:orig@127.0.0.1:6060;lr>",),
    )
    return core.adopt(reg, None, now)


def _sent(actions: list) -> list[tuple]:
    return [
        (a.destination, a.message.get("Via"))
        for a in actions
        if isinstance(a, Forward) and getattr(a.message, "method", "") == "SUBSCRIBE"
    ]


def test_a_silent_instance_passes_its_request_to_the_next_and_is_passed_over():
    core = _core()
    ((dest, via),) = _sent(_registered(core, 0, 0.0))
    assert dest == FIRST
    copies = []
    for t in (0.5, 1.5, 3.5):  # Timer E, all to the first while within scscf_timeout
        copies += _sent(core.handle_timer(t))
    assert [d for d, _ in copies] == [FIRST] * 3
    (moved,) = _sent(core.handle_timer(7.5))
    assert moved == (SECOND, via + "x2")  # the same copy, a branch of its own
    assert core.counters["scscf-instance-failover"] == 1
    # the next request goes to the second at once, while the first is passed over
    ((dest, _),) = _sent(_registered(core, 1, 8.0))
    assert dest == SECOND
    # the second's retransmissions stay there (its own timeout counts from its move)
    assert {d for d, _ in _sent(core.handle_timer(11.5))} == {SECOND}
    # after scscf_down_time the first is tried first again
    ((dest, _),) = _sent(_registered(core, 2, 38.0))
    assert dest == FIRST


def test_every_instance_silent_leaves_the_request_where_it_is_and_none_is_moved_without_groups():
    core = _core()
    _registered(core, 0, 0.0)
    for t in (0.5, 1.5, 3.5, 7.5):
        core.handle_timer(t)
    seen = [d for t in (11.5, 15.5, 19.5) for d, _ in _sent(core.handle_timer(t))]
    # moved once to the second; silent too, it is passed over as well, and with no
    # instance left the request stays where it is
    assert seen == [SECOND] * 3 and core.counters["scscf-instance-failover"] == 1
    plain = _core(groups=())
    _registered(plain, 0, 0.0)
    seen = [d for t in (0.5, 1.5, 3.5, 7.5, 11.5) for d, _ in _sent(plain.handle_timer(t))]
    assert seen == [FIRST] * 5 and not plain.counters["scscf-instance-failover"]


def test_the_groups_come_from_the_document_or_from_pcscf_scscfs():
    import tomllib

    doc = tomllib.loads(EXAMPLE.read_text())
    assert parse_config(doc).pcscf.scscf_instances == ()  # one S-CSCF: no group
    doc["scscf"]["binding_store"] = "redis://127.0.0.1:6379/15"
    doc["scscf"]["instances"] = [{"port": 5072, "diameter_host": "scscf2.home1.net"}]
    cfg = parse_config(doc)
    (group,) = cfg.pcscf.scscf_instances
    assert group == (f"sip:{cfg.scscf.address}:{cfg.scscf.port}", f"sip:{cfg.scscf.address}:5072")
    doc["pcscf"]["scscfs"] = [{"instances": ["sip:127.0.0.1:7001", "sip:127.0.0.1:7002"]}]
    assert parse_config(doc).pcscf.scscf_instances == (
        ("sip:127.0.0.1:7001", "sip:127.0.0.1:7002"),
    )


def _options(actions: list) -> list:
    return [
        a.message
        for a in actions
        if isinstance(a, Forward) and getattr(a.message, "method", "") == "OPTIONS"
    ]


def test_an_instance_passed_over_is_probed_and_back_at_its_first_answer():
    """With `scscf_probe_interval` (5 s by default) the silent instance is asked with an
    OPTIONS at once and every interval after, passed over until it answers one (past
    `scscf_down_time` too); any final answer puts it back, and the probing stops."""
    from imsaka.sip import make_response, parse_message

    core = _core(probe=5.0)
    _registered(core, 0, 0.0)
    for t in (0.5, 1.5, 3.5):
        core.handle_timer(t)
    actions = core.handle_timer(7.5)  # the request moves
    (moved,) = [a.message for a in actions if isinstance(a, Forward)]
    assert [d for d, _ in _sent(actions)] == [SECOND]
    ok = parse_message(make_response(moved, 200, to_tag="s").to_bytes())
    core.receive_response(ok, SECOND, 7.5)  # the second answers
    assert core.next_deadline() == 7.5  # the first probe: due at once
    actions = core.handle_timer(7.5)
    (probe,) = _options(actions)
    assert probe.uri == "sip:127.0.0.1:6060" and probe.cseq.method == "OPTIONS"
    (sent,) = [a for a in actions if isinstance(a, Forward)]
    assert sent.destination == FIRST
    assert core.handle_timer(7.6) == []  # one probe per interval
    (copy,) = _options(core.handle_timer(9.0))  # Timer E: the same OPTIONS again
    assert copy.call_id == probe.call_id
    (again,) = _options(core.handle_timer(12.5))
    assert again.call_id != probe.call_id
    # the one before is given up: none of its copies go any more
    assert {m.call_id for m in _options(core.handle_timer(16.5))} == {again.call_id}
    # silent past scscf_down_time: still passed over
    for t in (20.0, 30.0, 40.0):
        core.handle_timer(t)
    ((dest, _),) = _sent(_registered(core, 1, 40.0))
    assert dest == SECOND
    (last,) = _options(core.handle_timer(42.6))
    answer = parse_message(make_response(last, 200, to_tag="x").to_bytes())
    core.receive_response(answer, FIRST, 42.7)
    assert core.counters["scscf-instance-up"] == 1
    ((dest, _),) = _sent(_registered(core, 2, 43.0))
    assert dest == FIRST
    assert _options(core.handle_timer(60.0)) == []  # probing stopped
    assert core.counters["scscf-probe-sent"] == 5  # at 7.5, 12.5, 20, 30 and 40


def _answer(message, status: int, **headers):
    from imsaka.sip import make_response, parse_message

    extra = list(headers.items())
    return parse_message(make_response(message, status, to_tag="s", headers=extra).to_bytes())


def test_a_503_from_an_instance_moves_the_request_at_once_and_passes_it_over_for_retry_after():
    """An instance that cannot serve now (one cut off from its binding store) answers
    503 with Retry-After: the request goes to the next instance at once, the same copy
    (RFC 3263 §4.3: a 503 is a failure of that target), and the first gets no request
    for Retry-After s (RFC 3261 §21.5.4), no OPTIONS either; a copy of that 503 that
    comes again is absorbed, and the answer of the second is the one relayed."""
    core = _core(probe=5.0)
    actions = _registered(core, 0, 0.0)
    (sent,) = [a for a in actions if isinstance(a, Forward)]
    assert sent.destination == FIRST
    refused = _answer(sent.message, 503, **{"Retry-After": "5"})
    moved = core.receive_response(refused, FIRST, 0.1)
    assert _sent(moved) == [(SECOND, sent.message.get("Via") + "x2")]
    assert core.counters["scscf-instance-503"] == 1
    assert core.counters["scscf-instance-failover"] == 1
    assert core.receive_response(refused, FIRST, 0.2) == []  # its retransmission
    assert core.counters["scscf-instance-failover"] == 1
    ((dest, _),) = _sent(_registered(core, 1, 1.0))
    assert dest == SECOND  # passed over
    assert _options(core.handle_timer(2.0)) == []  # it answers: nothing to probe
    ((dest, _),) = _sent(_registered(core, 2, 5.2))
    assert dest == FIRST  # Retry-After over: tried first again
    branch = sent.message.top_via.branch
    assert branch in core.pending
    core.receive_response(_answer(moved[0].message, 200), SECOND, 0.3)
    assert branch not in core.pending  # answered by the second


def test_a_503_without_another_instance_left_is_the_answer():
    """Both instances answer 503: the request moved once, then the second's 503 is its
    answer (its subscription failed, tried again later as any failed one); with no
    groups a 503 is only an answer, nothing is passed over."""
    core = _core(probe=5.0)
    (sent,) = [a for a in _registered(core, 0, 0.0) if isinstance(a, Forward)]
    moved = core.receive_response(_answer(sent.message, 503), FIRST, 0.1)
    assert _sent(moved)[0][0] == SECOND
    # without Retry-After: passed over until it answers an OPTIONS (probed at once)
    assert [m.uri for m in _options(core.handle_timer(0.1))] == ["sip:127.0.0.1:6060"]
    last = core.receive_response(_answer(moved[0].message, 503), SECOND, 0.2)
    assert _sent(last) == [] and core.counters["scscf-instance-failover"] == 1
    plain = _core(groups=())
    (sent,) = [a for a in _registered(plain, 0, 0.0) if isinstance(a, Forward)]
    assert _sent(plain.receive_response(_answer(sent.message, 503), FIRST, 0.1)) == []
    assert not plain.counters["scscf-instance-503"]
    ((dest, _),) = _sent(_registered(plain, 1, 0.2))
    assert dest == FIRST


def test_a_late_answer_of_the_instance_moved_from_is_the_answer_too():
    """The first instance was slow, not gone: its 200 (to the original branch) after the
    request moved on is the answer, as the second's (to the moved one) would be; the
    second's that comes after it finds no context and goes nowhere (RFC 3261 §16.7:
    one final answer of the branches)."""
    core = _core()
    _registered(core, 0, 0.0)
    (first,) = [a.message for a in core.handle_timer(0.5) if isinstance(a, Forward)]
    for t in (1.5, 3.5):
        core.handle_timer(t)
    (moved,) = [a.message for a in core.handle_timer(7.5) if isinstance(a, Forward)]
    assert moved.top_via.branch == first.top_via.branch + "x2"
    branch = first.top_via.branch
    assert branch in core.pending
    core.receive_response(_answer(first, 200, Expires="600"), FIRST, 7.6)
    assert branch not in core.pending
    late = core.receive_response(_answer(moved, 200, Expires="600"), SECOND, 7.7)
    assert [type(a).__name__ for a in late] == ["DropInput"]


def test_an_answer_with_the_received_of_the_hop_is_matched_by_its_moved_branch():
    core = _core()
    (sent,) = [a for a in _registered(core, 0, 0.0) if isinstance(a, Forward)]
    moved = core.receive_response(_answer(sent.message, 503), FIRST, 0.1)
    (copy,) = [a.message for a in moved if isinstance(a, Forward)]
    text = copy.to_bytes().replace(
        copy.top_via.branch.encode(), copy.top_via.branch.encode() + b";received=10.0.0.1", 1
    )
    from imsaka.sip import parse_message

    branch = sent.message.top_via.branch
    core.receive_response(_answer(parse_message(text), 200, Expires="600"), SECOND, 0.2)
    assert branch not in core.pending
