"""The S-CSCF registrar core, sans-I/O: fake clock, fake Cx answers, real AKA arithmetic."""

from __future__ import annotations

import base64
import itertools

import pytest

from imsaka.aka.digest import split_nonce
from imsaka.cscf.scscf_core import (
    AskAssignment,
    AskVectors,
    AssignmentType,
    ContactSpec,
    CxOutcome,
    RegisterRequest,
    RegistrarCore,
    RegistrarPolicy,
    RemoveRegistration,
    Reply,
    StoreRegistration,
)

from .fakes import IMPI, IMPU, REALM, USER_DATA, FakeHss, FakeUe, parse_challenge

ROUTE = "<sip:orig@scscf1.home1.net:5080;lr>"
T0 = 1_000_000.0


def policy(**kw) -> RegistrarPolicy:
    return RegistrarPolicy(realm=REALM, service_route=ROUTE, **kw)


class Harness:
    """Runs the core against the fake HSS: answers every AskVectors/AskAssignment."""

    def __init__(self, core: RegistrarCore, hss: FakeHss) -> None:
        self.core = core
        self.hss = hss
        self.tokens = itertools.count(1)
        self.asks: list = []
        self.stored: dict[str, object] = {}
        self.writes: list[StoreRegistration] = []  # every StoreRegistration, in order
        self.sar_failure: CxOutcome | None = None
        self.mar_failure: CxOutcome | None = None
        self.user_data: dict[str, str] = {}  # an SAA's User-Data by IMPU (else USER_DATA)

    def run(self, actions, now):
        replies = []
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, Reply):
                replies.append(a)
            elif isinstance(a, AskVectors):
                self.asks.append(a)
                if self.mar_failure:
                    queue += self.core.cx_failed(a.token, self.mar_failure, now)
                else:
                    queue += self.core.vectors_received(
                        a.token, self.hss.vectors(a.count, a.resync), now
                    )
            elif isinstance(a, AskAssignment):
                self.asks.append(a)
                if self.sar_failure:
                    queue += self.core.cx_failed(a.token, self.sar_failure, now)
                else:
                    data = self.user_data.get(a.impu, USER_DATA)
                    queue += self.core.assignment_done(a.token, data, now)
            elif isinstance(a, StoreRegistration):
                self.stored[a.registration.impu] = a.registration
                self.writes.append(a)
            elif isinstance(a, RemoveRegistration):
                self.stored.pop(a.impu, None)
        return replies

    def send(self, req, now=T0) -> Reply:
        replies = self.run(self.core.handle_register(next(self.tokens), req, now), now)
        assert len(replies) == 1, replies
        return replies[0]


def header(reply: Reply, name: str) -> list[str]:
    return [v for n, v in reply.headers if n.lower() == name.lower()]


@pytest.fixture
def h() -> Harness:
    return Harness(RegistrarCore(policy(), random_bytes=lambda n: bytes(n)), FakeHss())


def register(h: Harness, ue: FakeUe, now=T0) -> Reply:
    r401 = h.send(ue.register(), now)
    assert r401.status == 401
    return h.send(ue.answer(header(r401, "WWW-Authenticate")[0]), now)


