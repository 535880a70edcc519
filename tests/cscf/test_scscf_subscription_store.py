"""Reg-event subscriptions kept with the registrations in a shared binding store, so that
an S-CSCF restarted on Redis still has its watchers (TS 24.229 §5.2.3, §5.4.2.1; RFC
6665 §4.2): written after every change (made, refreshed, a NOTIFY sent, ended) by one
writer task, read back at start, their NOTIFY CSeq and reginfo version moved past what
a crash could have lost (`RESTORED_GAP`)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from imsaka.cscf.regevent import RESTORED_GAP, RegSubscription

from .conftest import IMPUS, REALM
from .fakes import IMPI
from .test_home_network import (
    collect_notifies,
    full_registration,
    new_ue,
    register,
    send,
    wait_for,
)
from .test_scscf_ue_subscription import _subscribe

NOTIFIER = "<sip:[::1]:6060>"  # an S-CSCF's Contact: the brackets are glob characters
OTHER = "<sip:[::1]:6061>"


def _sub(**kw) -> RegSubscription:
    args = dict(
        impu=IMPUS[0],
        call_id="c1@ue",
        local_tag="s1",
        remote_tag="u1",
        remote_uri=IMPUS[0],
        remote_target="sip:127.0.0.1:1357",
        route_set=("<sip:127.0.0.1:5060;lr>",),
        expires_at=1234.5,
        cseq=3,
        version=2,
    )
    args.update(kw)
    return RegSubscription(**args)


def test_a_subscription_goes_through_its_record_and_back():
    sub = _sub()
    record = json.loads(json.dumps(sub.to_dict()))
    back = RegSubscription.from_dict(record)
    assert back.to_dict() == sub.to_dict()
    assert (back.call_id, back.remote_tag, back.local_tag) == ("c1@ue", "u1", "s1")
    ahead = RegSubscription.from_dict(record, RESTORED_GAP)
    assert (ahead.cseq, ahead.version) == (3 + RESTORED_GAP, 2 + RESTORED_GAP)


@pytest.mark.parametrize(
    "change",
    [
        {"call_id": None},
        {"route_set": [7]},
        {"local_tag": "a\0b"},
        {"cseq": "three"},
        {"expires_at": []},
    ],
)
def test_a_record_that_is_not_a_subscription_is_refused(change):
    record = {**_sub().to_dict(), **change}
    with pytest.raises((KeyError, TypeError, ValueError)):
        RegSubscription.from_dict(record)
    del record["impu"]
    with pytest.raises(KeyError):
        RegSubscription.from_dict(record)


@pytest.mark.redis
async def test_redis_keeps_subscriptions_per_impu(redis_url):
    from imsaka.cscf.registrar import RedisBindingStore

    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    store = RedisBindingStore(redis_url, prefix=prefix)
    try:
        now = time.time()
        first = _sub(expires_at=now + 100).to_dict()
        second = _sub(call_id="c2@pcscf", expires_at=now + 3000).to_dict()
        for notifier in (NOTIFIER, OTHER):  # (each writes only while it says it runs)
            await store.heartbeat(notifier, 30.0)
        assert await store.put_subscriptions(NOTIFIER, IMPUS[0], [first, second])
        await store.put_subscriptions(OTHER, IMPUS[0], [_sub(call_id="c3").to_dict()])
        assert sorted(d["call_id"] for d in await store.all_subscriptions(NOTIFIER)) == [
            "c1@ue",
            "c2@pcscf",
        ]
        assert [d["call_id"] for d in await store.all_subscriptions(OTHER)] == ["c3"]
        ttl = await store._redis.ttl(f"{prefix}sub:{NOTIFIER}|{IMPUS[0]}")
        assert 3000 <= ttl <= 3061  # the latest expiry, and a minute
        await store._redis.set(f"{prefix}sub:{NOTIFIER}|sip:junk@x", b"{not json")
        await store._redis.set(f"{prefix}sub:{NOTIFIER}|sip:other@x", b'{"a": 1}')
        # what is not a list is passed over
        assert len(await store.all_subscriptions(NOTIFIER)) == 2
        await store.put_subscriptions(NOTIFIER, IMPUS[0], [])
        assert await store._redis.exists(f"{prefix}sub:{NOTIFIER}|{IMPUS[0]}") == 0
        assert len(await store.all_subscriptions(OTHER)) == 1
        assert await store.all() == []  # subscriptions are not registrations
    finally:
        await store.clear()
        await store.close()


@pytest.mark.redis
async def test_redis_heartbeats_name_the_stopped_notifiers(redis_url):
    """Each S-CSCF's heartbeat lists it and says it runs for `ttl`; the answer names the
    others listed that no longer say so: one that left (a stop asked for) at once, one
    silent (a crash) once its `ttl` ran out. A notifier forgotten is no longer named;
    subscriptions are taken once."""
    from imsaka.cscf.registrar import RedisBindingStore

    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    store = RedisBindingStore(redis_url, prefix=prefix)
    try:
        assert await store.heartbeat(NOTIFIER, 5.0) == []
        assert await store.heartbeat(OTHER, 0.3) == []
        await asyncio.sleep(0.4)
        # listed only once they keep subscriptions
        assert await store.heartbeat(NOTIFIER, 5.0) == []
        for notifier, ttl in ((NOTIFIER, 100), (OTHER, 3000)):
            record = _sub(expires_at=time.time() + ttl).to_dict()
            await store.heartbeat(notifier, 5.0 if notifier == NOTIFIER else 0.3)
            assert await store.put_subscriptions(notifier, IMPUS[2], [record])
        assert 3000 <= await store._redis.ttl(f"{prefix}notifiers") <= 3061  # the longest
        assert await store.heartbeat(OTHER, 0.3) == []
        assert await store.heartbeat(NOTIFIER, 5.0) == []
        await asyncio.sleep(0.4)
        assert await store.heartbeat(NOTIFIER, 5.0) == [OTHER]  # silent past its ttl
        assert await store.heartbeat(OTHER, 5.0) == []  # back
        await store.leave(NOTIFIER)
        assert await store.heartbeat(OTHER, 5.0) == [NOTIFIER]
        await store.forget_notifier(NOTIFIER)
        assert await store.heartbeat(OTHER, 5.0) == []
        record = _sub(expires_at=time.time() + 100).to_dict()
        await store._redis.set(f"{prefix}sub:{NOTIFIER}|{IMPUS[0]}", json.dumps([record]))
        assert await store.take_subscriptions(NOTIFIER, IMPUS[0]) == [record]
        assert await store.take_subscriptions(NOTIFIER, IMPUS[0]) == []
        await store._redis.set(f"{prefix}sub:{NOTIFIER}|{IMPUS[1]}", b"{not json")
        assert await store.take_subscriptions(NOTIFIER, IMPUS[1]) == []
    finally:
        await store.clear()
        await store.close()


@pytest.mark.redis
async def test_redis_writes_and_takes_subscriptions_only_across_a_lapsed_heartbeat(redis_url):
    """A notifier writes its subscriptions only while its heartbeat stands (nothing is
    written over what the others may take once it lapsed: the check and the write are
    one script); the others take them only while it has lapsed (one back keeps them),
    and what they take is noted for it, read once (`taken_from`), with the TTL the
    subscriptions had."""
    from imsaka.cscf.registrar import RedisBindingStore

    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    store = RedisBindingStore(redis_url, prefix=prefix)
    try:
        record = _sub(expires_at=time.time() + 900).to_dict()
        other = _sub(call_id="c2", expires_at=time.time() + 900).to_dict()
        assert not await store.put_subscriptions(NOTIFIER, IMPUS[0], [record])  # never beat
        assert await store.all_subscriptions(NOTIFIER) == []
        await store.heartbeat(NOTIFIER, 0.3)
        assert await store.put_subscriptions(NOTIFIER, IMPUS[0], [record])
        assert await store.put_subscriptions(NOTIFIER, IMPUS[1], [other])
        assert await store.take_subscriptions(NOTIFIER, IMPUS[0]) == []  # it runs
        assert len(await store.all_subscriptions(NOTIFIER)) == 2
        await asyncio.sleep(0.4)  # its heartbeat lapsed
        assert not await store.put_subscriptions(NOTIFIER, IMPUS[0], [])  # no delete either
        assert not await store.put_subscriptions(NOTIFIER, IMPUS[2], [record])
        assert await store.take_subscriptions(NOTIFIER, IMPUS[0]) == [record]
        assert await store.take_subscriptions(NOTIFIER, IMPUS[0]) == []  # once
        noted = f"{prefix}taken:{NOTIFIER}|{IMPUS[0]}"
        assert 890 <= await store._redis.ttl(noted) <= 961
        assert await store.taken_from(OTHER) == []
        assert await store.taken_from(NOTIFIER) == [record]
        assert await store.taken_from(NOTIFIER) == []  # read once
        await store.heartbeat(NOTIFIER, 5.0)  # back before the second was taken
        assert await store.take_subscriptions(NOTIFIER, IMPUS[1]) == []
        assert await store.all_subscriptions(NOTIFIER) == [other]
        assert await store.put_subscriptions(NOTIFIER, IMPUS[1], [])
        assert await store.all_subscriptions(NOTIFIER) == []
    finally:
        await store.clear()
        await store.close()


async def _stored_until(store, notifier, predicate, timeout: float = 2.0) -> list[dict]:
    """The store's subscription records once `predicate` holds of them (or at timeout)."""
    for _ in range(int(timeout / 0.02)):
        records = await store.all_subscriptions(notifier)
        if predicate(records):
            break
        await asyncio.sleep(0.02)
    return records


