"""HSS store: schema from the Alembic migration, SQN allocation (TS 33.102 Annex C),
provisioning writes all-or-nothing, User-Data XML (TS 29.228 Annex E)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st

from imsaka.aka.sqn import HssSqn, resync_sqn_he
from imsaka.hss import models, plans
from imsaka.hss.store import Conflict, HssStore, NotFound, sqn_sequence, sqn_step
from imsaka.hss.subscriber import FieldError, validate_subscriber

from .conftest import OPC, PG_URL, alice, wipe


@given(st.integers(0, (1 << 40)), st.integers(1, 40))
def test_sqn_steps_match_the_aka_core(sqn_he, n):
    # The SQL arithmetic is mirrored by sqn_step; both must equal imsaka.aka.sqn.
    expected = HssSqn(sqn_he).take(n)
    last = sqn_step(sqn_he, n)
    assert last == expected[-1]
    assert sqn_sequence(last, n) == expected


async def test_migration_creates_exactly_the_model_schema(store):
    def diff(sync_conn):
        ctx = MigrationContext.configure(sync_conn, opts={"version_table": "hss_alembic_version"})
        return compare_metadata(ctx, models.metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        version = (
            await conn.execute(sa.text("SELECT version_num FROM hss_alembic_version"))
        ).scalar()
    assert version == "0001"


async def test_migration_is_idempotent(db_url):
    s1 = await HssStore.open(db_url)
    await s1.add_subscriber(alice())
    await s1.close()
    s2 = await HssStore.open(db_url)  # second start: nothing to do, data intact
    assert (await s2.get_subscriber("alice@home1.net")).impi == "alice@home1.net"
    await s2.close()


async def test_allocate_advances_atomically_and_in_sql(store):
    await store.add_subscriber(alice(sqn="0000000003e0"))
    got = await store.allocate_sqns("alice@home1.net", 3)
    assert got == HssSqn(0x3E0).take(3)
    assert await store.sqn_of("alice@home1.net") == got[-1]
    with pytest.raises(NotFound):
        await store.allocate_sqns("nobody@home1.net", 1)


async def test_concurrent_mars_get_distinct_sqns_in_few_commits(store):
    await store.add_subscriber(alice())
    grants = await asyncio.gather(
        *[store.mar("alice@home1.net", "sip:alice@home1.net", 2, "sip:s") for _ in range(50)]
    )
    sqns = [s for g in grants for s in g.sqns]
    assert len(sqns) == 100 and len(set(sqns)) == 100
    assert max(sqns) == await store.sqn_of("alice@home1.net")
    assert sorted(sqns) == HssSqn(0x20).take(100)
    assert store.batches < 50  # group commit really grouped


async def test_mar_identity_checks(store):
    await store.add_subscriber(alice())
    await store.add_subscriber(
        validate_subscriber(impi="bob@home1.net", impus=["sip:bob@home1.net"], k="00" * 16, opc=OPC)
    )
    before = await store.sqn_of("alice@home1.net")
    unknown = await store.mar("alice@home1.net", "sip:nobody@home1.net", 1, None)
    assert (unknown.impi_known, unknown.impu_known, unknown.matched) == (True, False, False)
    mismatch = await store.mar("alice@home1.net", "sip:bob@home1.net", 1, None)
    assert (mismatch.impi_known, mismatch.impu_known, mismatch.matched) == (True, True, False)
    bad_scheme = await store.mar(
        "alice@home1.net", "sip:alice@home1.net", 1, None, scheme="SIP Digest"
    )
    assert bad_scheme.matched
    assert await store.sqn_of("alice@home1.net") == before  # no SQN taken by a refused MAR


async def test_mar_scheme_and_ceiling_checks_of_a_lone_mar(store):
    # A MAR alone in its commit is one UPDATE that checks the scheme and the ceiling
    # itself: a scheme is matched as a whole name, never a part of one.
    from imsaka.hss.store import IND_BITS, MAX_SEQ, SQN_EXHAUSTED

    await store.add_subscriber(alice())
    before = await store.sqn_of("alice@home1.net")
    for part in ("Digest-AKAv1", "AKAv1-MD5", "Digest-AKAv1-MD5,Digest-AKAv2-MD5"):
        refused = await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None, scheme=part)
        assert refused.matched
    assert await store.sqn_of("alice@home1.net") == before
    for scheme in ("Digest-AKAv1-MD5", "Digest-AKAv2-MD5"):
        grant = await store.mar("alice@home1.net", "sip:alice@home1.net", 1, "sip:s", scheme=scheme)
        assert grant.sqns[-1] == await store.sqn_of("alice@home1.net")
    top = (MAX_SEQ - 1) << IND_BITS
    await store.update_subscriber("alice@home1.net", sqn=top)
    assert await store.mar("alice@home1.net", "sip:alice@home1.net", 2, None) is SQN_EXHAUSTED
    assert await store.sqn_of("alice@home1.net") == top
    grant = await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert grant.sqns[-1] >> IND_BITS == MAX_SEQ


async def test_resync_keeps_or_restarts_per_aka_core(store):
    await store.add_subscriber(alice(sqn="000000001000"))
    # SQN_MS just below SQN_HE: SQN_HE stays, the next vector continues from it.
    g = await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None, resync_to=0x0FE0)
    assert g.sqns == (sqn_step(resync_sqn_he(0x1000, 0x0FE0)),)
    # SQN_MS far ahead: SQN_HE restarts from SQN_MS.
    g = await store.mar("alice@home1.net", "sip:alice@home1.net", 2, None, resync_to=0x80000000)
    assert g.sqns == tuple(HssSqn(0x80000000).take(2))


async def test_import_is_all_or_nothing(store):
    await store.add_subscriber(alice())
    batch = [
        validate_subscriber(
            impi=f"u{i}@home1.net", impus=[f"sip:u{i}@home1.net"], k="00" * 16, opc=OPC
        )
        for i in range(10)
    ]
    clash = validate_subscriber(impi="z@home1.net", impus=["tel:+15550001"], k="00" * 16, opc=OPC)
    with pytest.raises(Conflict) as err:
        await store.import_subscribers([*batch, clash])
    assert err.value.field == "impu"
    assert await store.count_subscribers() == 1
    assert await store.import_subscribers(batch) == 10
    assert await store.count_subscribers() == 11


async def test_show_never_returns_secrets(store):
    await store.add_subscriber(alice())
    view = await store.get_subscriber("alice@home1.net")
    text = repr(view) + repr(view.as_dict())
    spec = alice()
    for secret in (spec.k, spec.opc, spec.op):
        assert secret.hex() not in text
    assert "k" not in view.as_dict() and "opc" not in view.as_dict()
    assert "465b5ce8" not in repr(spec)  # SubscriberSpec hides K in its repr too


async def test_delete_removes_everything(store):
    await store.add_subscriber(alice())
    await store.delete_subscriber("alice@home1.net")
    async with store.engine.connect() as conn:
        for table in ("impu", "impi", "subscription", "implicit_set", "service_profile"):
            assert (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar() == 0
    with pytest.raises(NotFound):
        await store.delete_subscriber("alice@home1.net")


async def test_assignment_survives_a_restart(db_url):
    s = await HssStore.open(db_url)
    await s.add_subscriber(alice())
    await s.assign(
        "sip:alice@home1.net",
        state=models.RegState.REGISTERED,
        server_name="sip:scscf1",
        server_host="scscf1.home1.net",
    )
    await s.close()
    s = await HssStore.open(db_url)
    state = await s.user_state("tel:+15550001")  # implicit set member registered too
    assert state.scscf_name == "sip:scscf1" and state.reg_state == models.RegState.REGISTERED
    await s.close()


async def test_user_data_follows_the_kamailio_rules(store):
    ifc = (
        "<InitialFilterCriteria><Priority>0</Priority><TriggerPoint><ConditionTypeCNF>0</ConditionTypeCNF>"
        "<SPT><ConditionNegated>0</ConditionNegated><Group>0</Group><Method>INVITE</Method></SPT></TriggerPoint>"
        "<ApplicationServer><ServerName>sip:as.home1.net</ServerName><DefaultHandling>0</DefaultHandling>"
        "</ApplicationServer></InitialFilterCriteria>"
    )
    await store.add_subscriber(alice(ifc_xml=ifc, barred=["tel:+15550001"]))
    data, members = await store.user_data("alice@home1.net", "tel:+15550001")
    text = data.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(data)
    assert root.tag == "IMSSubscription" and "xmlns" not in text
    assert [c.tag for c in root] == ["PrivateID", "ServiceProfile"]
    profile = root.find("ServiceProfile")
    tags = [c.tag for c in profile]
    assert tags == ["PublicIdentity", "PublicIdentity", "InitialFilterCriteria"]
    for pub in profile.findall("PublicIdentity"):
        assert [c.tag for c in pub] == ["BarringIndication", "Identity"]
    ids = {
        p.find("Identity").text: p.find("BarringIndication").text
        for p in profile.findall("PublicIdentity")
    }
    assert ids == {"sip:alice@home1.net": "0", "tel:+15550001": "1"}
    assert "<Identity>tel:+15550001</Identity>" in text  # byte-exact
    assert set(members) == {"sip:alice@home1.net", "tel:+15550001"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"impi": "no-realm"}, "impi"),
        ({"impus": ["mailto:x@y"]}, "impu"),
        ({"k": "zz" * 16}, "k"),
        ({"k": "00" * 15}, "k"),
        ({"op": None, "opc": None}, "op/opc"),
        ({"opc": OPC}, "op/opc"),  # both OP (from alice) and OPc
        ({"amf": "123"}, "amf"),
        ({"sqn": "1" * 13}, "sqn"),
        ({"schemes": ["Digest-SHA512"]}, "schemes"),
        ({"schemes": ["SIP Digest"]}, "password"),
        (
            {"ifc_xml": "<InitialFilterCriteria><Priority>x</Priority></InitialFilterCriteria>"},
            "ifc_xml",
        ),
        ({"ifc_xml": "<Foo/>"}, "ifc_xml"),
        ({"ifc_xml": "<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"}, "ifc_xml"),
    ],
)
def test_bad_subscriber_fields_are_named(fields, field):
    with pytest.raises(FieldError) as err:
        alice(**fields)
    assert err.value.field == field
    assert "465b5ce8" not in str(err.value)


@pytest.mark.postgres
async def test_postgres_store_roundtrip():
    s = await HssStore.open(PG_URL)
    try:
        await wipe(s)
        await s.add_subscriber(alice())
        grants = await asyncio.gather(
            *[s.mar("alice@home1.net", "sip:alice@home1.net", 1, "sip:s") for _ in range(30)]
        )
        sqns = [x for g in grants for x in g.sqns]
        assert len(set(sqns)) == 30 and max(sqns) == await s.sqn_of("alice@home1.net")
    finally:
        await wipe(s)
        await s.close()


async def test_mixed_batches_hand_out_each_sqn_once(store):
    import random

    rng = random.Random(7)
    users = [f"m{i}@home1.net" for i in range(5)]
    await store.import_subscribers(
        [validate_subscriber(impi=u, impus=[f"sip:{u}"], k="00" * 16, opc=OPC) for u in users]
    )
    expected = {u: HssSqn(0) for u in users}
    for _ in range(20):
        jobs = []
        for _ in range(rng.randint(1, 40)):
            u = rng.choice(users)
            kind = rng.random()
            impu = (
                f"sip:{u}"
                if kind > 0.15
                else ("sip:ghost@home1.net" if kind > 0.05 else f"sip:{users[0]}")
            )
            jobs.append((u, impu, rng.randint(1, 4)))
        results = await asyncio.gather(*[store.mar(u, impu, n, "sip:s") for u, impu, n in jobs])
        for (u, impu, n), res in zip(jobs, results, strict=True):
            if impu != f"sip:{u}":
                assert not res.matched
                continue
            assert len(res.sqns) == n
        # Per IMPI the union of this round's SQNs is exactly the next steps of the counter.
        for u in users:
            got = sorted(
                s
                for (uu, impu, _), r in zip(jobs, results, strict=True)
                if uu == u and impu == f"sip:{u}"
                for s in r.sqns
            )
            want = expected[u].take(len(got))
            assert got == want
            assert await store.sqn_of(u) == expected[u].sqn_he


# --------------------------------------------------------------------------- group commit


def _users(n):
    return [
        validate_subscriber(
            impi=f"g{i}@home1.net", impus=[f"sip:g{i}@home1.net"], k=f"{i + 1:032x}", opc=OPC
        )
        for i in range(n)
    ]


async def test_concurrent_sars_share_commits_and_all_land(store):
    await store.import_subscribers(_users(60))
    sets = await asyncio.gather(
        *[
            store.assign(
                f"sip:g{i}@home1.net",
                state=models.RegState.REGISTERED,
                server_name="sip:scscf1.home1.net",
                server_host="scscf1.home1.net",
                impi=f"g{i}@home1.net",
            )
            for i in range(60)
        ]
    )
    assert sets == [(f"sip:g{i}@home1.net",) for i in range(60)]
    assert store.batches < 30  # SAR writes were grouped, not one commit each
    for i in range(60):
        view = await store.get_subscriber(f"g{i}@home1.net")
        assert view.scscf_name == "sip:scscf1.home1.net"
        assert view.impus[0].reg_state is models.RegState.REGISTERED


async def test_mixed_batch_keeps_arrival_order(store):
    await store.add_subscriber(alice())
    impi, impu = "alice@home1.net", "sip:alice@home1.net"
    # MAR (pending S-CSCF set) then SAR REGISTRATION (pending cleared), queued together.
    grant, _ = await asyncio.gather(
        store.mar(impi, impu, 1, "sip:s1"),
        store.assign(impu, state=models.RegState.REGISTERED, server_name="sip:s1", impi=impi),
    )
    assert grant.sqns
    assert (await store.get_subscriber(impi)).pending_scscf is None
    # SAR first, MAR after: the MAR's pending S-CSCF stays.
    await asyncio.gather(
        store.assign(impu, state=models.RegState.REGISTERED, server_name="sip:s1", impi=impi),
        store.mar(impi, impu, 1, "sip:s2"),
    )
    assert (await store.get_subscriber(impi)).pending_scscf == "sip:s2"


async def test_one_bad_write_does_not_fail_its_batch(store):
    await store.import_subscribers(_users(5))

    def broken():
        # a write plan that fails after it has written: its batch is rolled back
        yield plans.RUN, "UPDATE impi SET pending_scscf = 'sip:broken'", {}
        raise RuntimeError("constraint blew up")

    results = await asyncio.gather(
        *[store.mar(f"g{i}@home1.net", f"sip:g{i}@home1.net", 1, None) for i in range(5)],
        store.assign("sip:nobody@home1.net", state=models.RegState.REGISTERED, server_name="x"),
        store._write(broken),
        store.clear_pending("g0@home1.net"),
        return_exceptions=True,
    )
    assert all(r.sqns for r in results[:5])
    assert isinstance(results[5], NotFound)
    assert isinstance(results[6], RuntimeError)
    assert results[7] is None
    sqns = [r.sqns[0] for r in results[:5]]
    assert [await store.sqn_of(f"g{i}@home1.net") for i in range(5)] == sqns  # committed once
    assert (await store.get_subscriber("g1@home1.net")).pending_scscf is None  # rolled back


async def test_reads_do_not_wait_for_the_writer(store, db_url):
    import sqlite3

    await store.add_subscriber(alice())
    other = sqlite3.connect(db_url.split(":///", 1)[1], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        other.execute("UPDATE impi SET pending_scscf = 'sip:elsewhere'")
        check, state = await asyncio.wait_for(
            store.checked_state("alice@home1.net", "sip:alice@home1.net", with_pending=True), 2
        )
        assert check.matched and state.pending_scscf is None  # the committed snapshot
        assert (await asyncio.wait_for(store.user_data(None, "sip:alice@home1.net"), 2))[0]
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_resync_that_would_pass_the_top_of_seq_is_refused(store):
    from imsaka.hss.store import IND_BITS, MAX_SEQ, SQN_EXHAUSTED

    top = ((MAX_SEQ - 2) << IND_BITS) | 3
    await store.add_subscriber(alice(sqn=f"{top:012x}"))
    # SQN_MS just below SQN_HE keeps SQN_HE; 5 more vectors would pass 2^43 − 1.
    ms = (MAX_SEQ - 5) << IND_BITS
    got = await store.mar("alice@home1.net", "sip:alice@home1.net", 5, None, resync_to=ms)
    assert got is SQN_EXHAUSTED
    assert await store.sqn_of("alice@home1.net") == top  # nothing moved
    got = await store.mar("alice@home1.net", "sip:alice@home1.net", 2, None, resync_to=ms)
    assert got.sqns[-1] >> IND_BITS == MAX_SEQ


def test_sqn_step_never_wraps():
    from imsaka.aka.sqn import SqnExhaustedError, next_sqn
    from imsaka.hss.store import IND_BITS, MAX_SEQ

    last = (MAX_SEQ - 1) << IND_BITS
    assert sqn_step(last) == next_sqn(last)
    with pytest.raises(SqnExhaustedError):
        sqn_step(MAX_SEQ << IND_BITS)
    with pytest.raises(SqnExhaustedError):
        next_sqn(MAX_SEQ << IND_BITS)
    with pytest.raises(SqnExhaustedError):
        sqn_step(last, 2)


async def test_close_with_writes_in_flight_fails_them_instead_of_hanging(store):
    await store.import_subscribers(_users(20))
    tasks = [
        asyncio.ensure_future(store.mar(f"g{i}@home1.net", f"sip:g{i}@home1.net", 1, None))
        for i in range(20)
    ]
    while not store._inflight:  # the first batch is on the writer thread
        await asyncio.sleep(0)
    await store.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, RuntimeError) or r.sqns for r in results)


async def _cx_story(s: HssStore) -> list:
    """Every Cx read and registration write of the store, in registration order."""
    impi, impu = "alice@home1.net", "sip:alice@home1.net"
    await s.add_subscriber(
        alice(
            visited_networks=["visited1.net"],
            schemes=["Digest-AKAv1-MD5", "SIP Digest"],
            digest_password="pw",
        )
    )
    await s.add_impus(impi, ["sip:alice-work@home1.net"], new_set=True)
    out: list = [await s.count_subscribers(), await s.scscf_pool()]
    out.append(await s.checked_state(impi, impu, with_pending=True))
    out.append(await s.checked_state("nobody@home1.net", impu))
    out.append(await s.checked_state(impi, "sip:nobody@home1.net"))
    grant = await s.mar(impi, impu, 2, "sip:scscf1")
    out.append((grant.sqns, grant.schemes, grant.digest_password))
    out.append(await s.user_state(impu, impi))
    out.append(
        await s.assign(
            impu,
            state=models.RegState.REGISTERED,
            server_name="sip:scscf1",
            server_host="scscf1.home1.net",
            server_realm="home1.net",
            impi=impi,
        )
    )
    out.append(await s.user_data(impi, impu))
    out.append(await s.user_data(None, "tel:+15550001"))
    out.append(await s.serving_for_impu("sip:alice-work@home1.net"))
    out.append(await s.serving_for_impi(impi))
    out.append((await s.get_subscriber(impi)).as_dict())
    out.append(await s.digest_credentials(impi, "sip:scscf2"))
    await s.clear_pending(impi)
    grant, members = await asyncio.gather(  # one batch: an SQN segment, then a write
        s.mar(impi, impu, 1, "sip:scscf1"),
        s.assign(impu, state=models.RegState.REGISTERED, server_name="sip:scscf1", impi=impi),
    )
    out.append((grant.sqns, members, (await s.get_subscriber(impi)).pending_scscf))
    out.append(await s.mar(impi, impu, 1, None, resync_to=(7 << 5) | 3))
    out.append(
        await s.assign(
            impu, state=models.RegState.NOT_REGISTERED, server_name=None, keep_server=False
        )
    )
    out.append((await s.get_subscriber(impi)).as_dict())
    out.append(await s.credentials(impi))
    for bad in (s.user_state("sip:nobody@home1.net"), s.serving_for_impi("x@y"), s.sqn_of("x@y")):
        with pytest.raises(NotFound):
            await bad
    return out


@pytest.mark.postgres
async def test_every_backend_reads_and_writes_the_same(db_url):
    """SQLite file (loop-thread sqlite3 reads, writer thread), SQLite in memory (the
    SQLAlchemy driver of the plans) and PostgreSQL (asyncpg) give equal results."""
    stories = []
    for url in (db_url, "sqlite+aiosqlite:///:memory:", PG_URL):
        s = await HssStore.open(url)
        try:
            await wipe(s)
            await s.sync_scscf_pool(
                [
                    {
                        "name": "sip:scscf1",
                        "diameter_host": "scscf1.home1.net",
                        "optional_capabilities": (1, 2),
                    }
                ]
            )
            stories.append(await _cx_story(s))
        finally:
            await wipe(s)
            await s.close()
    assert stories[0] == stories[1] == stories[2]
    assert stories[0][2][1].visited_networks == ("visited1.net",)


async def test_reregistration_that_changes_nothing_writes_nothing(store):
    store.inline_commit_max = -1.0  # every commit on the writer thread's connection
    await store.add_subscriber(alice())
    impi, impu = "alice@home1.net", "sip:alice@home1.net"
    await store.mar(impi, impu, 1, "sip:s1")
    first = dict(
        state=models.RegState.REGISTERED, server_name="sip:s1", server_host="s1", impi=impi
    )
    await store.assign(impu, **first)
    changes = store._writer_db.total_changes
    assert await store.assign(impu, **first) == (impu, "tel:+15550001")
    assert store._writer_db.total_changes == changes  # no row rewritten: no fsync'd frame
    await store.assign(impu, **{**first, "server_host": "s2"})  # another S-CSCF host
    assert store._writer_db.total_changes == changes + 1
    assert (await store.serving_for_impi(impi)).scscf_host == "s2"


async def test_a_busy_database_sends_the_read_to_a_reader_thread(store, tmp_path, monkeypatch):
    import sqlite3

    await store.add_subscriber(alice())
    # A database in rollback-journal mode that another connection holds exclusively:
    # any read of it fails at once with SQLITE_BUSY (busy timeout 0, as the loop's).
    path = str(tmp_path / "locked.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE impu (x)")
    holder.execute("BEGIN EXCLUSIVE")
    busy = sqlite3.connect(path, timeout=0.0, isolation_level=None)
    try:
        monkeypatch.setattr(store, "_loop_reader", lambda: busy)
        check, state = await store.checked_state(
            "alice@home1.net", "sip:alice@home1.net", with_pending=True
        )
        assert check.matched and state.impu == "sip:alice@home1.net"
        assert store.reads_deferred == 1  # answered from a reader thread's connection
        assert not busy.in_transaction
    finally:
        busy.close()
        holder.close()


def _traced(store: HssStore) -> list[str]:
    """The statements the loop's sqlite3 connection runs from now on."""
    assert store._loop_db is not None
    seen: list[str] = []
    store._loop_db.set_trace_callback(seen.append)
    return seen