def test_initial_registration_packets_4_and_11(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    assert (r401.status, r401.reason) == (401, "Unauthorized")
    assert isinstance(h.asks[0], AskVectors) and h.asks[0].count == 3 and h.asks[0].impi == IMPI
    (www,) = header(r401, "WWW-Authenticate")
    p = parse_challenge(www)
    assert list(p) == ["realm", "nonce", "algorithm", "ik", "ck"]  # packet 4's order
    assert p["realm"] == REALM and p["algorithm"] == "AKAv1-MD5"
    _rand, _autn, server_data = split_nonce(p["nonce"])
    assert len(server_data) == 8
    assert len(p["ik"]) == 32 and len(p["ck"]) == 32
    int(p["ik"], 16), int(p["ck"], 16)
    r200 = h.send(ue.answer(www))
    assert r200.status == 200
    sar = h.asks[-1]
    assert isinstance(sar, AskAssignment)
    assert sar.assignment_type is AssignmentType.REGISTRATION and not sar.user_data_available
    assert header(r200, "Path") == ["<sip:term@pcscf1.visited1.net;lr>"]
    assert header(r200, "Service-Route") == [ROUTE]
    assert header(r200, "Contact") == [
        "<sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp>;expires=600000"
    ]
    assert header(r200, "Date")[0].endswith(" GMT")
    assert header(r200, "P-Associated-URI") == [
        f"<{IMPU}>, <sip:user1_public2@home1.net>, <tel:+1-212-555-1111>"
    ]
    assert IMPU in h.stored
    assert h.core.pending_counts() == {
        "registrations": 1,
        "challenges": 0,
        "cached_vectors": 2,
        "operations": 0,
        "aliases": 2,  # user1_public2 and the tel URI, registered implicitly
        "failure_records": 0,
        "answered_challenges": 0,
    }
    assert h.core.lookup("tel:+1-212-555-1111", T0).impu == IMPU
    assert h.core.lookup("sip:barred@home1.net", T0) is None


def test_one_vector_per_challenge_from_the_cache_never_reused(h):
    ue = FakeUe()
    nonces = set()
    rands = set()
    for _ in range(4):
        r = h.send(ue.register())
        p = parse_challenge(header(r, "WWW-Authenticate")[0])
        nonces.add(p["nonce"])
        rands.add(split_nonce(p["nonce"])[0])
    assert len(nonces) == 4 and len(rands) == 4
    assert h.hss.mars == 2  # 3 vectors from the first MAR, the fourth needs a second MAR


def test_wrong_response_is_403_and_the_challenge_is_spent(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    www = header(r401, "WWW-Authenticate")[0]
    nonce = parse_challenge(www)["nonce"]
    bad = ue.register(integrity="yes", nonce=nonce, response="0" * 32, algorithm="AKAv1-MD5")
    r = h.send(bad)
    assert r.status == 403
    # The right answer to the spent nonce is not accepted: it gets a fresh challenge.
    again = h.send(ue.answer(www))
    assert again.status == 401
    assert h.core.counters["auth_failed"] == 1


def test_failed_attempt_limit_locks_the_impi(h):
    ue = FakeUe()
    for _ in range(3):
        r401 = h.send(ue.register())
        nonce = parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"]
        assert h.send(ue.register(integrity="yes", nonce=nonce, response="f" * 32)).status == 403
    locked = h.send(ue.register())
    assert locked.status == 403 and "too many" in locked.reason
    later = h.send(ue.register(), T0 + 301)
    assert later.status == 401


def fail_once(h: Harness, ue: FakeUe, now: float) -> None:
    r401 = h.send(ue.register(), now)
    nonce = parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"]
    assert h.send(ue.register(integrity="yes", nonce=nonce, response="f" * 32), now).status == 403


def test_failures_count_within_the_lockout_window_and_are_then_forgotten(h):
    ue = FakeUe()
    fail_once(h, ue, T0)
    fail_once(h, ue, T0 + 100)
    assert h.core.pending_counts()["failure_records"] == 1
    # The record lapses `lockout` (300 s) after its latest failure: the timer says when.
    assert h.core.next_deadline() <= T0 + 100 + 300
    h.run(h.core.handle_timer(T0 + 399), T0 + 399)
    assert h.core.pending_counts()["failure_records"] == 1
    h.run(h.core.handle_timer(T0 + 400), T0 + 400)
    assert h.core.pending_counts()["failure_records"] == 0
    # Two failures long ago do not bring a third one, now, to the limit of three.
    fail_once(h, ue, T0 + 500)
    assert h.send(ue.register(), T0 + 500).status == 401
    assert h.core.counters["locked"] == 0
    # Three within the window still lock; the lock ends with the record.
    fail_once(h, ue, T0 + 600)
    fail_once(h, ue, T0 + 700)
    assert h.send(ue.register(), T0 + 701).status == 403
    assert h.core.counters["locked"] == 1
    h.run(h.core.handle_timer(T0 + 1000), T0 + 1000)
    assert h.core.pending_counts()["failure_records"] == 0
    assert h.send(ue.register(), T0 + 1000).status == 401


def test_failure_table_stays_in_order_of_the_latest_failure(h):
    a, b = FakeUe(), FakeUe(impi="other@home1.net", impu="sip:other@home1.net", call_id="b")
    fail_once(h, a, T0)
    fail_once(h, b, T0 + 10)
    fail_once(h, a, T0 + 20)  # a moves behind b
    h.run(h.core.handle_timer(T0 + 311), T0 + 311)  # b's record lapses, a's does not
    assert h.core.pending_counts()["failure_records"] == 1
    assert h.core.counters["locked"] == 0
    fail_once(h, a, T0 + 312)  # a's third, each within 300 s of the one before: locked
    assert h.send(a.register(), T0 + 313).status == 403
    assert h.send(b.register(), T0 + 313).status == 401  # b's one failure is forgotten


def test_reregistration_integrity_yes_skips_aka(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    mars = h.hss.mars
    cached = h.core.pending_counts()["cached_vectors"]
    r = h.send(ue.register(integrity="yes"), T0 + 100)
    assert r.status == 200
    assert h.hss.mars == mars and h.core.pending_counts()["cached_vectors"] == cached
    sar = h.asks[-1]
    assert sar.assignment_type is AssignmentType.RE_REGISTRATION and sar.user_data_available


def test_reauthenticate_always_challenges_reregistration():
    h = Harness(RegistrarCore(policy(reauthenticate="always")), FakeHss())
    ue = FakeUe()
    assert register(h, ue).status == 200
    r = h.send(ue.register(integrity="yes"), T0 + 100)
    assert r.status == 401
    r2 = h.send(ue.answer(header(r, "WWW-Authenticate")[0]), T0 + 100)
    assert r2.status == 200 and h.asks[-1].assignment_type is AssignmentType.RE_REGISTRATION


def test_integrity_yes_without_registration_is_challenged(h):
    ue = FakeUe()
    assert h.send(ue.register(integrity="yes")).status == 401


def test_integrity_yes_for_another_impi_is_challenged(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    other = FakeUe(impi="intruder@home1.net")
    assert h.send(other.register(integrity="yes")).status == 401


def test_initial_registration_again_is_told_by_state_not_port(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    ue2 = FakeUe(isim=ue.isim, contact="sip:127.0.0.1:40000")  # same ISIM, another port
    r = register(h, ue2, T0 + 10)
    assert r.status == 200
    assert h.asks[-1].assignment_type is AssignmentType.RE_REGISTRATION
    assert len(h.stored[IMPU].contacts) == 2
    # RFC 3261 §10.3 step 8: the 200 lists every binding, the request's own first.
    contacts = header(r, "Contact")
    assert len(contacts) == 2 and contacts[0].startswith("<sip:127.0.0.1:40000>")


def test_resync_with_auts():
    hss = FakeHss()
    h = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    # The ISIM has seen a far higher SQN than the HSS will hand out (e.g. after a SIM swap).
    for ind in range(32):
        ue.isim.sqn_array.accept((1000 << 5) | ind)
    r401 = h.send(ue.register())
    resync_req = ue.answer(header(r401, "WWW-Authenticate")[0])
    assert resync_req.auth.auts
    r = h.send(resync_req)
    assert r.status == 401
    ask = [a for a in h.asks if isinstance(a, AskVectors)][-1]
    assert ask.resync is not None and len(ask.resync) == 30
    assert (
        ask.resync[:16]
        == split_nonce(parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"])[0]
    )
    assert hss.resyncs == 1
    r200 = h.send(ue.answer(header(r, "WWW-Authenticate")[0]))
    assert r200.status == 200


def test_empty_response_means_network_authentication_failed(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    nonce = parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"]
    r = h.send(ue.register(integrity="no", nonce=nonce, response=""))
    assert r.status == 403
    assert h.core.pending_counts()["challenges"] == 0


def test_reg_await_auth_expiry(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    assert h.core.next_deadline() == T0 + 240
    h.run(h.core.handle_timer(T0 + 241), T0 + 241)
    assert h.core.pending_counts()["challenges"] == 0
    r = h.send(ue.answer(header(r401, "WWW-Authenticate")[0]), T0 + 242)
    assert r.status == 401  # a late answer gets a new challenge


def test_expires_below_min_is_423(h):
    r = h.send(FakeUe().register(expires=10))
    assert r.status == 423 and header(r, "Min-Expires") == ["60"]


def test_expires_bounded_by_max():
    h = Harness(RegistrarCore(policy(max_expires=3600)), FakeHss())
    r = register(h, FakeUe())
    assert header(r, "Contact")[0].endswith(";expires=3600")


def test_expires_header_used_when_contact_has_none(h):
    ue = FakeUe()
    r401 = h.send(ue.register(expires=None, expires_header=7200))
    r = h.send(ue.answer(header(r401, "WWW-Authenticate")[0], expires=None, expires_header=7200))
    assert header(r, "Contact")[0].endswith(";expires=7200")


@pytest.mark.parametrize("star", [False, True])
def test_deregistration(h, star):
    ue = FakeUe()
    assert register(h, ue).status == 200
    if star:
        req = ue.register(integrity="yes", star=True, expires=None, expires_header=0)
    else:
        req = ue.register(integrity="yes", expires=0)
    r = h.send(req, T0 + 5)
    assert r.status == 200
    assert h.asks[-1].assignment_type is AssignmentType.USER_DEREGISTRATION
    assert IMPU not in h.stored
    assert h.core.pending_counts()["registrations"] == 0
    assert h.core.pending_counts()["cached_vectors"] == 0  # spares go with the IMPI
    if not star:
        assert header(r, "Contact")[0].endswith(";expires=0")


@pytest.mark.parametrize("star", [False, True])
def test_protected_deregistration_of_nothing_registered_is_200(h, star):
    """§5.4.1.4 over the UE's SAs when the registration already ended (here: de-registered
    once already, as a retransmission reaching a restarted S-CSCF would find it): 200
    with nothing to remove, no challenge, no Cx request. Unprotected, it is challenged."""
    ue = FakeUe()
    assert register(h, ue).status == 200
    assert h.send(ue.register(integrity="yes", expires=0), T0 + 5).status == 200
    asks = len(h.asks)
    if star:
        req = ue.register(integrity="yes", star=True, expires=None, expires_header=0)
    else:
        req = ue.register(integrity="yes", expires=0)
    r = h.send(req, T0 + 6)
    assert r.status == 200 and len(h.asks) == asks
    assert h.core.counters["deregister_not_registered"] == 1
    assert h.send(ue.register(integrity="no", expires=0), T0 + 7).status == 401


@pytest.mark.parametrize("reauthenticate", ["never", "always"])
def test_protected_deregistration_of_a_contact_gone_while_another_stays_is_200(reauthenticate):
    """A UE's de-REGISTER over its SAs for a contact no longer registered, another
    contact of the IMPU live (the copy of a de-REGISTER another S-CSCF sharing the store
    answered, its 200 lost): 200 listing what stays, no challenge even with
    `reauthenticate = "always"` (before: 401, and the UE's answer met a P-CSCF that had
    let the contact's SAs go; chaos seed 9960). Unprotected, it is challenged."""
    h = Harness(RegistrarCore(policy(reauthenticate=reauthenticate)), FakeHss())
    ue, other = FakeUe(), FakeUe(contact="sip:[5555::aaa:bbb:ccc:eee]:1357", call_id="c2")
    assert register(h, ue).status == 200
    assert register(h, other).status == 200
    r = h.send(other.register(integrity="yes", expires=0), T0 + 5)
    assert r.status == (401 if reauthenticate == "always" else 200)
    if r.status == 401:  # (the removal itself is authenticated)
        r = h.send(other.answer(header(r, "WWW-Authenticate")[0], expires=0), T0 + 5)
    assert r.status == 200 and len(header(r, "Contact")) == 1
    gone = h.core.counters["deregister_not_registered"]
    r = h.send(other.register(integrity="yes", expires=0), T0 + 6)
    assert r.status == 200, r
    assert [c for c in header(r, "Contact") if "ccc:ddd" in c]
    # ("never" takes it as any protected REGISTER: no challenge there either)
    assert h.core.counters["deregister_not_registered"] == gone + (reauthenticate == "always")
    assert h.send(other.register(integrity="no", expires=0), T0 + 7).status == 401


def test_star_with_nonzero_expires_is_400(h):
    r = h.send(FakeUe().register(star=True, expires=None, expires_header=3600))
    assert r.status == 400


def test_binding_expiry_sends_timeout_deregistration():
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    assert register(h, FakeUe()).status == 200
    assert h.core.next_deadline() == T0 + 3600
    h.run(h.core.handle_timer(T0 + 3601), T0 + 3601)
    assert h.asks[-1].assignment_type is AssignmentType.TIMEOUT_DEREGISTRATION
    assert IMPU not in h.stored and h.core.pending_counts()["registrations"] == 0
    assert h.core.pending_counts()["operations"] == 0


def test_reregistration_pushes_expiry_back():
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    ue = FakeUe()
    assert register(h, ue).status == 200
    assert h.send(ue.register(integrity="yes"), T0 + 1800).status == 200
    h.run(h.core.handle_timer(T0 + 3601), T0 + 3601)
    assert IMPU in h.stored
    assert h.core.next_deadline() == T0 + 1800 + 3600


def test_hss_unavailable_is_504_with_retry_after(h):
    h.mar_failure = CxOutcome.UNAVAILABLE
    r = h.send(FakeUe().register())
    assert r.status == 504 and header(r, "Retry-After")


def test_user_unknown_is_403(h):
    h.mar_failure = CxOutcome.USER_UNKNOWN
    r = h.send(FakeUe().register())
    assert r.status == 403 and "unknown" in r.reason


def test_sar_failure_is_403_and_nothing_stored(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    h.sar_failure = CxOutcome.REFUSED
    assert h.send(ue.answer(header(r401, "WWW-Authenticate")[0])).status == 403
    assert not h.stored


def test_network_initiated_deregistration(h):
    assert register(h, FakeUe()).status == 200
    n, actions = h.core.network_deregister(IMPI, None, T0 + 1)
    assert n == 1 and isinstance(actions[0], RemoveRegistration)
    assert h.core.pending_counts() == {
        "registrations": 0,
        "challenges": 0,
        "cached_vectors": 0,
        "operations": 0,
        "aliases": 0,
        "failure_records": 0,
        "answered_challenges": 0,
    }


WORK = "sip:user1_work@home1.net"
WORK_DATA = (
    f'<?xml version="1.0" encoding="UTF-8"?><IMSSubscription><PrivateID>{IMPI}</PrivateID>'
    f"<ServiceProfile><PublicIdentity><Identity>{WORK}</Identity></PublicIdentity>"
    "</ServiceProfile></IMSSubscription>"
)


def test_an_rtr_naming_one_implicit_set_leaves_the_impis_others_alone():
    """The RTR names the IMPUs of one implicit set (TS 29.228 §6.1.3): that set's
    registration goes; the IMPI's registration of another set stays, so do its open
    challenge there and its spare vectors. Before the twelfth session (2026-11-29)
    every challenge and spare vector of the IMPI went with any RTR, and the other
    set's answer was challenged again."""
    h = Harness(RegistrarCore(policy(vectors_per_request=5)), FakeHss())
    h.user_data[WORK] = WORK_DATA
    assert register(h, FakeUe()).status == 200
    work = FakeUe(impu=WORK, call_id="work-1")
    assert register(h, work).status == 200
    assert h.core.pending_counts()["registrations"] == 2
    asks = len(h.asks)
    r401 = h.send(work.register(), T0 + 1)  # reauthentication of the work set
    assert r401.status == 401
    spare = h.core.pending_counts()["cached_vectors"]
    assert spare > 0
    n, actions = h.core.network_deregister(IMPI, [IMPU], T0 + 2)
    assert n == 1 and [a.impu for a in actions] == [IMPU]
    counts = h.core.pending_counts()
    assert counts["registrations"] == 1 and counts["challenges"] == 1
    assert counts["cached_vectors"] == spare
    assert h.send(work.answer(header(r401, "WWW-Authenticate")[0]), T0 + 3).status == 200
    assert not [a for a in h.asks[asks:] if isinstance(a, AskVectors)]  # no MAR since
    n, _actions = h.core.network_deregister(IMPI, [WORK], T0 + 4)
    assert n == 1 and h.core.pending_counts()["cached_vectors"] == 0


def test_akav2_md5():
    hss = FakeHss(algorithm="AKAv2-MD5")
    h = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    r401 = h.send(ue.register())
    assert parse_challenge(header(r401, "WWW-Authenticate")[0])["algorithm"] == "AKAv2-MD5"
    assert h.send(ue.answer(header(r401, "WWW-Authenticate")[0])).status == 200


def test_akav2_response_computed_as_akav1_is_refused():
    hss = FakeHss(algorithm="AKAv2-MD5")
    h = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    r401 = h.send(ue.register())
    www = header(r401, "WWW-Authenticate")[0].replace("AKAv2-MD5", "AKAv1-MD5")
    assert h.send(ue.answer(www)).status == 403  # PITFALLS: AKAv2 done as AKAv1


def test_barred_identity_is_refused(h):
    ue = FakeUe(impu="sip:barred@home1.net")
    r401 = h.send(ue.register())
    assert h.send(ue.answer(header(r401, "WWW-Authenticate")[0])).status == 403


def test_bad_user_data_is_500():
    core = RegistrarCore(policy())
    ue = FakeUe()
    h = Harness(core, FakeHss())
    r401 = h.send(ue.register())
    actions = core.handle_register(99, ue.answer(header(r401, "WWW-Authenticate")[0]), T0)
    (sar,) = actions
    (reply,) = core.assignment_done(sar.token, "<not-xml", T0)
    assert reply.status == 500


def test_malformed_auts_is_403(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    nonce = parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"]
    r = h.send(ue.register(integrity="yes", nonce=nonce, auts="!!notbase64"))
    assert r.status == 403


def test_challenge_for_another_impi_does_not_match(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    www = header(r401, "WWW-Authenticate")[0]
    thief = FakeUe(impi="other@home1.net", isim=ue.isim)
    assert h.send(thief.answer(www)).status == 401


def test_stray_cx_answers_are_counted_not_raised(h):
    assert h.core.vectors_received(12345, [], T0) == []
    assert h.core.assignment_done(12345, None, T0) == []
    assert h.core.cx_failed(12345, CxOutcome.REFUSED, T0) == []
    assert h.core.counters["stray_maa"] == 1


def test_many_users_leave_nothing_behind():
    hss = FakeHss()
    h = Harness(RegistrarCore(policy()), hss)
    for i in range(50):
        ue = FakeUe(impi=f"u{i}@home1.net", impu=f"sip:u{i}@home1.net")
        assert register(h, ue).status == 200
        assert h.send(ue.register(integrity="yes", expires=0), T0 + 1).status == 200
    counts = h.core.pending_counts()
    assert counts["registrations"] == 0 and counts["challenges"] == 0 and counts["operations"] == 0
    assert counts["aliases"] == 0


def test_nonce_is_base64_of_rand_autn(h):
    r = h.send(FakeUe().register())
    nonce = parse_challenge(header(r, "WWW-Authenticate")[0])["nonce"]
    raw = base64.b64decode(nonce)
    assert len(raw) == 40


def test_wrong_response_for_an_unregistered_user_sends_authentication_failure(h):
    ue = FakeUe()
    r401 = h.send(ue.register())
    nonce = parse_challenge(header(r401, "WWW-Authenticate")[0])["nonce"]
    assert h.send(ue.register(integrity="yes", nonce=nonce, response="1" * 32)).status == 403
    assert h.asks[-1].assignment_type is AssignmentType.AUTHENTICATION_FAILURE
    assert h.core.pending_counts()["operations"] == 0


def test_reg_await_auth_expiry_sends_authentication_timeout(h):
    h.send(FakeUe().register())
    h.run(h.core.handle_timer(T0 + 241), T0 + 241)
    assert h.asks[-1].assignment_type is AssignmentType.AUTHENTICATION_TIMEOUT


def test_expiry_of_a_challenge_for_a_registered_user_sends_no_sar(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    # reauthenticate="never", but a plain "no" REGISTER is always challenged
    assert h.send(ue.register(integrity="no"), T0 + 10).status == 401
    n = len(h.asks)
    h.run(h.core.handle_timer(T0 + 300), T0 + 300)
    assert len(h.asks) == n


def test_out_of_order_register_is_refused(h):
    ue = FakeUe()
    assert register(h, ue).status == 200  # CSeq 2
    stale = ue.register(integrity="yes")
    stale = RegisterRequest(**{**{f: getattr(stale, f) for f in stale.__slots__}, "cseq": 2})
    assert h.send(stale, T0 + 1).status == 500
    assert h.send(ue.register(integrity="yes"), T0 + 2).status == 200


def test_lookup_follows_expiry(h):
    assert register(h, FakeUe()).status == 200
    assert h.core.lookup(IMPU, T0 + 10) is not None
    assert h.core.lookup("sip:user1_public2@home1.net", T0 + 10) is not None
    assert h.core.lookup(IMPU, T0 + 600001) is None
    h.run(h.core.handle_timer(T0 + 600001), T0 + 600001)
    assert h.core.pending_counts()["aliases"] == 0


def test_protected_reregistration_adding_a_contact_is_challenged(h):
    ue = FakeUe()
    assert register(h, ue).status == 200
    other = FakeUe(isim=ue.isim, contact="sip:127.0.0.1:40000", cseq=ue.cseq)
    # TS 24.229 §5.4.1.2.2: a new contact is never added without a new AKA run; the
    # S-CSCF re-authenticates (step 1) rather than refusing it (step 2's 403).
    r = h.send(other.register(integrity="yes"), T0 + 5)
    assert r.status == 401
    assert h.core.counters["new_contact_reauthenticated"] == 1
    assert len(h.stored[IMPU].contacts) == 1
    ok = h.send(other.answer(header(r, "WWW-Authenticate")[0]), T0 + 6)
    assert ok.status == 200
    assert sorted(h.stored[IMPU].contacts) == sorted([ue.contact, other.contact])
    # The contact registered before, refreshed over the SAs, needs no AKA run.
    ue.cseq = other.cseq
    assert h.send(ue.register(integrity="yes"), T0 + 7).status == 200
    assert h.core.counters["reregister_without_aka"] == 1


def test_challenge_response_lost_in_a_restart_is_challenged_again(h):
    """A UE restarts (new contact) and answers its challenge over the new temporary
    SAs; meanwhile the S-CSCF restarted and lost the challenge, while its old contact
    lives on in the shared store. Seen in the lifecycle runner (seed 5105): 403 then,
    and the UE could not register until its old contact lapsed."""
    ue = FakeUe()
    assert register(h, ue).status == 200
    restarted = FakeUe(isim=ue.isim, contact="sip:127.0.0.1:40002", call_id="after-restart")
    r401 = h.send(restarted.register(), T0 + 10)
    assert r401.status == 401
    h.core._challenges.clear()  # what a restart of the S-CSCF loses
    again = h.send(restarted.answer(header(r401, "WWW-Authenticate")[0]), T0 + 11)
    assert again.status == 401
    ok = h.send(restarted.answer(header(again, "WWW-Authenticate")[0]), T0 + 12)
    assert ok.status == 200
    assert restarted.contact in h.stored[IMPU].contacts


def test_the_challenge_response_again_after_a_restart_is_answered_from_the_record():
    """With a shared store (the branch kept), the challenge response that made the
    binding, retransmitted to an S-CSCF that restarted since (its nonce gone), is
    answered 200 from the record: no new challenge (with `reauthenticate = "always"`
    that made a UE give up after its third), no MAR, no SAR. Another REGISTER with a
    new branch is challenged as before."""
    import dataclasses

    h = Harness(RegistrarCore(policy(reauthenticate="always")), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register())
    response = dataclasses.replace(
        ue.answer(header(r401, "WWW-Authenticate")[0]), branch="z9hG4bKchallenge-response"
    )
    assert h.send(response, T0 + 1).status == 200
    asks = len(h.asks)
    h.core._challenges.clear()  # what a restart loses (the record is in the store)
    again = h.send(response, T0 + 2)
    assert again.status == 200 and len(h.asks) == asks
    assert h.core.counters["retransmission_answered_from_store"] == 1
    other = dataclasses.replace(response, branch="z9hG4bKanother")
    assert h.send(other, T0 + 3).status == 401


def test_spare_vectors_expire_unused(h):
    ue = FakeUe()
    h.send(ue.register())
    assert h.core.pending_counts()["cached_vectors"] == 2 and h.hss.mars == 1
    h.send(ue.register(), T0 + 3601)  # both spares too old: a new MAR
    assert h.hss.mars == 2
    assert h.core.counters["vector_expired"] == 2


def test_single_vector_maa_leaves_no_empty_cache_entry():
    h = Harness(RegistrarCore(policy(vectors_per_request=1)), FakeHss())
    for i in range(5):
        h.send(FakeUe(impi=f"u{i}@home1.net", impu=f"sip:u{i}@home1.net").register())
    assert not h.core._vectors


def test_hss_error_is_500_not_403(h):
    h.mar_failure = CxOutcome.HSS_ERROR
    r = h.send(FakeUe().register())
    assert r.status == 500 and header(r, "Retry-After") == ["30"]


def test_retry_after_comes_from_the_config():
    from imsaka.cscf.scscf_core import RegistrarPolicy

    class Cfg:
        realm = "home1.net"
        server_name = "sip:s.home1.net:5080"
        service_route = "<sip:orig@s;lr>"
        reauthenticate = "never"
        reregistration_sar = "always"
        vectors_per_request = 1
        max_failed_attempts = 3
        lockout = 300
        min_expires = 1
        max_expires = 600000
        default_expires = 600000
        reg_await_auth = 240
        vector_lifetime = 3600
        retry_after = 2

    assert RegistrarPolicy.from_config(Cfg).retry_after == 2


def test_outcome_mapping():
    from imsaka.cscf.scscf import outcome_of
    from imsaka.diameter import cx

    def maa(**kw):
        return cx.MultimediaAuthAnswer(session_id="s", origin_host="h", origin_realm="r", **kw)

    assert outcome_of(maa(result_code=cx.DIAMETER_SUCCESS)) is None
    assert (
        outcome_of(maa(experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN))
        is CxOutcome.USER_UNKNOWN
    )
    assert outcome_of(maa(result_code=cx.DIAMETER_UNABLE_TO_COMPLY)) is CxOutcome.HSS_ERROR
    assert outcome_of(maa(result_code=cx.DIAMETER_AUTHORIZATION_REJECTED)) is CxOutcome.REFUSED
    assert outcome_of(maa(result_code=cx.DIAMETER_TOO_BUSY)) is CxOutcome.UNAVAILABLE
    assert outcome_of(maa()) is CxOutcome.UNAVAILABLE


def test_contact_floods_are_bounded():
    h = Harness(RegistrarCore(policy(max_contacts=2)), FakeHss())
    ue = FakeUe()
    many = ue.register()
    many = RegisterRequest(
        **{
            **{f: getattr(many, f) for f in many.__slots__},
            "contacts": tuple(ContactSpec(f"sip:10.0.0.{i}", 3600) for i in range(3)),
        }
    )
    assert h.send(many).status == 400
    assert register(h, ue).status == 200
    for i, expected in ((1, 200), (2, 403)):
        other = FakeUe(isim=ue.isim, contact=f"sip:10.0.1.{i}", call_id=f"x{i}")
        assert register(h, other, T0 + i).status == expected


def test_reregistration_with_the_same_user_data_does_not_parse_it_again(h, monkeypatch):
    """The SAA of a re-registration brings the document the registration already holds
    (or none, with User-Data-Already-Available): the implicit set and its barring are
    those of the live record, not parsed again; another document is parsed and checked."""
    import imsaka.cscf.scscf_core as scscf_core

    ue = FakeUe()
    assert register(h, ue).status == 200
    associated = header(h.send(ue.register(integrity="yes"), T0 + 1), "P-Associated-URI")
    parsed: list = []
    real = scscf_core.parse_user_data
    monkeypatch.setattr(scscf_core, "parse_user_data", lambda xml: parsed.append(xml) or real(xml))
    for n in range(2, 5):
        r = h.send(ue.register(integrity="yes"), T0 + n)
        assert r.status == 200 and header(r, "P-Associated-URI") == associated
    assert parsed == []
    # The HSS now bars the registered identity: the new document is parsed and refused.
    barred = USER_DATA.replace(
        f"<BarringIndication>0</BarringIndication><Identity>{IMPU}</Identity>",
        f"<BarringIndication>1</BarringIndication><Identity>{IMPU}</Identity>",
    )
    assert barred != USER_DATA
    (sar,) = h.core.handle_register(999, ue.register(integrity="yes"), T0 + 10)
    (reply,) = h.core.assignment_done(sar.token, barred, T0 + 10)
    assert reply.status == 403 and parsed == [barred]


def test_date_header_is_formatted_once_per_second():
    from email.utils import formatdate

    from imsaka.cscf.scscf_core import http_date

    for now in (T0, T0 + 0.2, T0 + 0.999, T0 + 1, T0 + 1.5, 0.0, 1_700_000_000.75, T0):
        assert http_date(now) == formatdate(now, usegmt=True)


def test_an_answer_to_another_scscfs_challenge_is_challenged_with_a_fresh_vector():
    """Our nonces carry a tag of our Server-Name in their server data (RFC 3310 §3.2).
    A registered UE's refresh carrying our own last nonce is re-authenticated with a
    spare vector (`reauthenticate = "always"`); one answering another S-CSCF's challenge
    (the I-CSCF moved it here) gets a vector from a MAR, which tells the HSS that the
    authentication under way is here, so that the answer is sent here. Before
    2026-11-29 (ninth session) a spare served, the HSS still named the other S-CSCF, and
    the UE met a third challenge there (lifecycle_chaos --devices 2 --scscf-moves,
    seed 11102)."""
    from imsaka.cscf.scscf_core import nonce_tag_for

    tag = nonce_tag_for("sip:scscf1.home1.net:5080")
    assert len(tag) == 4 and tag != nonce_tag_for("sip:scscf2.home1.net:5081")
    core = RegistrarCore(policy(reauthenticate="always", nonce_tag=tag), random_bytes=bytes)
    h = Harness(core, FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register())
    www = header(r401, "WWW-Authenticate")[0]
    nonce = parse_challenge(www)["nonce"]
    assert split_nonce(nonce)[2][:4] == tag and len(split_nonce(nonce)[2]) == 8
    assert h.send(ue.answer(www)).status == 200 and h.hss.mars == 1
    # our own last nonce: a spare vector
    own = ue.register(integrity="yes", nonce=nonce, response="0" * 32)
    assert h.send(own).status == 401 and h.hss.mars == 1
    # another S-CSCF's nonce: a MAR (the spares it would have used go)
    rand, autn, _ = split_nonce(nonce)
    theirs = base64.b64encode(rand + autn + nonce_tag_for("sip:scscf2.home1.net:5081")).decode()
    foreign = ue.register(integrity="yes", nonce=theirs, response="0" * 32)
    assert h.send(foreign).status == 401 and h.hss.mars == 2
    assert core.counters["vectors_fresh_for_foreign_nonce"] == 1
