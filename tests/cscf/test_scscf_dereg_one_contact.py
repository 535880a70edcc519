"""S-CSCF core: a de-registration that removes one of two bindings (RFC 3261 §10.3
step 6, TS 24.229 §5.4.1.4) leaves the other to expire at its own time (§5.4.1.7:
TIMEOUT_DEREGISTRATION when the last binding lapses)."""

from __future__ import annotations

import dataclasses

from imsaka.cscf.scscf_core import AssignmentType, ContactSpec, RegistrarCore

from .fakes import IMPU, FakeHss, FakeUe
from .test_scscf_core import T0, Harness, header, policy

OTHER = "sip:[5555::aaa:bbb:ccc:eee]:1358"


def test_the_binding_left_after_removing_the_earliest_still_expires():
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register(), T0)
    answer = ue.answer(header(r401, "WWW-Authenticate")[0])
    both = (ContactSpec(ue.contact, 1000), ContactSpec(OTHER, 3000))
    assert h.send(dataclasses.replace(answer, contacts=both), T0).status == 200
    assert h.core.next_deadline() == T0 + 1000

    # the earliest binding goes; the other one stays registered
    dereg = dataclasses.replace(
        ue.register(integrity="yes", expires=0), contacts=(ContactSpec(ue.contact, 0),)
    )
    assert h.send(dereg, T0 + 10).status == 200
    assert IMPU in h.stored and h.core.lookup(IMPU, T0 + 10) is not None

    # nothing is due at the removed binding's time ...
    h.run(h.core.handle_timer(T0 + 1001), T0 + 1001)
    assert IMPU in h.stored
    # ... and the remaining binding lapses at its own
    h.run(h.core.handle_timer(T0 + 3001), T0 + 3001)
    assert h.asks[-1].assignment_type is AssignmentType.TIMEOUT_DEREGISTRATION
    assert IMPU not in h.stored and h.core.pending_counts()["registrations"] == 0


def test_a_binding_added_while_the_deregistration_sar_was_out_still_expires():
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register(), T0)
    answer = ue.answer(header(r401, "WWW-Authenticate")[0])
    assert h.send(dataclasses.replace(answer, contacts=(ContactSpec(ue.contact, 1000),)), T0)
    # the de-REGISTER's SAR is out, not answered yet
    dereg = ue.register(integrity="yes", expires=0)
    pending = h.core.handle_register(99, dereg, T0 + 10)
    (sar,) = [a for a in pending if type(a).__name__ == "AskAssignment"]
    # meanwhile the UE registers another contact (a new AKA run)
    r401 = h.send(dataclasses.replace(ue.register(), contacts=(ContactSpec(OTHER, 3000),)), T0 + 11)
    assert r401.status == 401
    again = ue.answer(header(r401, "WWW-Authenticate")[0])
    r200 = h.send(dataclasses.replace(again, contacts=(ContactSpec(OTHER, 3000),)), T0 + 11)
    assert r200.status == 200
    # now the de-registration's SAA: the first contact goes, the new one stays
    replies = h.run(h.core.assignment_done(sar.token, None, T0 + 12), T0 + 12)
    assert [r.status for r in replies] == [200]
    assert IMPU in h.stored
    # its 200 lists the binding that stays (RFC 3261 §10.3 step 8), and the
    # subscribers are told which one went (TS 24.229 §5.4.2.1.2)
    contacts = header(replies[0], "Contact")
    assert f"<{ue.contact}>;expires=0" in contacts
    assert any(c.startswith(f"<{OTHER}>;expires=") and not c.endswith("=0") for c in contacts)
    ((gone, event),) = h.writes[-1].ended
    assert gone.uri == ue.contact and event == "unregistered"
    h.run(h.core.handle_timer(T0 + 1001), T0 + 1001)
    assert IMPU in h.stored
    h.run(h.core.handle_timer(T0 + 11 + 3001), T0 + 11 + 3001)
    assert IMPU not in h.stored and h.core.pending_counts()["registrations"] == 0
