"""`[scscf].reregistration_sar = "when-needed"`: a protected re-REGISTER that only
refreshes the bindings held is answered from the stored profile without SAR
(TS 23.228 §5.2.2.4 lets the S-CSCF omit the Cx-Put/Cx-Pull on re-registration); every
other REGISTER still goes to the HSS."""

from __future__ import annotations

import tomllib

import pytest

from imsaka.config import ConfigError, parse_config
from imsaka.cscf.scscf_core import AskAssignment, AssignmentType, RegistrarCore

from .fakes import IMPU, FakeHss, FakeUe
from .test_scscf_core import T0, Harness, header, policy, register


@pytest.fixture
def h() -> Harness:
    core = RegistrarCore(policy(reregistration_sar="when-needed"), random_bytes=lambda n: bytes(n))
    return Harness(core, FakeHss())


def sars(h: Harness) -> list[AskAssignment]:
    return [a for a in h.asks if isinstance(a, AskAssignment)]


def test_refresh_is_answered_without_sar(h):
    ue = FakeUe()
    first = register(h, ue)
    assert first.status == 200 and len(sars(h)) == 1
    r = h.send(ue.register(integrity="yes", expires=3600), T0 + 100)
    assert r.status == 200
    assert len(sars(h)) == 1  # no SAR RE_REGISTRATION
    assert h.core.counters["reregister_without_sar"] == 1
    assert h.core.counters["reregistered"] == 1
    # the same answer an SAA would have given: P-Associated-URI, Service-Route, expiry
    assert header(r, "P-Associated-URI") == header(first, "P-Associated-URI")
    assert header(r, "Service-Route") == header(first, "Service-Route")
    assert header(r, "Contact")[0].endswith(";expires=3600")
    # the binding really moved: stored, and its expiry timer follows it
    assert h.stored[IMPU].contacts[ue.contact].expires_at == T0 + 100 + 3600
    assert h.core.next_deadline() == T0 + 100 + 3600


def test_always_sends_sar_on_every_reregistration():
    h = Harness(RegistrarCore(policy()), FakeHss())  # the default
    ue = FakeUe()
    assert register(h, ue).status == 200
    assert h.send(ue.register(integrity="yes"), T0 + 100).status == 200
    assert [a.assignment_type for a in sars(h)] == [
        AssignmentType.REGISTRATION,
        AssignmentType.RE_REGISTRATION,
    ]
    assert h.core.counters["reregister_without_sar"] == 0


