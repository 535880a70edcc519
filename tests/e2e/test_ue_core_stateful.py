"""UE registration core (sans-I/O) under random network behaviour (TS 24.229 §5.1.1.2 to
§5.1.1.6; TS 33.203 §6.1, §7.4; RFC 3261 §10.2, §21.5.1).

A hypothesis state machine answers the UE's REGISTERs and reg-event SUBSCRIBEs as a
network might: a valid challenge (real Milenage vectors for the UE's K), one with a bad
MAC (another K), one with a replayed SQN, 200 OK, 403, 5xx with Retry-After, no answer
at all (Timer F); and lets time pass (refresh, retry, temporary set lifetime) and has
the UE de-register. After every step:

- at most one REGISTER of the UE is open, and a new one is sent only when none is;
- a protected REGISTER goes out only while the UE has a set to send it over;
- an SA set the UE sets up is not live already (but for a temporary one it replaces
  with the same SPIs: a new challenge of the challenge response), and only a live set
  is established or released (each once);
- the UE holds at most three sets at once (temporary, established, the one a
  re-authentication replaced).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from imsaka.sip import make_response, parse_message
from imsaka.ue.core import (
    SecurityAssociationsEstablished,
    SecurityAssociationsReleased,
    SendRequest,
    SetUpSecurityAssociations,
    UeState,
)

from .test_ue_core import challenge, make_ue

WRONG_K = bytes(16)
_ANEW = (UeState.IDLE, UeState.FAILED, UeState.DEREGISTERED)


class UeLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ue = make_ue()
        self.now = 0.0
        self.sqn = 32 + 1  # the network's next SQN (IND 1)
        self.register = None  # the open REGISTER
        self.register_protected = False
        self.subscribe = None  # the open SUBSCRIBE
        self.live: dict[int, str] = {}  # the UE's sets by its spi-c: "temporary"/"established"

    # ------------------------------------------------------------------ plumbing

    def _events(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, SendRequest):
                method = ev.request.method
                if method == "REGISTER":
                    assert self.register is None, "a second REGISTER while one is open"
                    if ev.protected:
                        assert self.live, "a protected REGISTER with no SA set"
                    self.register = ev.request
                    self.register_protected = ev.protected
                elif method == "SUBSCRIBE":
                    self.subscribe = ev.request
            elif isinstance(ev, SetUpSecurityAssociations):
                # A new challenge of the challenge response is answered over the same
                # SPIs (the Security-Client of the first REGISTER, repeated): the set
                # set up then replaces the temporary one with them (the SA table
                # discards it), which is not released on its own. Else the SPIs are new.
                spi = ev.sa.spi_uc
                assert self.live.get(spi) in (None, "temporary"), ev
                self.live[spi] = "temporary"
            elif isinstance(ev, SecurityAssociationsEstablished):
                spi = ev.sa.spi_uc
                assert self.live.get(spi) in ("temporary", "established"), ev
                self.live[spi] = "established"
            elif isinstance(ev, SecurityAssociationsReleased):
                spi = ev.sa.spi_uc
                assert spi in self.live, ev
                del self.live[spi]

    def _tick(self) -> float:
        self.now += 0.01
        return self.now

    def _answer_register(self, response) -> None:
        self.register = None
        self._events(self.ue.receive(parse_message(response.to_bytes()), self._tick()))

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: self.ue.state in _ANEW and self.register is None)
    @rule()
    def start(self) -> None:
        """A (new) initial registration: first, after a failure, after de-registering."""
        self._events(self.ue.register(self._tick()))

    @precondition(lambda self: self.register is not None)
    @rule(kind=st.sampled_from(["valid", "valid", "bad-mac", "replayed"]))
    def network_challenges(self, kind: str) -> None:
        if kind == "replayed":
            resp, _, _ = challenge(self.register, sqn=max(33, self.sqn - 32))
        elif kind == "bad-mac":
            resp, _, _ = challenge(self.register, sqn=self.sqn, k=WRONG_K)
        else:
            resp, _, _ = challenge(self.register, sqn=self.sqn)
            self.sqn += 32
        self._answer_register(resp)

    @precondition(lambda self: self.register is not None and self.register_protected)
    @rule()
    def network_accepts(self) -> None:
        """A 200 to a protected REGISTER (a challenge response, a refresh, the
        de-REGISTER): the UE offers sec-agree, so its REGISTER in the clear is never
        accepted as it is."""
        req = self.register
        contact = req.contacts[0] if req.contacts else None
        expires = contact.expires if contact is not None and contact.expires is not None else 0
        headers = [
            ("Service-Route", "<sip:orig@scscf1.home1.net;lr>"),
            ("P-Associated-URI", "<sip:user1_public1@home1.net>"),
        ]
        if contact is not None:
            headers.append(("Contact", f"<{contact.uri}>;expires={expires}"))
        self._answer_register(make_response(req, 200, to_tag="5ef4", headers=headers))

    @precondition(lambda self: self.register is not None)
    @rule(status=st.sampled_from([403, 500, 503, 504]))
    def network_refuses(self, status: int) -> None:
        headers = [("Retry-After", "30")] if status >= 500 else None
        self._answer_register(make_response(self.register, status, headers=headers))

    @precondition(lambda self: self.register is not None)
    @rule()
    def nobody_answers(self) -> None:
        self.register = None
        self._events(self.ue.transaction_timeout(self._tick(), "REGISTER"))

    @precondition(lambda self: self.subscribe is not None)
    @rule(status=st.sampled_from([200, 403, 0]))
    def subscribe_answered(self, status: int) -> None:
        req, self.subscribe = self.subscribe, None
        if status == 0:
            self._events(self.ue.transaction_timeout(self._tick(), "SUBSCRIBE"))
            return
        headers = [("Expires", "600000"), ("Contact", "<sip:127.0.0.1:5080>")]
        resp = make_response(req, status, to_tag="s1", headers=headers if status == 200 else None)
        self._events(self.ue.receive(parse_message(resp.to_bytes()), self._tick()))

    @precondition(lambda self: self.ue.state is UeState.REGISTERED and self.register is None)
    @rule()
    def ue_deregisters(self) -> None:
        self._events(self.ue.deregister(self._tick()))

    @rule(dt=st.sampled_from([1.0, 31.0, 250.0, 600_000.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        deadline = self.ue.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._events(self.ue.handle_timer(self.now))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def sets_within_bounds(self) -> None:
        assert len(self.live) <= 3, self.live
        assert isinstance(self.ue.state, UeState)


UeLifecycle.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_ue_lifecycle = UeLifecycle.TestCase