def _protected(expires: int = 600000):
    return dict(
        protected=True,
        expires=expires,
        authorization=(
            f'Digest username="{IMPI}", realm="{REALM}", nonce="", uri="sip:registrar.home1.net", '
            f'response="", integrity-protected="yes"'
        ),
    )


@pytest.mark.redis
async def test_a_restarted_scscf_notifies_the_subscribers_of_the_one_before(redis_home):
    """Subscribed and NOTIFYed (CSeq 1) by one S-CSCF, which writes the subscription to
    Redis while it runs (before any stop: what a crash leaves); the next S-CSCF on the
    same Redis reads it and NOTIFYs the de-registration in the same dialog, CSeq and
    version moved on by `RESTORED_GAP`; the ended subscription leaves Redis."""
    net = redis_home.net
    reader = redis_home.store()
    try:
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        notifies = collect_notifies(net)
        r = await _subscribe(net, cseq=1, contact="sip:127.0.0.1:1357")
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 1)
        first = notifies[0]
        ours = net.scscf.scscf._contact
        # written by the S-CSCF's writer task, not by a stop
        records = await _stored_until(reader, ours, lambda r: bool(r) and r[0]["cseq"] == 1)
        assert [(d["call_id"], d["cseq"], d["version"]) for d in records] == [
            ("ue-reg-event-1", first.cseq.seq, 1)
        ]
        await redis_home.restart_scscf()
        core = net.scscf.scscf.core
        assert core.counters["subscription_restored"] == 1
        assert net.scscf.census()["subscriptions"] == 1
        r = await send(net, register(net, cseq=4, **_protected(expires=0)))
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 2)
        last = notifies[1]
        assert last.call_id == first.call_id and last.to.tag == first.to.tag
        assert last.from_.tag == first.from_.tag
        assert last.get("subscription-state").startswith("terminated")
        assert last.cseq.seq == first.cseq.seq + RESTORED_GAP + 1
        assert f'version="{1 + RESTORED_GAP}"'.encode() in last.body
        assert net.scscf.census()["subscriptions"] == 0
        assert await _stored_until(reader, ours, lambda r: not r) == []
    finally:
        await reader.close()


