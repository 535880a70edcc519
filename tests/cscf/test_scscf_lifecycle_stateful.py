"""S-CSCF registrar core (sans-I/O): one subscriber's registration under interleaved
events (TS 24.229 §5.4.1; TS 33.203 §6.1; TS 29.228 §6.1.2, §6.1.3), real AKA arithmetic
against the fake HSS.

A hypothesis state machine sends REGISTERs in the clear, challenge responses (right,
wrong, empty as after a MAC failure; AUTS from an ISIM whose SQN ran ahead),
protected re-REGISTERs and de-REGISTERs; the HSS answers each MAR/SAR late, in any
order, or fails it (unavailable, error, user unknown); the HSS ends the registration
(RTR); time passes. After every step each REGISTER has had at most one answer, with a
status the procedures allow. At the end, once every Cx request is answered and every
lifetime has run, every REGISTER has had its answer and nothing is left: no
registration, challenge, Cx operation or alias.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from imsaka.aka.isim import Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.sqn import SqnArray
from imsaka.cscf.scscf_core import (
    AskAssignment,
    AskVectors,
    CxOutcome,
    RegistrarCore,
    RegistrarPolicy,
    Reply,
)

from .fakes import IMPI, OPC, REALM, USER_DATA, FakeHss, FakeUe, K, parse_challenge

ROUTE = "<sip:orig@scscf1.home1.net:5080;lr>"
T0 = 1_000_000.0
# 200; 401 challenge; 403 refused (wrong RES, MAC failure, lockout, Cx refusal);
# 500 / 504 with Retry-After (HSS error / unavailable)
ALLOWED = {200, 401, 403, 500, 504}
FAILURES = [CxOutcome.UNAVAILABLE, CxOutcome.HSS_ERROR, CxOutcome.USER_UNKNOWN]


class ScscfLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        rng = random.Random(2026)
        self.core = RegistrarCore(
            RegistrarPolicy(realm=REALM, service_route=ROUTE), random_bytes=rng.randbytes
        )
        self.hss = FakeHss()
        self.ue = FakeUe()
        self.now = T0
        self.tokens = itertools.count(1)
        self.awaiting: set[int] = set()  # REGISTERs not answered yet
        self.cx: list = []  # MAR/SAR asked, not answered yet
        self.www: str | None = None  # the last challenge the UE got

    # ------------------------------------------------------------------ plumbing

    def _run(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Reply):
                assert a.token in self.awaiting, a  # one answer per REGISTER
                self.awaiting.discard(a.token)
                assert a.status in ALLOWED, a
                if a.status == 401:
                    (self.www,) = [v for n, v in a.headers if n.lower() == "www-authenticate"]
                if a.status in (500, 504):
                    assert any(n == "Retry-After" for n, _ in a.headers), a
            elif isinstance(a, AskVectors | AskAssignment):
                self.cx.append(a)

    def _send(self, req) -> None:
        self.now += 0.01
        token = next(self.tokens)
        self.awaiting.add(token)
        self._run(self.core.handle_register(token, req, self.now))

    def _answer(self, ask, failure: CxOutcome | None = None) -> None:
        self.now += 0.01
        if failure is not None:
            self._run(self.core.cx_failed(ask.token, failure, self.now))
        elif isinstance(ask, AskVectors):
            vectors = self.hss.vectors(ask.count, ask.resync)
            self._run(self.core.vectors_received(ask.token, vectors, self.now))
        else:
            self._run(self.core.assignment_done(ask.token, USER_DATA, self.now))

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: self.www is None)
    @rule()
    def register_in_the_clear(self) -> None:
        self._send(self.ue.register(integrity="no"))

    @precondition(lambda self: self.www is not None)
    @rule(how=st.sampled_from(["right", "wrong", "empty"]))
    def answer_the_challenge(self, how: str) -> None:
        www, self.www = self.www, None
        if how == "empty":
            # TS 24.229 §5.1.1.5.3: the UE found the network's MAC wrong
            nonce = parse_challenge(www)["nonce"]
            self._send(self.ue.register(integrity="no", nonce=nonce, response=""))
            return
        req = self.ue.answer(www)  # AUTS when the ISIM's SQN is ahead
        if how == "wrong" and req.auth.response:
            wrong = ("0" if req.auth.response[0] != "0" else "1") + req.auth.response[1:]
            req = dataclasses.replace(req, auth=dataclasses.replace(req.auth, response=wrong))
        self._send(req)

    @rule()
    def isim_runs_ahead(self) -> None:
        """The ISIM's SQN ahead of the HSS's (a SIM swap, another HSS): its next answer
        is AUTS, and the S-CSCF resynchronises (TS 33.102 §6.3.5)."""
        self.ue.isim = Isim(Milenage(K, opc=OPC), SqnArray(entries=[1_000_000] * 32))

    @rule()
    def reregister_protected(self) -> None:
        self._send(self.ue.register(integrity="yes"))

    @rule()
    def deregister(self) -> None:
        self._send(self.ue.register(integrity="yes", expires=0))

    @precondition(lambda self: self.cx)
    @rule(data=st.data(), failure=st.sampled_from([None, None, *FAILURES]))
    def hss_answers_one(self, data, failure: CxOutcome | None) -> None:
        ask = self.cx.pop(data.draw(st.integers(0, len(self.cx) - 1)))
        self._answer(ask, failure)

    @precondition(lambda self: self.cx)
    @rule()
    def hss_answers_all(self) -> None:
        while self.cx:
            self._answer(self.cx.pop(0))

    @rule()
    def hss_ends_the_registration(self) -> None:
        self.now += 0.01
        _, actions = self.core.network_deregister(IMPI, None, self.now)
        self._run(actions)

    @rule(dt=st.sampled_from([1.0, 100.0, 300.0, 700_000.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self._run(self.core.handle_timer(self.now))

    def teardown(self) -> None:
        for _ in range(4):
            while self.cx:
                self._answer(self.cx.pop(0))
            self.now += 10_000_000.0
            self._run(self.core.handle_timer(self.now))
        assert not self.cx and not self.awaiting, (self.cx, self.awaiting)
        left = self.core.pending_counts()
        assert left["registrations"] == left["challenges"] == 0, left
        assert left["operations"] == left["aliases"] == left["failure_records"] == 0, left


ScscfLifecycle.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_scscf_lifecycle = ScscfLifecycle.TestCase
