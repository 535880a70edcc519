"""An S-CSCF instance cut off from the shared binding store while the others reach it
(docs/home-network.md, "Cut off from the store"). Once its heartbeat may have lapsed
it serves no reg-event subscriber (503 with Retry-After) and holds its NOTIFYs; the
others, seeing it stopped, may take its subscriptions; when it reaches the store again
it drops what they took (noted in the store by the take itself) without a NOTIFY, and
sends what it held for the rest. The store refuses its writes while its heartbeat has
lapsed, and refuses the others' takes once it stands again (both atomic with the
check). Needs Redis (127.0.0.1:6379, db 15); its connection goes through a TCP proxy
that the test cuts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from ..tcp_proxy import CuttableProxy, redis_target
from .test_home_network import (
    PROTECTED_YES,
    answer_auth,
    empty_auth,
    full_registration,
    icscf_with_instances,
    new_ue,
    pcscf_refresh,
    reg_event_subscribe,
    register,
    register_second_contact,
    registered_and_subscribed_at,
    send,
    two_scscfs_on_redis,
    wait_for,
    with_second_contact,
)

pytestmark = pytest.mark.redis


@contextlib.asynccontextmanager
async def cut_off_pair(tmp_path, redis_url, monkeypatch):
    """Two S-CSCFs on one Redis prefix, the second through a proxy to cut; heartbeats
    shortened (every 0.2 s, alive for 1 s: cut off 0.8 s after its last one landed) and
    no take-over by time: only what the test makes happen moves."""
    import imsaka.cscf.scscf as scscf_module

    monkeypatch.setattr(scscf_module, "HEARTBEAT", 0.2)
    monkeypatch.setattr(scscf_module, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(scscf_module, "TAKE_OVER_AFTER", 3600.0)
    target, db = redis_target(redis_url)
    proxy = CuttableProxy(target)
    await proxy.start()
    try:
        async with two_scscfs_on_redis(
            tmp_path, redis_url, other_url=f"redis://127.0.0.1:{proxy.port}/{db}"
        ) as pair:
            yield (*pair, proxy)
    finally:
        await proxy.close()


def _from(notifies: list, contact: str) -> list:
    return [n for n in notifies if n.contacts and n.contacts[0].uri == contact.strip("<>")]


async def test_a_cut_off_instance_serves_nobody_and_drops_what_was_taken_meanwhile(
    tmp_path, redis_url, monkeypatch
):
    """The P-CSCF's subscription (Expires 4 s) is held at the second S-CSCF, whose
    connection to Redis is then cut. It refuses the P-CSCF's refresh with 503 and
    Retry-After; the first, seeing it stopped, takes the subscription on a change
    (its NOTIFY carries its own Contact) and has it refreshed for long. The second's
    copy runs out while it is cut off: that final NOTIFY is held, not sent (before: a
    "terminated" NOTIFY in a dialog the first now serves, which ends the P-CSCF's
    subscription there). Back, it finds the take noted, drops the subscription and the
    NOTIFY, and writes nothing of it again."""
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        here, there = net.scscf.scscf, other.scscf
        ue = new_ue()
        notifies = await registered_and_subscribed_at(net, port, ue)
        # (the first subscription is the harness's default: made anew short-lived)
        notifies.clear()
        r = await reg_event_subscribe(net, notifies, port=port, call_id="short-lived", expires=4)
        assert r.status == 200, r
        await wait_for(lambda: len(notifies) == 1)
        first = notifies[0]
        for _ in range(100):  # (its writer task writes both to the store)
            if len(await here.store.all_subscriptions(there._contact)) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(await here.store.all_subscriptions(there._contact)) == 2

        await proxy.cut()
        await wait_for(lambda: there._contact in here._peers.stopped, timeout=5)
        r = await net.client.send_request(pcscf_refresh(net, first, cseq=2), ("127.0.0.1", port))
        assert r.status == 503 and r.get("retry-after") == "5", r
        assert there.core.counters["subscribe_refused_cut_off"] == 1

        async def second_contact(request):
            return await send(net, with_second_contact(request, "second-contact"))

        r401 = await second_contact(
            register(net, cseq=1, authorization=empty_auth(), protected=False)
        )
        auth = answer_auth(r401.www_authenticate, ue)
        r = await second_contact(register(net, cseq=2, authorization=auth, protected=True))
        assert r.status == 200, r
        await wait_for(lambda: len(_from(notifies, here._contact)) == 2)
        assert here.core.counters["changed_for_stopped_notifier"] == 2  # both of there's
        moved = next(n for n in _from(notifies, here._contact) if n.call_id == "short-lived")
        assert (moved.from_.tag, moved.to.tag) == (first.from_.tag, first.to.tag)
        r = await net.client.send_request(
            pcscf_refresh(net, moved, cseq=3), ("127.0.0.1", net.scscf_port)
        )  # (Expires 600000)
        assert r.status == 200, r

        await asyncio.sleep(4.5)  # the second's copy ran out meanwhile
        assert there.core.counters["notify_held_cut_off"] >= 1
        assert _from(notifies[1:], there._contact) == []  # nothing sent from there

        await proxy.mend()
        await wait_for(lambda: not there._peers.cut_off, timeout=5)
        assert there.core.counters["subscription_taken_while_cut_off"] == 2
        await asyncio.sleep(0.5)
        assert _from(notifies[1:], there._contact) == []
        assert other.census()["subscriptions"] == 0
        assert await here.store.all_subscriptions(there._contact) == []
        assert len(await here.store.all_subscriptions(here._contact)) == 2
        ends = [n for n in notifies if (n.get("subscription-state") or "").startswith("terminated")]
        assert ends == []
        # what it holds now is nothing: a refresh there is not one of its dialogs
        r = await net.client.send_request(pcscf_refresh(net, first, cseq=4), ("127.0.0.1", port))
        assert r.status == 481, r

        dereg = dict(protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, register(net, cseq=3, **dereg))).status == 200
        assert (await second_contact(register(net, cseq=3, **dereg))).status == 200
        await wait_for(lambda: len(_ended(notifies)) == 2)
        assert {n.contacts[0].uri for n in _ended(notifies)} == {here._contact.strip("<>")}
        assert {n.call_id for n in _ended(notifies)} == {"short-lived", "reg-event-1"}


def _ended(notifies: list) -> list:
    return [n for n in notifies if (n.get("subscription-state") or "").startswith("terminated")]


async def test_a_register_at_an_instance_cut_off_goes_on_to_the_other_at_once(
    tmp_path, redis_url, monkeypatch
):
    """The I-CSCF knows both instances, the one cut off from Redis first. It cannot
    read the user's record: it answers 503 with Retry-After (before: 500, which
    reached the UE), and the I-CSCF sends the REGISTER on to the other at once (no
    second UAR), whose 401 and then 200 come back; the one cut off is passed over for
    its Retry-After, so the challenge's answer goes straight to the other."""
    from imsaka.diameter import cx

    from .test_home_network import cx_seen

    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        icscf = await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        await proxy.cut()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401 and loop.time() - t0 < 1.0, r401
        assert other.scscf.core.counters["register_refused_store_unavailable"] == 1
        assert icscf.counters["scscf_instance_failover"] == 1
        assert icscf.counters["scscf_instance_down"] == 1
        auth = answer_auth(r401.www_authenticate, new_ue())
        r200 = await send(net, register(net, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200, r200
        assert other.scscf.core.counters["register_refused_store_unavailable"] == 1
        uars = [m for m in cx_seen(net, "icscf") if isinstance(m, cx.UserAuthorizationRequest)]
        assert len(uars) == 2  # one per REGISTER: none for the move
        assert net.scscf.census()["bindings"] == 1


async def test_a_503_from_the_last_instance_left_goes_upstream_as_500_with_its_retry_after(
    tmp_path, redis_url, monkeypatch
):
    """The first instance is silent, the other cut off from Redis: the REGISTER moves
    on after the silence, is answered 503 with Retry-After there, and with no instance
    left that is the answer, sent upstream as 500 with the same Retry-After (RFC 3261
    §16.7 step 6: a proxy forwards no 503; the UE tries again after it). Before, the
    503 had no To tag and the I-CSCF took it for its own transport error: 600 Busy
    Everywhere (chaos seed 10112); until 2026-11-28 (fourth session) the 503 itself
    went upstream, which tells a UE to leave its P-CSCF (RFC 3263 §4.3)."""
    loop = asyncio.get_running_loop()

    class Silent(asyncio.DatagramProtocol):
        pass

    silent, _ = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", 0))
    try:
        async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, _o, port, _, proxy):
            silent_port = silent.get_extra_info("sockname")[1]
            icscf = await icscf_with_instances(net, [silent_port, port], timeout=0.6)
            await proxy.cut()
            r = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
            assert r.status == 500 and r.retry_after == 5 and r.to.tag, r
            assert r.reason.endswith("(next hop: Service Unavailable (binding store out of reach))")
            assert icscf.counters["scscf_instance_failover"] == 1
            assert not icscf.counters["no_scscf"]
    finally:
        silent.close()


@pytest.mark.parametrize("fenced", [False, True], ids=["at-once", "fenced"])
async def test_an_rtr_to_an_instance_cut_off_goes_to_the_other(
    tmp_path, redis_url, monkeypatch, fenced
):
    """The registration was made through the second instance, which is then cut off
    from Redis. The HSS's RTR for it, at once (the record cannot be read) or once the
    instance has fenced itself, is answered 3004 DIAMETER_TOO_BUSY there (its state
    is in the store it cannot reach, and an end made there would reach nobody), so the
    HSS sends it to the other instance, which reads the registration from the store,
    removes it and tells its subscriber (before: answered 2001 and nothing ended; chaos
    seed 10121, the UE never heard of the RTR)."""
    from dataclasses import replace

    from .conftest import IMPUS, SCSCF2_HOST, SCSCF_HOST
    from .fakes import IMPI

    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        net.hss.config = replace(
            net.hss.config,
            scscf_instances=((net.server_name, SCSCF_HOST), (net.server_name, SCSCF2_HOST)),
        )
        await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        notifies = await registered_and_subscribed_at(net, net.scscf_port)
        assert await other.scscf.store.get(IMPUS[0]) is not None
        await proxy.cut()
        if fenced:
            await wait_for(lambda: other.scscf._cut_off(), timeout=5)
        result = await net.hss.deregister_impi(IMPI)
        assert result["ok"] and result["to"] == SCSCF_HOST, result
        assert other.scscf.core.counters["cx_refused_cut_off"] == 1
        assert net.scscf.scscf.core.counters["rtr_removed"] == 1
        assert await net.scscf.scscf.store.get(IMPUS[0]) is None
        await wait_for(lambda: len(notifies) == 2)
        assert (notifies[1].get("subscription-state") or "").startswith("terminated")


async def test_a_subscribe_the_store_cannot_answer_for_is_503_not_480(
    tmp_path, redis_url, monkeypatch
):
    """The registration was made at the first instance; the P-CSCF's SUBSCRIBE reaches
    the second just after its connection to Redis was cut, before it fenced itself. It
    cannot read the registration: 503 with Retry-After (the P-CSCF tries the other
    instance), where it answered 480 "not registered" (chaos seed 10121: the UE's and
    the P-CSCF's subscriptions were refused for a user registered at the other)."""
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        await proxy.cut()
        r = await reg_event_subscribe(net, [], port=port)
        assert r.status == 503 and r.retry_after == 5, r
        assert other.scscf.core.counters["subscribe_refused_store_unavailable"] == 1


async def test_an_end_published_while_the_connection_was_broken_is_caught_up(
    tmp_path, redis_url, monkeypatch
):
    """The subscription is held at the second instance; its connection to Redis breaks
    for a moment (shorter than its heartbeat's lapse: nobody takes anything) while the
    UE de-registers through the first, whose publication of the end is lost to the
    second. When it listens again it reads its IMPUs from the store and NOTIFYs the end
    (before: the subscriber never heard of it). A break with nothing changed NOTIFYs
    nothing."""
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        there = other.scscf
        notifies = await registered_and_subscribed_at(net, port)
        await proxy.cut()
        await asyncio.sleep(0.1)
        await proxy.mend()
        await asyncio.sleep(1.5)  # (it listens again a second after the break)
        assert there.core.counters["changes_caught_up"] == 0 and len(notifies) == 1
        await proxy.cut()
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        await proxy.mend()
        await wait_for(lambda: len(notifies) == 2, timeout=5)
        assert (notifies[1].get("subscription-state") or "").startswith("terminated")
        assert notifies[1].contacts[0].uri == there._contact.strip("<>")
        assert there.core.counters["changes_caught_up"] == 1
        assert other.census()["subscriptions"] == 0


def cut_at_the_write(monkeypatch, store, proxy) -> list:
    """`store` (the second instance's) is cut off from Redis right after the REGISTER's
    read, just before its write: the window of a Cx round trip in a real run. Each
    write attempted through it is listed."""
    from imsaka.cscf.registrar import RedisBindingStore

    put = RedisBindingStore.put
    attempts: list = []

    async def cut_then_put(self, registration):
        if self is store:
            attempts.append(registration.earliest_expiry())
            await proxy.cut()
        return await put(self, registration)

    monkeypatch.setattr(RedisBindingStore, "put", cut_then_put)
    return attempts


@pytest.mark.parametrize("phase", ["refresh", "challenge-answer"])
async def test_a_register_whose_write_fails_is_503_and_answered_by_the_other(
    tmp_path, redis_url, monkeypatch, phase
):
    """The I-CSCF sends the REGISTER to the second instance first, which reads the
    record, is cut off from Redis before writing it, and answers 503 with Retry-After
    (before: 200, the store kept the old expiry, and the first instance ended the
    registration at it: chaos seed 10177). The I-CSCF moves the REGISTER to the
    first at once, which answers 200 and writes the new expiry; a challenge answer is
    verified there from the shared challenge, which the second left in the store."""
    from .conftest import IMPUS

    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        here, there = net.scscf.scscf, other.scscf
        if phase == "refresh":
            _, r200 = await full_registration(net, new_ue(), expires=600)
            assert r200.status == 200, r200
        icscf = await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        if phase == "refresh":
            attempts = cut_at_the_write(monkeypatch, there.store, proxy)
            r = await send(
                net,
                register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=3600),
            )
        else:
            r401 = await send(
                net,
                register(net, cseq=1, authorization=empty_auth(), protected=False, expires=3600),
            )
            assert r401.status == 401, r401
            attempts = cut_at_the_write(monkeypatch, there.store, proxy)
            auth = answer_auth(r401.www_authenticate, new_ue())
            r = await send(
                net, register(net, cseq=2, authorization=auth, protected=True, expires=3600)
            )
        assert r.status == 200, r
        assert len(attempts) == 1
        stored = await here.store.get(IMPUS[0])
        assert stored is not None and stored.earliest_expiry() > here._clock() + 3000
        assert there.core.counters["register_refused_store_write_failed"] == 1
        assert icscf.counters["scscf_instance_failover"] == 1
        if phase == "challenge-answer":
            assert here.core.counters["challenge_taken_from_store"] == 1