@pytest.mark.redis
async def test_stored_subscriptions_without_their_registration_are_dropped(redis_home):
    """A subscription whose registration is not in the store (it ended while no S-CSCF
    ran), and one that expired, are not taken up: the first gets its final NOTIFY, the
    second's record goes."""
    net = redis_home.net
    reader = redis_home.store()
    try:
        now = time.time()
        ours = net.scscf.scscf._contact
        gone = _sub(expires_at=now + 600).to_dict()
        await reader.put_subscriptions(ours, IMPUS[0], [gone])
        await reader.heartbeat(OTHER, 30.0)  # (it runs: its write lands)
        await reader.put_subscriptions(OTHER, IMPUS[0], [gone])  # another S-CSCF's: left
        unreadable = json.dumps([{"impu": IMPUS[1], "call_id": 5}])
        await reader._redis.set(f"{redis_home.prefix}sub:{ours}|{IMPUS[1]}", unreadable, ex=60)
        await redis_home.restart_scscf()
        core = net.scscf.scscf.core
        assert core.counters["subscription_restored"] == 0
        assert core.counters["subscription_unreadable"] == 1
        assert net.scscf.census()["subscriptions"] == 0
        records = await _stored_until(reader, ours, lambda r: len(r) == 2)
        # the one without a registration has had its final NOTIFY and is kept `ending`
        # until that is answered (nobody at its address here: Timer F); the unreadable
        # one is left to its TTL
        assert sorted((d["impu"], d.get("ending")) for d in records) == [
            (IMPUS[0], "timeout"),
            (IMPUS[1], None),
        ]
        assert len(await reader.all_subscriptions(OTHER)) == 1
    finally:
        await reader.close()


