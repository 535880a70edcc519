"""Memory of the S-CSCF's reg-event subscriptions (issue 7: < 8 KiB per registered UE
with the UE's own subscription, TS 24.229 §5.1.1.3): what one IMPU's two subscriptions
(its P-CSCF's and its UE's) cost, the strings they share with the registration, and the
expiry heap whose entries are the subscriptions themselves."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from imsaka.cscf.regevent import RegSubscription, RegSubscriptions
from imsaka.cscf.registrar import ContactBinding, Registration

PCSCF_URI = "sip:pcscf1.home1.net:5060"


def _own(text: str) -> str:
    """An equal string object of its own, as one parsed off a message is."""
    return (text + ".")[:-1]


def _registration(i: int) -> Registration:
    impu = f"sip:user{i}_public1@home1.net"
    contact = f"sip:10.0.{i // 250}.{i % 250}:{5000 + i}"
    reg = Registration(impu=impu, impi=f"user{i}_private@home1.net", associated=(impu,))
    reg.contacts[contact] = ContactBinding(contact, 1e9)
    return reg


def _subscriptions(reg: Registration, rng: random.Random, n: int):
    """The P-CSCF's subscription to `reg`, then its UE's (From = IMPU, Contact = the
    registered contact, Record-Route = the P-CSCF)."""

    def hexs(k: int) -> str:
        return f"{rng.getrandbits(8 * k):0{2 * k}x}"

    contact = next(iter(reg.contacts))
    yield RegSubscription(
        impu=reg.impu,
        call_id=f"{hexs(8)}@pcscf1.home1.net",
        local_tag=hexs(4),
        remote_tag=hexs(4),
        remote_uri=_own(PCSCF_URI),
        remote_target=_own("sip:10.1.1.1:5060"),
        route_set=(),
        expires_at=1e6 + n,
    )
    yield RegSubscription(
        impu=reg.impu,
        call_id=f"{hexs(12)}@10.0.0.1",
        local_tag=hexs(4),
        remote_tag=hexs(4),
        remote_uri=_own(reg.impu),
        remote_target=_own(contact),
        route_set=(_own("<sip:pcscf1.home1.net:5060;lr>"),),
        expires_at=1e6 + n + 0.5,
    )


def test_two_subscriptions_per_impu_cost_under_600_octets():
    """Measured (per IMPU, the random Call-IDs and tags included): 1,269 octets with a
    (deadline, seq, sub) heap entry, a timer tuple, a list per IMPU and the UE's URIs
    copied; 766 with the subscriptions as heap entries, chained, and the registration's
    strings; 540 with the three dialog identifiers in one string."""
    n = 2000
    regs = [_registration(i) for i in range(n)]
    rng = random.Random(7)
    subs = RegSubscriptions()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, reg in enumerate(regs):
            for sub in _subscriptions(reg, rng, i):
                subs.arm(subs.add(sub, reg))
        gc.collect()
        per_impu = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(subs) == 2 * n and subs.armed == 2 * n and subs.expiry_entries == 2 * n
    assert per_impu < 600, per_impu


def test_the_ue_subscription_shares_the_registration_strings():
    reg = _registration(1)
    rng = random.Random(1)
    subs = RegSubscriptions()
    pcscf, ue = (subs.add(s, reg) for s in _subscriptions(reg, rng, 0))
    assert ue.remote_uri is reg.impu
    assert ue.remote_target is next(iter(reg.contacts))
    # the P-CSCF's URIs are one object for all its subscriptions
    other = next(_subscriptions(_registration(2), rng, 1))
    assert subs.add(other).remote_uri is pcscf.remote_uri
    # a target refresh to another contact keeps it as given
    moved = RegSubscription(**{**_fields(ue), "remote_target": "sip:10.9.9.9:5060"})
    assert subs.add(moved, reg) is ue and ue.remote_target == "sip:10.9.9.9:5060"
    assert [s.call_id for s in subs] == [pcscf.call_id, ue.call_id, other.call_id]


def _fields(sub: RegSubscription) -> dict:
    names = ("impu", "call_id", "local_tag", "remote_tag", "remote_uri", "remote_target")
    return {k: getattr(sub, k) for k in names} | {
        "route_set": sub.route_set,
        "expires_at": sub.expires_at,
    }


def test_chained_subscriptions_leave_in_any_order():
    reg = _registration(3)
    rng = random.Random(3)
    subs = RegSubscriptions()
    a, b = (subs.add(s, reg) for s in _subscriptions(reg, rng, 0))
    c = subs.add(RegSubscription(**{**_fields(b), "call_id": "third"}), reg)
    subs.remove(b)
    assert list(subs) == [a, c] and b not in subs and len(subs) == 2
    assert subs.get(reg.impu, c.key) is c and subs.get(reg.impu, b.key) is None
    subs.remove(a)
    assert list(subs) == [c]
    assert subs.pop_impu(reg.impu) == [c] and len(subs) == 0 and list(subs) == []


def test_an_ended_subscription_armed_again_reuses_its_stale_entry():
    reg = _registration(4)
    subs = RegSubscriptions()
    a, b = (subs.add(s, reg) for s in _subscriptions(reg, random.Random(4), 0))
    a.expires_at, b.expires_at = 100.0, 300.0
    subs.arm(a)
    subs.arm(b)
    subs.disarm(b)  # stale: one live entry of two, not compacted yet
    assert subs.expiry_entries == 2 and subs.armed == 1
    b.expires_at = 50.0
    subs.arm(b)  # its stale entry comes back, moved up to 50
    assert subs.expiry_entries == 2 and subs.armed == 2 and subs.next_deadline() == 50.0
    assert subs.pop_due(60.0) == [b] and b.timer is None
    assert subs.pop_due(100.0) == [a] and subs.expiry_entries == 0


def test_the_dialog_identifiers_read_back_as_given():
    sub = RegSubscription(
        impu="sip:u@h",
        call_id="c@h",
        local_tag="l",
        remote_tag="",
        remote_uri="sip:u@h",
        remote_target="sip:h:5060",
        route_set=(),
        expires_at=1.0,
    )
    assert (sub.call_id, sub.remote_tag, sub.local_tag, sub.key) == ("c@h", "", "l", ("c@h", ""))
    subs = RegSubscriptions()
    subs.add(sub)
    assert subs.get("sip:u@h", ("c@h", "")) is sub
    assert subs.get("sip:u@h", ("c@h", "l")) is None and subs.get("sip:u@h", ("c", "")) is None
    assert "call_id='c@h'" in repr(sub)
    with pytest.raises(ValueError):
        RegSubscription("sip:u@h", "c\0", "l", "r", "sip:u@h", "sip:h", (), 1.0)
