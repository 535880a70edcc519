"""Two S-CSCFs sharing one Redis binding store: a lapsed binding is deregistered at the HSS
once (TS 29.228 §6.1.2 TIMEOUT_DEREGISTRATION), by the S-CSCF that removes the record, and
a record refreshed through one S-CSCF is not removed by the other's stale timer."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest

from imsaka.config import parse_config
from imsaka.cscf.registrar import ContactBinding, MemoryBindingStore, Registration
from imsaka.cscf.scscf import Scscf
from imsaka.cscf.scscf_core import AssignmentType
from imsaka.diameter import cx

from .conftest import network_dict

pytestmark = pytest.mark.redis

IMPU = "sip:user1_public1@home1.net"
IMPI = "user1_private@home1.net"
T0 = float(int(time.time()))  # Redis keeps a record until a minute past its last contact


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def record(expires_at: float) -> Registration:
    uri = "sip:[5555::aaa:bbb:ccc:ddd]:1357"
    binding = ContactBinding(uri, expires_at, "", (), "call-1", 2)
    return Registration(IMPU, IMPI, {uri: binding}, (IMPU,), "", T0 - 100)


def scscf(store, clock, sars: list) -> Scscf:
    config = parse_config(network_dict(3868, 5061, 5062)).scscf

    async def cx_send(request):
        if isinstance(request, cx.ServerAssignmentRequest):
            sars.append(request.server_assignment_type)
        return SimpleNamespace(result=2001, experimental_result_code=None, user_data=None)

    return Scscf(config, cx_send=cx_send, store=store, clock=clock)


@pytest.fixture
async def stores(redis_url):
    from imsaka.cscf.registrar import RedisBindingStore

    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    made = [RedisBindingStore(redis_url, prefix=prefix) for _ in range(3)]
    try:
        yield made
    finally:
        await made[2].clear()
        for s in made:
            await s.close()


async def settle(*nodes: Scscf) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
        if not any(n._tasks for n in nodes):
            return
    await asyncio.gather(*(t for n in nodes for t in list(n._tasks)))


async def two_scscfs(stores) -> tuple[Clock, list, Scscf, Scscf]:
    """A registration lapsing at T0 + 60 in the store; two S-CSCFs that adopted it."""
    await stores[2].put(record(T0 + 60))
    clock, sars = Clock(), []
    a, b = scscf(stores[0], clock, sars), scscf(stores[1], clock, sars)
    await a.start()
    await b.start()
    return clock, sars, a, b


async def test_a_lapsed_binding_is_deregistered_once_by_two_scscfs(stores):
    clock, sars, a, b = await two_scscfs(stores)
    assert a.core.lookup(IMPU, T0) and b.core.lookup(IMPU, T0)
    clock.now = T0 + 61
    await asyncio.gather(a._fire(), b._fire())
    await settle(a, b)
    assert sars == [AssignmentType.TIMEOUT_DEREGISTRATION]
    assert await stores[2].get(IMPU) is None
    assert a.core.lookup(IMPU, clock.now) is None and b.core.lookup(IMPU, clock.now) is None
    counters = a.core.counters + b.core.counters
    assert counters["expiry_claimed_elsewhere"] == 1 and counters["registration_expired"] == 2
    assert not a.core._ops and not b.core._ops  # the SAR not sent leaves no operation
    await a.close()
    await b.close()


async def test_a_binding_refreshed_through_the_other_scscf_is_kept(stores):
    clock, sars, a, b = await two_scscfs(stores)
    # A re-registration through B pushed the expiry back; A still holds the old record.
    await stores[2].put(record(T0 + 3600))
    clock.now = T0 + 61
    await a._fire()
    await settle(a)
    assert sars == []
    assert (await stores[2].get(IMPU)) is not None
    adopted = a.core.lookup(IMPU, clock.now)
    assert adopted is not None and adopted.earliest_expiry() == T0 + 3600
    assert a.core.counters["expiry_refreshed_elsewhere"] == 1
    await a.close()
    await b.close()


@pytest.mark.parametrize("refreshed", [True, False], ids=["refreshed-elsewhere", "lapsed"])
async def test_a_binding_lapsing_while_the_store_is_out_of_reach_waits_for_it(
    stores, monkeypatch, refreshed
):
    """A's timer sees the binding lapse while A cannot reach the store (B can). Whether
    B refreshed it is not known: A neither ends it nor sends the SAR (before: it sent
    TIMEOUT_DEREGISTRATION "rather than none", and NOTIFYed the end of a registration
    B had just refreshed; chaos seed 10112). It asks the store again until it answers:
    refreshed, A adopts the record, no SAR; lapsed, A removes it and sends the SAR."""
    import imsaka.cscf.scscf as scscf_module

    monkeypatch.setattr(scscf_module, "EXPIRY_RETRY", 0.05)
    clock, sars, a, b = await two_scscfs(stores)
    if refreshed:
        await stores[2].put(record(T0 + 3600))  # a re-registration through B
    reachable = False
    claim_lapsed = type(stores[0]).claim_lapsed

    async def claim(store, impu: str, now: float):
        if store is stores[0] and not reachable:  # A's connection; B's still works
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await claim_lapsed(store, impu, now)

    monkeypatch.setattr(type(stores[0]), "claim_lapsed", claim)
    clock.now = T0 + 61
    await a._fire()
    await asyncio.sleep(0.3)
    assert sars == [] and a.core.counters["expiry_held_store_unavailable"] == 1
    assert a.core.counters["store_errors"] == 1  # (the retries neither count nor log)
    assert await stores[2].get(IMPU) is not None
    reachable = True
    await settle(a)
    if refreshed:
        assert sars == []
        adopted = a.core.lookup(IMPU, clock.now)
        assert adopted is not None and adopted.earliest_expiry() == T0 + 3600
        assert a.core.counters["expiry_refreshed_elsewhere"] == 1
    else:
        assert sars == [AssignmentType.TIMEOUT_DEREGISTRATION]
        assert await stores[2].get(IMPU) is None
    assert not a.core._ops  # the SAR sent or abandoned
    await a.close()
    await b.close()


async def test_memory_store_claims_like_redis():
    store = MemoryBindingStore()
    assert await store.claim_lapsed(IMPU, T0) == "gone"
    await store.put(record(T0 + 60))
    assert await store.claim_lapsed(IMPU, T0) == "live"
    assert await store.claim_lapsed(IMPU, T0 + 60) == "removed"
    assert await store.claim_lapsed(IMPU, T0 + 60) == "gone"


async def test_redis_store_claims_exactly_once(stores):
    await stores[2].put(record(T0 + 60))
    assert await stores[0].claim_lapsed(IMPU, T0) == "live"
    results = await asyncio.gather(
        *(s.claim_lapsed(IMPU, T0 + 60.5) for s in (stores[0], stores[1], stores[0]))
    )
    assert sorted(results) == ["gone", "gone", "removed"]


C1 = "sip:[5555::aaa:bbb:ccc:ddd]:1357"
C2 = "sip:[5555::aaa:bbb:ccc:eee]:1357"


def two_contacts(first: float, second: float) -> Registration:
    contacts = {
        C1: ContactBinding(C1, first, "", (), "call-1", 2),
        C2: ContactBinding(C2, second, "", (), "call-2", 2),
    }
    return Registration(IMPU, IMPI, contacts, (IMPU,), "", T0 - 100)


async def test_a_partial_expiry_does_not_overwrite_a_refresh_through_the_other_scscf(stores):
    # C1 lapses at T0 + 60, C2 stays; both S-CSCFs adopted that record.
    await stores[2].put(two_contacts(T0 + 60, T0 + 3600))
    clock, sars = Clock(), []
    a, b = scscf(stores[0], clock, sars), scscf(stores[1], clock, sars)
    await a.start()
    await b.start()
    # A re-registration of C1 through B (A still holds the old record) ...
    await stores[2].put(two_contacts(T0 + 1800, T0 + 3600))
    # ... then A's timer sees C1 lapse. A plain SET would write {C2} over the refresh.
    clock.now = T0 + 61
    await a._fire()
    await settle(a)
    stored = await stores[2].get(IMPU)
    assert stored is not None and stored.contacts[C1].expires_at == T0 + 1800
    adopted = a.core.lookup(IMPU, clock.now)
    assert adopted is not None and set(adopted.contacts) == {C1, C2}
    assert a.core.counters["partial_expiry_changed_elsewhere"] == 1
    assert sars == []
    await a.close()
    await b.close()


async def test_a_partial_expiry_unchanged_elsewhere_is_written(stores):
    await stores[2].put(two_contacts(T0 + 60, T0 + 3600))
    clock, sars = Clock(), []
    a = scscf(stores[0], clock, sars)
    await a.start()
    clock.now = T0 + 61
    await a._fire()
    await settle(a)
    stored = await stores[2].get(IMPU)
    assert stored is not None and set(stored.contacts) == {C2}
    assert a.core.counters["partial_expiry_changed_elsewhere"] == 0
    # The record A now holds is the stored one: a second partial write is accepted.
    held = a.core.lookup(IMPU, clock.now)
    assert held is not None and held.version == stored.version
    await a.close()


async def test_a_partial_expiry_of_a_record_removed_elsewhere_forgets_it(stores):
    await stores[2].put(two_contacts(T0 + 60, T0 + 3600))
    clock, sars = Clock(), []
    a = scscf(stores[0], clock, sars)
    await a.start()
    await stores[2].delete(IMPU)  # deregistered through the other S-CSCF
    clock.now = T0 + 61
    await a._fire()
    await settle(a)
    assert await stores[2].get(IMPU) is None
    assert a.core.lookup(IMPU, clock.now) is None
    await a.close()


@pytest.mark.parametrize("refreshed", [True, False], ids=["refreshed-elsewhere", "unchanged"])
async def test_a_partial_expiry_while_the_store_is_out_of_reach_waits_for_it(
    stores, monkeypatch, refreshed
):
    """C1 lapses at A while A cannot reach the store. The change is neither written nor
    told (published to the other S-CSCFs, NOTIFYed) until the store answers: then,
    unchanged there, it is written and told; refreshed through B meanwhile, A adopts
    the stored record and tells nobody of C1's end. Before, A dropped C1 here and
    nobody ever heard of it."""
    import imsaka.cscf.scscf as scscf_module

    monkeypatch.setattr(scscf_module, "EXPIRY_RETRY", 0.05)
    await stores[2].put(two_contacts(T0 + 60, T0 + 3600))
    clock, sars = Clock(), []
    a = scscf(stores[0], clock, sars)
    await a.start()
    if refreshed:
        await stores[2].put(two_contacts(T0 + 1800, T0 + 3600))  # C1 again, through B
    reachable = False
    put_if_unchanged = type(stores[0]).put_if_unchanged

    async def cas(store, registration):
        if store is stores[0] and not reachable:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await put_if_unchanged(store, registration)

    told: list = []

    async def publish_changed(stored):
        told.append(set(stored.registration.contacts))

    monkeypatch.setattr(type(stores[0]), "put_if_unchanged", cas)
    monkeypatch.setattr(a, "_publish_changed", publish_changed)
    clock.now = T0 + 61
    await a._fire()
    await asyncio.sleep(0.3)
    assert told == [] and a.core.counters["expiry_held_store_unavailable"] == 1
    assert a.core.counters["store_errors"] == 1  # (the retries neither count nor log)
    assert set((await stores[2].get(IMPU)).contacts) == {C1, C2}
    reachable = True
    await settle(a)
    stored = await stores[2].get(IMPU)
    held = a.core.lookup(IMPU, clock.now)
    if refreshed:
        assert told == [] and stored.contacts[C1].expires_at == T0 + 1800
        assert held is not None and set(held.contacts) == {C1, C2}
        assert a.core.counters["partial_expiry_changed_elsewhere"] == 1
    else:
        assert told == [{C2}] and set(stored.contacts) == {C2}
        assert held is not None and set(held.contacts) == {C2}
    assert sars == []
    await a.close()


async def test_put_if_unchanged_is_a_compare_and_set(stores):
    mine, theirs = stores[0], stores[1]
    await mine.put(two_contacts(T0 + 60, T0 + 3600))
    held = await mine.get(IMPU)
    other = await theirs.get(IMPU)
    assert held is not None and other is not None and held.version == other.version != 0
    await theirs.put(other)  # a write through the other S-CSCF
    assert not await mine.put_if_unchanged(held)
    fresh = await mine.get(IMPU)
    assert fresh is not None and fresh.version == other.version
    del fresh.contacts[C1]
    assert await mine.put_if_unchanged(fresh)
    assert not await theirs.put_if_unchanged(other)  # now the other one is stale
    gone = two_contacts(T0, T0)
    gone.impu = "sip:nobody@home1.net"
    assert not await mine.put_if_unchanged(gone)


async def test_memory_store_put_if_unchanged():
    store = MemoryBindingStore()
    reg = two_contacts(T0 + 60, T0 + 3600)
    assert not await store.put_if_unchanged(reg)
    await store.put(reg)
    copy = await store.get(IMPU)
    assert copy is not None and await store.put_if_unchanged(reg)
    assert not await store.put_if_unchanged(copy)


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_delete_if_unchanged_removes_only_the_copy_read(stores, kind):
    mine = stores[0] if kind == "redis" else MemoryBindingStore()
    theirs = stores[1] if kind == "redis" else mine
    await mine.put(two_contacts(T0 + 60, T0 + 3600))
    held = await mine.get(IMPU)
    other = await theirs.get(IMPU)
    assert held is not None and other is not None
    await theirs.put(other)  # registered again through the other S-CSCF
    assert not await mine.delete_if_unchanged(held)
    assert await mine.get(IMPU) is not None
    assert await mine.delete_if_unchanged(other)
    assert await mine.get(IMPU) is None
    assert not await mine.delete_if_unchanged(other)  # gone


async def test_each_write_of_the_shared_store_is_one_debug_line_without_user_data(stores, caplog):
    """What an instance wrote, and when, read off a run (how the cross-instance defects
    of 2026-11-28 were found, with a build of its own then): one debug line per write,
    with the identities, contacts, expiries and version, never the user data."""
    import logging

    a = stores[0]
    reg = record(T0 + 60)
    reg.user_data = "<IMSSubscription>secret-profile</IMSSubscription>"
    with caplog.at_level(logging.DEBUG, logger="imsaka.cscf.registrar"):
        await a.put(reg)
        assert await a.put_if_unchanged(reg)
        stale = Registration.from_json(reg.to_json())
        stale.version = 2  # not the record's: refused
        assert not await a.put_if_unchanged(stale)
        assert await a.claim_lapsed(IMPU, T0) == "live"
        await a.delete(IMPU)
    lines = [r.getMessage() for r in caplog.records if r.name == "imsaka.cscf.registrar"]
    assert [line.split(" sip:")[0] for line in lines] == [
        "store: put",
        "store: put-if-unchanged",
        "store: put refused (changed)",
        "store: claim lapsed",
        "store: delete",
    ], lines
    assert f"version {reg.version}" in lines[1] and "[5555::aaa:bbb:ccc:ddd]:1357" in lines[0]
    assert not [line for line in lines if "secret-profile" in line]


@pytest.mark.parametrize("loop", ["claim", "partial", "publish"])
async def test_a_store_call_swallowing_the_close_does_not_keep_a_retry_loop_going(
    stores, monkeypatch, loop
):
    """A loop that tries the store again (a held expiry, a held partial expiry, a
    publication not taken) is in a store call when the S-CSCF closes; the call
    swallows the cancellation (redis-py's reads can) and fails instead. The loop ends
    at its next pause, and close() returns (before: the loop went on and close()
    waited for it forever: a chaos run hung at its end)."""
    import imsaka.cscf.scscf as scscf_module

    monkeypatch.setattr(scscf_module, "EXPIRY_RETRY", 0.05)
    await stores[2].put(two_contacts(T0 + 60, T0 + 3600 if loop == "partial" else T0 + 60))
    clock, sars = Clock(), []
    a = scscf(stores[0], clock, sars)
    await a.start()
    entered = asyncio.Event()
    calls: list = []

    async def swallowing(store, *args):
        calls.append(args)
        if len(calls) == 1 and loop != "publish":  # the timer's own call: out of reach
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        entered.set()  # a call of the loop that tries again
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # (swallowed)
        raise ConnectionError("Connection closed by server.")

    name = {"claim": "claim_lapsed", "partial": "put_if_unchanged", "publish": "get"}[loop]
    monkeypatch.setattr(type(stores[0]), name, swallowing)
    if loop == "publish":
        a._spawn(a._publish_later({"impu": IMPU, "kind": "ended"}, None))
    else:
        clock.now = T0 + 61
        await a._fire()
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(asyncio.shield(a.close()), 5)
    assert not a._tasks


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_of_impis_finds_the_records_of_those_impis_only(stores, kind):
    """`of_impis` (an RTR naming no IMPU): the records of the IMPIs named, none other,
    across more records than one scan batch reads."""
    store = MemoryBindingStore() if kind == "memory" else stores[0]
    binding = record(T0 + 600).contacts
    for i in range(1200):
        impu = f"sip:u{i}@home1.net"
        await store.put(Registration(impu, f"u{i % 400}@home1.net", binding, (impu,), "", T0))
    found = await store.of_impis(["u7@home1.net", "u399@home1.net", "nobody@home1.net"])
    assert sorted(r.impu for r in found) == sorted(
        f"sip:u{i}@home1.net" for i in range(1200) if i % 400 in (7, 399)
    )
    assert {r.impi for r in found} == {"u7@home1.net", "u399@home1.net"}