async def test_a_state_read_is_one_statement_without_a_transaction(store):
    impi, impu = "alice@home1.net", "sip:alice@home1.net"
    await store.add_subscriber(alice())
    await store.count_subscribers()  # opens the loop's connection
    seen = _traced(store)
    check, state = await store.checked_state(impi, impu, with_pending=True)
    assert check.matched and state.visited_networks == ()
    assert len(seen) == 1 and seen[0].startswith("SELECT")  # no BEGIN, no COMMIT
    # With visited networks the plan reads on: all of it again in one snapshot.
    await store.update_subscriber(impi, visited_networks=["b.example", "a.example"])
    seen.clear()
    _check, state = await store.checked_state(impi, impu)
    assert sorted(state.visited_networks) == ["a.example", "b.example"]
    assert seen[1] == "BEGIN" and seen[-1] == "COMMIT" and len(seen) == 5
    # An unknown IMPU: the identity check goes on in one snapshot too.
    seen.clear()
    check, state = await store.checked_state(impi, "sip:nobody@home1.net")
    assert state is None and check.impi_known and not check.impu_known
    assert seen[1] == "BEGIN" and seen[-1] == "COMMIT"


async def test_lone_commits_run_on_the_read_connection_and_are_read_back(store):
    # The loop's reads and its inline group commits share one connection, so a commit
    # leaves that connection's page cache valid; the read right after sees the commit.
    impi, impu = "alice@home1.net", "sip:alice@home1.net"
    await store.add_subscriber(alice())
    store.alone = lambda: True
    store.inline_commit_max = 10.0  # however slow this machine's fsync
    await store.count_subscribers()
    seen = _traced(store)
    grant = await store.mar(impi, impu, 1, "sip:scscf1")
    assert store.commits_inline == 1 and "BEGIN IMMEDIATE" in seen and seen[-1] == "COMMIT"
    _check, state = await store.checked_state(impi, impu, with_pending=True)
    assert state.pending_scscf == "sip:scscf1"
    assert await store.sqn_of(impi) == grant.sqns[-1]
    got = await store.assign(
        impu, state=models.RegState.REGISTERED, server_name="sip:scscf1", impi=impi, want_set=False
    )
    assert got is None and store.commits_inline == 2
    _check, state = await store.checked_state(impi, impu, with_pending=True)
    assert state.reg_state == models.RegState.REGISTERED and state.pending_scscf is None
    assert state.scscf_name == "sip:scscf1"
