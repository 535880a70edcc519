"""Hostile or odd Cx input at the HSS: the right answer code, never a crash, and the
server keeps serving (TS 29.229 §6.2, RFC 6733 §7.1)."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.diameter import codec, cx
from imsaka.hss.store import WAIT

from .conftest import HOME, HSS_HOST, SCSCF_HOST, alice, mar, sar, session_id, uar


def _replace(msg: codec.Message, code: int, vendor: int, data: bytes) -> codec.Message:
    avps = tuple(
        codec.Avp(a.code, a.vendor, a.flags, data) if (a.code, a.vendor) == (code, vendor) else a
        for a in msg.avps
    )
    return codec.Message(msg.code, msg.flags, msg.app_id, 0, 0, avps)


def _result(answer) -> int | None:
    if isinstance(answer, codec.Message):
        avp = answer.find(codec.AVP_RESULT_CODE)
        return avp.u32 if avp is not None else None
    return answer.result


async def test_huge_vector_count_is_capped(hss, scscf):
    msg = _replace(
        mar().to_message(),
        cx.AVP_SIP_NUMBER_AUTH_ITEMS,
        codec.VENDOR_3GPP,
        (2**32 - 1).to_bytes(4, "big"),
    )
    answer = await scscf.request(msg)
    decoded = cx.decode(answer) if isinstance(answer, codec.Message) else answer
    assert decoded.result_code == cx.DIAMETER_SUCCESS
    assert len(decoded.sip_auth_data_items) == hss.config.max_vectors


async def test_invalid_utf8_identity_gets_an_error_answer(hss, scscf):
    msg = _replace(uar().to_message(), codec.AVP_USER_NAME, 0, b"\xff\xfe\x00alice")
    answer = await scscf.request(msg)
    assert _result(answer) not in (None, cx.DIAMETER_SUCCESS)
    assert (await scscf.request(uar())).is_success


async def test_empty_and_oversized_identities(hss, scscf):
    empty = await scscf.request(uar(impi="", impu=""))
    assert empty.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    huge = "sip:" + "a" * 5000 + "@home1.net"
    answer = await scscf.request(mar(impi="x" * 5000 + "@home1.net", impu=huge))
    assert answer.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    assert (await scscf.request(mar())).result_code == cx.DIAMETER_SUCCESS


async def test_hss_initiated_commands_sent_to_the_hss_are_refused(hss, scscf):
    rtr = cx.RegistrationTerminationRequest(
        session_id=session_id(),
        origin_host=SCSCF_HOST,
        origin_realm=HOME,
        destination_host=HSS_HOST,
        destination_realm=HOME,
        user_name="alice@home1.net",
        deregistration_reason=cx.DeregistrationReason(0),
    )
    answer = await scscf.request(rtr.to_message())
    assert answer.is_error  # E bit: a protocol error (RFC 6733 §7.1.3)
    assert answer.find(codec.AVP_RESULT_CODE).u32 == cx.DIAMETER_COMMAND_UNSUPPORTED
    assert answer.find(codec.AVP_SESSION_ID).text == rtr.session_id
    # nothing changed
    assert (await hss.store.get_subscriber("alice@home1.net")).impi == "alice@home1.net"


async def test_sar_without_any_identity_is_missing_avp(hss, scscf):
    answer = await scscf.request(sar(cx.ServerAssignmentType.REGISTRATION, impi=None, impus=()))
    assert answer.result_code == cx.DIAMETER_MISSING_AVP


async def test_flood_of_unknown_users_does_not_starve_real_ones(hss, scscf):
    bad = [
        scscf.request(mar(impi=f"ghost{i}@home1.net", impu=f"sip:ghost{i}@home1.net"))
        for i in range(200)
    ]
    good = [scscf.request(mar()) for _ in range(20)]
    answers = await asyncio.gather(*bad, *good)
    assert all(a.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN for a in answers[:200])
    good_sqns = [a.sip_auth_data_items[0].autn for a in answers[200:]]
    assert all(a.result_code == cx.DIAMETER_SUCCESS for a in answers[200:])
    assert len(set(good_sqns)) == 20


@pytest.mark.parametrize("way", ["at-once", "task"])
async def test_store_failure_answers_unable_to_comply(hss, scscf, monkeypatch, way):
    def broken_now(*args, **kwargs):
        raise RuntimeError("database gone")

    async def broken(*args, **kwargs):
        raise RuntimeError("database gone")

    if way == "at-once":  # the read on the loop's connection fails, whichever way asks
        monkeypatch.setattr(hss.store, "_read_on", broken_now)
    else:  # no read at once: the async way's reads fail
        monkeypatch.setattr(hss.store, "_read_now", lambda *args: WAIT)
        monkeypatch.setattr(hss.store, "_read", broken)
    answer = await scscf.request(uar())
    assert answer.result_code == cx.DIAMETER_UNABLE_TO_COMPLY
    assert hss.service.counters["unable-to-comply"] == 1
    monkeypatch.undo()
    assert (await scscf.request(uar())).is_success


async def test_sqlite_runs_with_full_durability(store):
    async with store.engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
        sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
    assert mode == "wal" and sync == 2  # FULL: the WAL is fsynced at every commit
    await store.add_subscriber(alice())
    # A lone commit runs on the loop's connection (its reads' too), a commit under load
    # (here: forced) on the writer thread's: both FULL.
    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert store._loop_db is not None
    store.inline_commit_max = -1.0
    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert store._writer_db is not None
    for db in (store._loop_db, store._writer_db):
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_only_commits_with_sqns_are_fsynced(store):
    """A group commit that hands out SQNs is fsynced before its answer (synchronous=FULL,
    TS 33.102 Annex C); one that only writes an assignment is not (NORMAL: in the WAL,
    made power-cut safe by the next fsynced commit); `fsync_every_commit` fsyncs all."""
    from imsaka.hss.models import RegState

    await store.add_subscriber(alice())
    store.alone = lambda: True
    store.inline_commit_max = 10.0

    def sync() -> int:  # of the loop's connection, which committed the last batch
        return store._loop_db.execute("PRAGMA synchronous").fetchone()[0]

    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, "sip:s")
    assert sync() == 2
    await store.assign("sip:alice@home1.net", state=RegState.REGISTERED, server_name="sip:s")
    assert sync() == 1
    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, "sip:s")
    assert sync() == 2
    store.fsync_every_commit = True
    await store.clear_pending("alice@home1.net")
    assert sync() == 2
    assert store.commits_inline == 4
    # the writer thread's connection follows the same rule
    store.fsync_every_commit = False
    store.inline_commit_max = -1.0
    await store.clear_pending("alice@home1.net")
    assert store._writer_db.execute("PRAGMA synchronous").fetchone()[0] == 1
    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert store._writer_db.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_a_commit_under_load_syncs_the_wal_before_its_sqns_leave(store, monkeypatch):
    """A group commit that is not run at once (slow disk, load) commits on the loop's
    connection without an fsync, then fdatasyncs the WAL on the thread: the SQN is in
    the WAL and on disk before `mar` returns (TS 33.102 Annex C); an assignment alone
    is not synced, as with synchronous=NORMAL."""
    import os
    import sqlite3

    from imsaka.hss import store as store_module
    from imsaka.hss.models import RegState

    if store._path is None:
        pytest.skip("SQLite file only")
    await store.add_subscriber(alice())
    impi = "alice@home1.net"
    store.inline_commit_max = 0.0
    store._commit_seconds = store._commit_seconds_nosync = 1.0  # as after a slow disk
    synced: list[tuple[str, int]] = []
    real = os.fdatasync

    def committed_sqn() -> int:
        other = sqlite3.connect(store._path)
        try:
            return other.execute("SELECT sqn FROM impi WHERE identity = ?", (impi,)).fetchone()[0]
        finally:
            other.close()

    def fdatasync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), committed_sqn()))
        real(fd)

    monkeypatch.setattr(store_module.os, "fdatasync", fdatasync)
    grant = await store.mar(impi, "sip:alice@home1.net", 1, "sip:s")
    # synced once, the WAL, after the COMMIT that moved SQN_HE to the granted SQN
    assert synced == [(os.path.realpath(store._path) + "-wal", grant.sqns[-1])]
    assert store.wal_syncs == 1 and store.commits_inline == 0 and store._writer_db is None
    await store.assign("sip:alice@home1.net", state=RegState.REGISTERED, server_name="sip:s")
    assert store.wal_syncs == 1 and len(synced) == 1  # no SQN: no fsync
    assert store._loop_db.execute("PRAGMA synchronous").fetchone()[0] == 1
    store.fsync_every_commit = True
    await store.clear_pending(impi)
    assert store.wal_syncs == 2


async def test_the_wal_is_checkpointed_off_the_loop(store, monkeypatch):
    """The loop's connection never checkpoints on its own (that would copy the WAL into
    the database and fsync both on the event loop): once the WAL passes its size, the
    thread does, and the loop's next commit starts the WAL again from its beginning."""
    import asyncio
    import os

    from imsaka.hss import store as store_module

    if store._path is None:
        pytest.skip("SQLite file only")
    await store.add_subscriber(alice())
    store.alone = lambda: True
    store.inline_commit_max = 10.0
    monkeypatch.setattr(store_module, "_CHECK_EVERY", 1)
    store.wal_checkpoint_bytes = 1
    await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert store._loop_db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for _ in range(200):
        if store.checkpoints:
            break
        await asyncio.sleep(0.01)
    assert store.checkpoints == 1 and store.commits_inline == 1
    wal = store._path + "-wal"
    size = os.path.getsize(wal)
    store.wal_checkpoint_bytes = 1 << 40  # no more checkpoints: the WAL is reused
    for _ in range(3):
        await store.mar("alice@home1.net", "sip:alice@home1.net", 1, None)
    assert os.path.getsize(wal) == size  # written again from the start, not grown


async def test_request_for_another_realm_is_not_served(hss, scscf):
    import dataclasses

    foreign = dataclasses.replace(uar(), destination_realm="other.example")
    answer = await scscf.request(foreign.to_message())
    assert answer.is_error
    assert answer.find(codec.AVP_RESULT_CODE).u32 == codec.DIAMETER_REALM_NOT_SERVED
    assert (await scscf.request(uar())).is_success