@pytest.mark.redis
async def test_a_final_notify_under_way_at_a_crash_is_sent_again(redis_home):
    """The de-registration's NOTIFY is not answered (its copies lost) when the S-CSCF
    crashes: the subscription stays in Redis marked `ending` until an answer comes, so
    the next S-CSCF sends the final NOTIFY again, CSeq moved on, with the contacts of
    the registration that ended; answered, the record goes. (Before: the record went
    with the first copy, and the subscriber never heard of the end: chaos seed 9791.)"""
    net = redis_home.net
    reader = redis_home.store()
    try:
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        notifies: list = []
        answering = [True]

        def on_request(req, tx):
            notifies.append(req)
            if answering[0] or not req.get("subscription-state").startswith("terminated"):
                tx.reply(200)

        net.client.set_request_handler(on_request)
        r = await _subscribe(net, cseq=1, contact="sip:127.0.0.1:1357")
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 1)
        ours = net.scscf.scscf._contact
        answering[0] = False
        r = await send(net, register(net, cseq=4, **_protected(expires=0)))
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 2)
        first_end = notifies[1]
        assert first_end.get("subscription-state").startswith("terminated")
        records = await _stored_until(reader, ours, lambda r: bool(r) and "ending" in r[0])
        assert [d.get("ending") for d in records] == ["user-deregistration"]
        answering[0] = True
        await redis_home.restart_scscf()  # no drain: as a crash
        core = net.scscf.scscf.core
        assert core.counters["final_notify_sent_again"] == 1
        await wait_for(lambda: any(n.cseq.seq > first_end.cseq.seq for n in notifies))
        again = next(n for n in notifies if n.cseq.seq > first_end.cseq.seq)
        assert again.call_id == first_end.call_id and again.from_.tag == first_end.from_.tag
        assert again.get("subscription-state").startswith("terminated")
        assert b'event="unregistered"' in again.body and b"1357" in again.body
        assert await _stored_until(reader, ours, lambda r: not r) == []
        assert net.scscf.census()["subscriptions"] == 0
        assert net.scscf.scscf._ending == {}
    finally:
        await reader.close()


@pytest.mark.redis
async def test_a_close_ends_though_a_store_call_swallowed_its_cancellation(redis_home, monkeypatch):
    """The loop that follows the other S-CSCFs' changes is in a store call that takes
    the close's cancellation for its own timeout and goes on (as redis-py's reads can).
    The S-CSCF's stop ends CLOSE_WAIT s later all the same, the loop counted and left;
    before, the stop waited for it for ever (CI saw a test hang in its teardown)."""
    import imsaka.cscf.scscf as scscf_module
    from imsaka.cscf.registrar import RedisBindingStore

    swallowed = []

    async def follow_regardless(self, on_record, on_gap=None):
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:  # (the loop's end, after the test, does end it)
                    raise
                swallowed.append(1)
                asyncio.current_task().uncancel()

    monkeypatch.setattr(RedisBindingStore, "follow_changes", follow_regardless)
    monkeypatch.setattr(scscf_module, "CLOSE_WAIT", 0.3)
    await redis_home.restart_scscf()
    server = redis_home.net.scscf
    assert server.scscf._peers.follower is not None
    core = server.scscf.core
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(server.stop(), 10)
    assert loop.time() - started < 3
    assert swallowed == [1]
    assert core.counters["close_left_running"] == 1
    await redis_home.restart_scscf()  # (a working S-CSCF for the fixture's teardown)