async def test_a_contact_deregistration_whose_write_fails_is_503_and_done_by_the_other(
    tmp_path, redis_url, monkeypatch
):
    """Two contacts registered; the de-REGISTER of the second reaches the second
    instance, which is cut off from Redis before writing the record with the first
    contact alone. Its 200 would tell the UE of an end the store never saw (the other
    instance would keep the contact and NOTIFY it as active): it answers 503, the
    I-CSCF moves the de-REGISTER to the first instance, whose 200 comes with the
    record written with the first contact only."""
    from .conftest import IMPUS

    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        here, there = net.scscf.scscf, other.scscf
        ue = new_ue()
        _, r200 = await full_registration(net, ue, expires=600)
        assert r200.status == 200, r200
        await register_second_contact(net, ue)
        stored = await here.store.get(IMPUS[0])
        assert stored is not None and len(stored.contacts) == 2
        icscf = await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        attempts = cut_at_the_write(monkeypatch, there.store, proxy)
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        r = await send(net, with_second_contact(dereg, "c2"))
        assert r.status == 200, r
        stored = await here.store.get(IMPUS[0])
        assert stored is not None
        assert [uri for uri in stored.contacts if "eee" not in uri] == list(stored.contacts)
        assert len(stored.contacts) == 1
        assert len(attempts) == 1
        assert there.core.counters["register_refused_store_write_failed"] == 1
        assert icscf.counters["scscf_instance_failover"] == 1