def test_deregistration_still_tells_the_hss(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    r = h.send(ue.register(integrity="yes", expires=0), T0 + 5)
    assert r.status == 200
    assert sars(h)[-1].assignment_type is AssignmentType.USER_DEREGISTRATION
    assert IMPU not in h.stored


def test_a_new_binding_goes_to_the_hss(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    # a second UE of the same ISIM registering in full adds a binding: SAR, not a refresh
    ue2 = FakeUe(isim=ue.isim, contact="sip:127.0.0.1:40000")
    assert register(h, ue2, T0 + 10).status == 200
    assert sars(h)[-1].assignment_type is AssignmentType.RE_REGISTRATION


def test_a_lapsed_binding_is_not_refreshed_without_the_hss(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    short = FakeUe(isim=ue.isim, contact="sip:127.0.0.1:40000")
    r401 = h.send(short.register(expires=100), T0 + 1)
    assert (
        h.send(short.answer(header(r401, "WWW-Authenticate")[0], expires=100), T0 + 1).status == 200
    )
    before = len(sars(h))
    # at T0 + 200 the short binding has lapsed (its timer not run yet); the IMPU is
    # still registered through the other one: bringing it back is not a refresh
    assert h.send(short.register(integrity="yes"), T0 + 200).status == 200
    assert len(sars(h)) == before + 1
    assert sars(h)[-1].assignment_type is AssignmentType.RE_REGISTRATION


def test_without_the_profile_the_sar_fetches_it(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    h.core.registrations[IMPU]._user_data = ""  # e.g. a record restored without it
    assert h.send(ue.register(integrity="yes"), T0 + 100).status == 200
    last = sars(h)[-1]
    assert last.assignment_type is AssignmentType.RE_REGISTRATION
    assert not last.user_data_available


def test_reauthenticate_always_wins(h):
    core = RegistrarCore(policy(reregistration_sar="when-needed", reauthenticate="always"))
    h = Harness(core, FakeHss())
    ue = FakeUe()
    assert register(h, ue).status == 200
    assert h.send(ue.register(integrity="yes"), T0 + 100).status == 401


BASE = """
[network]
home_domains = ["home1.net"]
[scscf]
name = "scscf1.home1.net"
{extra}
[scscf.diameter]
host = "scscf1.home1.net"
realm = "home1.net"
[[scscf.diameter.peers]]
host = "hss.home1.net"
address = "127.0.0.1"
port = 3868
"""


def test_config_field():
    assert parse_config(tomllib.loads(BASE.format(extra=""))).scscf.reregistration_sar == "always"
    cfg = parse_config(tomllib.loads(BASE.format(extra='reregistration_sar = "when-needed"')))
    assert cfg.scscf.reregistration_sar == "when-needed"
    with pytest.raises(ConfigError, match=r"\[scscf\]\.reregistration_sar: must be one of"):
        parse_config(tomllib.loads(BASE.format(extra='reregistration_sar = "sometimes"')))


def test_when_needed_refuses_a_shared_binding_store():
    # a record in a shared store may have been written by another S-CSCF that the HSS
    # still names: the SAR is what moves the assignment, so it cannot be skipped there
    extra = 'reregistration_sar = "when-needed"\nbinding_store = "redis://127.0.0.1:6379/0"'
    with pytest.raises(ConfigError, match=r'\[scscf\]\.reregistration_sar: "when-needed" needs'):
        parse_config(tomllib.loads(BASE.format(extra=extra)))


def test_refreshes_leave_one_timer_entry_that_follows_the_binding(h):
    # a refresh moves the expiry later without a new heap entry: the one entry moves on
    # when it surfaces, and the binding expires at its last refresh's expiry, not before
    ue = FakeUe()
    assert register(h, ue).status == 200
    sizes = set()
    for k in range(1, 11):
        assert h.send(ue.register(integrity="yes", expires=3600), T0 + 100 * k).status == 200
        sizes.add(len(h.core._timers))
    # the first refresh (shorter than the 600000 s registered) pushed an earlier entry
    # over the first; none after it
    assert sizes == {2}
    assert h.core.next_deadline() == T0 + 1000 + 3600
    assert h.core._timers[0] == (T0 + 1000 + 3600, IMPU)  # moved on from T0 + 100 + 3600
    assert h.core.next_deadline() == T0 + 1000 + 3600
    assert h.run(h.core.handle_timer(T0 + 1000 + 3599), T0 + 1000 + 3599) == []
    assert IMPU in h.stored and h.core.counters["registration_expired"] == 0
    h.run(h.core.handle_timer(T0 + 1000 + 3600), T0 + 1000 + 3600)
    assert IMPU not in h.stored and h.core.counters["registration_expired"] == 1
    assert sars(h)[-1].assignment_type is AssignmentType.TIMEOUT_DEREGISTRATION
    assert h.core.next_deadline() is None and not h.core._queued


def test_a_refresh_to_a_shorter_expiry_is_due_at_it(h):
    ue = FakeUe()
    assert register(h, ue).status == 200  # 600000 s
    added = h.core.deadlines_added
    assert h.send(ue.register(integrity="yes", expires=120), T0 + 10).status == 200
    assert h.core.deadlines_added == added + 1  # the edge looks again: it is earlier
    assert h.core.next_deadline() == T0 + 130
    h.run(h.core.handle_timer(T0 + 130), T0 + 130)
    assert IMPU not in h.stored and h.core.counters["registration_expired"] == 1


def test_a_timer_entry_outlives_its_deregistration_harmlessly(h):
    # registered, de-registered, registered again later: the first record's entry is
    # stale and the new record expires at its own expiry
    ue = FakeUe()
    assert register(h, ue).status == 200
    assert h.send(ue.register(integrity="yes", expires=0), T0 + 5).status == 200
    assert IMPU not in h.stored and not h.core._queued
    ue2 = FakeUe(isim=ue.isim)
    r401 = h.send(ue2.register(expires=3600), T0 + 10)
    r = h.send(ue2.answer(header(r401, "WWW-Authenticate")[0], expires=3600), T0 + 10)
    assert r.status == 200
    assert h.core.next_deadline() == T0 + 10 + 3600
    h.run(h.core.handle_timer(T0 + 10 + 3600), T0 + 10 + 3600)
    assert IMPU not in h.stored and h.core.counters["registration_expired"] == 1
