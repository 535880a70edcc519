"""The reg-event subscriptions' expiries, sans-I/O (RFC 6665 §4.2.1.2, §4.2.2):
one heap for every subscription, one live entry each, stale entries bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf.regevent import RegSubscription, RegSubscriptions


def sub(n: int, expires_at: float) -> RegSubscription:
    return RegSubscription(
        impu=f"sip:ue{n}@home1.net",
        call_id=f"call-{n}",
        local_tag="s",
        remote_tag=f"r{n}",
        remote_uri="sip:pcscf1.home1.net",
        remote_target="sip:pcscf1.home1.net:5060",
        route_set=(),
        expires_at=expires_at,
    )


def test_due_only_at_the_deadline_and_disarmed_then():
    subs = RegSubscriptions()
    a = subs.add(sub(1, 100.0))
    subs.arm(a)
    assert subs.next_deadline() == 100.0 and subs.armed == 1
    assert subs.pop_due(99.9) == []
    assert subs.pop_due(100.0) == [a]
    assert subs.armed == 0 and a.timer is None and subs.next_deadline() is None


def test_a_later_refresh_keeps_the_entry_an_earlier_one_replaces_it():
    subs = RegSubscriptions()
    a = subs.add(sub(1, 100.0))
    subs.arm(a)
    subs.add(sub(1, 500.0))  # same dialog: a refresh to a later expiry
    subs.arm(a)
    assert subs.expiry_entries == 1  # surfaces at 100, the edge arms it again then
    assert subs.pop_due(100.0) == [a] and a.expires_at == 500.0
    subs.arm(a)
    subs.add(sub(1, 200.0))  # a refresh to an earlier expiry
    subs.arm(a)
    assert subs.armed == 1 and subs.next_deadline() == 200.0
    assert subs.pop_due(200.0) == [a]
    assert subs.pop_due(500.0) == []  # the replaced entry was stale
    assert subs.armed == 0


def test_removing_a_subscription_or_its_impu_drops_its_expiry():
    subs = RegSubscriptions()
    a, b = subs.add(sub(1, 10.0)), subs.add(sub(2, 20.0))
    subs.arm(a)
    subs.arm(b)
    subs.remove(a)
    assert subs.pop_impu(b.impu) == [b]
    assert subs.armed == 0 and len(subs) == 0
    assert subs.pop_due(1e9) == [] and subs.expiry_entries == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from("aer"), st.integers(1, 99))))
def test_stale_entries_stay_bounded_and_nothing_live_is_lost(ops):
    """Whatever mix of arms, refreshes and removals: at most about twice as many heap
    entries as armed subscriptions, and every armed subscription surfaces by its
    expiry exactly once."""
    subs = RegSubscriptions()
    table: dict[int, RegSubscription] = {}
    for n, op, when in ops:
        if op == "r":
            if n in table:
                subs.remove(table.pop(n))
            continue
        s = subs.add(sub(n, float(when)))
        table[n] = s
        subs.arm(s)
        assert subs.expiry_entries <= 2 * subs.armed + 1
    due = subs.pop_due(1e9)
    assert sorted(id(s) for s in due) == sorted(id(s) for s in table.values())
    assert subs.armed == 0