async def registered_again(net, ue) -> None:
    """The UE de-registered at CSeq 3 registers again (CSeq 4 and 5) through the
    I-CSCF: the second instance, cut off, answers 503 and each REGISTER moves on to
    the first."""
    r401 = await send(net, register(net, cseq=4, authorization=empty_auth(), protected=False))
    auth = answer_auth(r401.www_authenticate, ue)
    r200 = await send(net, register(net, cseq=5, authorization=auth, protected=True))
    assert r200.status == 200, r200


@pytest.mark.parametrize("meanwhile", ["nothing", "registered-again"])
async def test_a_deregistration_whose_removal_fails_lands_once_the_store_answers(
    tmp_path, redis_url, monkeypatch, meanwhile
):
    """The de-REGISTER reaches the second instance, which is cut off from Redis after
    reading the record, before removing it. The UE asked for the end: it gets its 200;
    the removal waits until the store answers, and then the end is published, so the
    subscriber held at the first instance gets its terminated NOTIFY (before: the
    record stayed until its expiry, the first took the user for registered, and the
    subscriber never heard of the end). Registered again through the first instance
    meanwhile, the newer record is kept and no end is published."""
    import imsaka.cscf.scscf as scscf_module
    from imsaka.cscf.registrar import RedisBindingStore

    from .conftest import IMPUS

    monkeypatch.setattr(scscf_module, "EXPIRY_RETRY", 0.1)
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        here, there = net.scscf.scscf, other.scscf
        ue = new_ue()
        notifies = await registered_and_subscribed_at(net, net.scscf_port, ue)
        await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        delete = RedisBindingStore.delete

        async def cut_then_delete(self, impu):
            if self is there.store:
                await proxy.cut()
            return await delete(self, impu)

        monkeypatch.setattr(RedisBindingStore, "delete", cut_then_delete)
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        assert await here.store.get(IMPUS[0]) is not None  # not yet
        if meanwhile == "registered-again":
            await registered_again(net, ue)
            again = await here.store.get(IMPUS[0])
            assert again is not None
        await asyncio.sleep(0.3)
        assert len(notifies) == 1  # (registered again: the same contact, nothing new)
        await proxy.mend()
        if meanwhile == "nothing":
            await wait_for(lambda: len(notifies) == 2, timeout=5)
            assert (notifies[1].get("subscription-state") or "").startswith("terminated")
            assert await here.store.get(IMPUS[0]) is None
        else:
            await wait_for(lambda: there.core.counters["removal_changed_elsewhere"] == 1, 5)
            stored = await here.store.get(IMPUS[0])
            assert stored is not None and stored.version == again.version
            await asyncio.sleep(0.3)
            assert len(notifies) == 1  # no end told
        assert there.core.counters["removal_held_store_unavailable"] == 1


