"""The audit of registrations a P-CSCF takes back after a crash or a long stop
(`PcscfCore.adopt(..., audit=True)`, RFC 6665 §4.1.2.2): each restored reg-event
subscription is refreshed at once, `AUDIT_BATCH` every `AUDIT_PAUSE` s; the answer
(or, after a 481, the new subscription's) tells whether the S-CSCF still holds the
registration. Sans-I/O: the core's actions read directly."""

from __future__ import annotations

from pathlib import Path

from imsaka.config import load_config
from imsaka.cscf.pcscf import AUDIT_BATCH, AUDIT_PAUSE, Forward, PcscfCore, RegState
from imsaka.sip import make_response, parse_message

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imsaka.toml"
ROUTE = "<sip:orig@127.0.0.1:6060;lr>"


def _core_with(n: int, now: float) -> PcscfCore:
    cfg = load_config(EXAMPLE)
    core = PcscfCore(cfg.pcscf, network=cfg.network)
    core.dereg_grace = 2.0
    for i in range(n):
        impi = f"u{i}@home1.net"
        reg = core.registration_type(
            impi=impi,
            impu=f"sip:u{i}@home1.net",
            ue_host="127.0.0.9",
            state=RegState.REGISTERED,
            expires_at=now + 600.0,
            service_route=(ROUTE,),
        )
        sub = core.subscription_type(f"call-{i}", impi, reg.impu, f"tag{i}", now - 100)
        sub.remote_tag = f"s{i}"
        sub.remote_target = "sip:127.0.0.1:6060"
        sub.granted(600_000, now - 100)  # its refresh far away, past the registration
        if i == 1:
            sub.refresh_at = 0.0  # its refresh was under way at the crash
        core.adopt(reg, sub, now, audit=True)
    return core


def _subscribes(actions: list) -> list:
    return [
        a.message
        for a in actions
        if isinstance(a, Forward) and getattr(a.message, "method", "") == "SUBSCRIBE"
    ]


def _answer(request, status: int):
    return parse_message(make_response(request, status, to_tag="s").to_bytes())


def test_taken_back_subscriptions_are_refreshed_in_paced_batches():
    n = 2 * AUDIT_BATCH + 7
    core = _core_with(n, 100.0)
    first = _subscribes(core.handle_timer(100.0))
    assert len(first) == AUDIT_BATCH
    assert all(m.get("Expires") != "0" and m.cseq.seq == 2 for m in first)  # refreshes
    assert _subscribes(core.handle_timer(100.0 + AUDIT_PAUSE / 2)) == []
    assert len(_subscribes(core.handle_timer(100.0 + AUDIT_PAUSE))) == AUDIT_BATCH
    assert len(_subscribes(core.handle_timer(100.0 + 2 * AUDIT_PAUSE))) == 7
    assert core.counters["reg-subscription-audited"] == n
    # without the audit nothing is sent before the subscription's own refresh point
    cfg = load_config(EXAMPLE)
    plain = PcscfCore(cfg.pcscf, network=cfg.network)
    reg = plain.registration_type(
        impi="a@home1.net", impu="sip:a@home1.net", ue_host="127.0.0.9",
        state=RegState.REGISTERED, expires_at=700.0, service_route=(ROUTE,),
    )  # fmt: skip
    sub = plain.subscription_type("call-a", "a@home1.net", reg.impu, "t", 0.0)
    sub.remote_tag, sub.remote_target = "s", "sip:127.0.0.1:6060"
    sub.granted(600_000, 0.0)
    plain.adopt(reg, sub, 100.0)
    assert _subscribes(plain.handle_timer(100.0)) == []


def test_the_answer_keeps_the_registration_or_ends_it_after_the_grace():
    core = _core_with(3, 100.0)
    assert core.subscription_of("u1@home1.net").refresh_at == 100.0
    kept, gone, moved = _subscribes(core.handle_timer(100.0))
    # 200: still registered there; the NOTIFY it brings tells the rest
    core.receive_response(_answer(kept, 200), ("127.0.0.1", 6060), 100.1)
    # 480: the S-CSCF holds no registration of the IMPU; it goes after dereg_grace
    core.receive_response(_answer(gone, 480), ("127.0.0.1", 6060), 100.1)
    # 481: the subscription is gone there; a new one is made, and its 480 tells
    actions = core.receive_response(_answer(moved, 481), ("127.0.0.1", 6060), 100.1)
    (again,) = _subscribes(actions)
    assert again.call_id != moved.call_id and again.cseq.seq == 1
    core.receive_response(_answer(again, 480), ("127.0.0.1", 6060), 100.2)
    assert core.counters["audit-found-not-registered"] == 2
    core.handle_timer(102.0)
    assert len(core.registrations) == 3  # not before dereg_grace (2 s) passed
    core.handle_timer(102.3)
    assert set(core.registrations) == {"u0@home1.net"}
    assert core.counters["network-deregistered"] == 2
    # the audit is over: a later refusal of a refresh keeps the registration, as before
    reg = core.registrations["u0@home1.net"]
    assert reg.state is RegState.REGISTERED and not core._audit