@pytest.mark.parametrize("what", ["changed", "ended", "ended-then-registered-again"])
async def test_a_publication_the_store_did_not_take_goes_once_it_answers(
    tmp_path, redis_url, monkeypatch, what
):
    """The subscription is held at the first instance; a second contact is added
    (changed), or the UE de-registers (ended), through the second, which is cut off
    from Redis right after its write, before publishing. Once the store answers it
    publishes, and the subscriber at the first gets its NOTIFY (before: never). An end
    whose IMPU was registered again through the first meanwhile is not published
    (it would end the newer registration's subscriptions there)."""
    import imsaka.cscf.scscf as scscf_module
    from imsaka.cscf.registrar import RedisBindingStore

    monkeypatch.setattr(scscf_module, "EXPIRY_RETRY", 0.1)
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        there = other.scscf
        ue = new_ue()
        notifies = await registered_and_subscribed_at(net, net.scscf_port, ue)
        await icscf_with_instances(net, [port, net.scscf_port], timeout=5.0)
        publish = RedisBindingStore.publish_change
        cuts: list = []

        async def cut_then_publish(self, record):
            if self is there.store and not cuts:
                cuts.append(record["kind"])
                await proxy.cut()
            return await publish(self, record)

        monkeypatch.setattr(RedisBindingStore, "publish_change", cut_then_publish)
        if what == "changed":
            await register_second_contact(net, ue)
        else:
            dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
            assert (await send(net, dereg)).status == 200
        if what == "ended-then-registered-again":
            await registered_again(net, ue)
        await asyncio.sleep(0.3)
        before = len(notifies)
        await proxy.mend()
        if what == "ended-then-registered-again":
            await wait_for(lambda: there.core.counters["publication_superseded"] == 1, 5)
            await asyncio.sleep(0.3)
            assert not _ended(notifies)
        else:
            await wait_for(lambda: len(notifies) > before, timeout=5)
            last = notifies[-1]
            if what == "ended":
                assert (last.get("subscription-state") or "").startswith("terminated")
            else:
                assert b"ccc:eee" in last.body
        assert there.core.counters["publication_held_store_unavailable"] == 1
        assert cuts == ["changed" if what == "changed" else "ended"]


async def test_a_store_that_stops_answering_is_an_outage_not_a_hang(
    tmp_path, redis_url, monkeypatch
):
    """The second instance's Redis connection stops carrying anything, left open (a
    partition that drops packets, no reset). Its read for a re-REGISTER gives up after
    the store's socket timeout (2 s) and the REGISTER gets 503, which the I-CSCF takes
    to the first instance at once. Before, the timeout was the Redis client's own:
    none at all before redis-py 8 (the read waited for ever, the REGISTER went on only
    when the I-CSCF's `scscf_timeout` passed the instance over), 5 s in redis-py 8."""
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, port, _, proxy):
        there = other.scscf
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200, r200
        icscf = await icscf_with_instances(net, [port, net.scscf_port], timeout=20.0)
        proxy.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        again = register(net, cseq=3, protected=True, authorization=PROTECTED_YES)
        r = await asyncio.wait_for(send(net, again), 15)
        took = loop.time() - started
        assert r.status == 200, r
        assert there.core.counters["register_refused_store_unavailable"] == 1
        assert icscf.counters["scscf_instance_failover"] == 1
        assert 1.5 < took < 4.5, took
