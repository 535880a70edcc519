"""imsaka.hss.store: a lone group commit after quick commits runs on the event loop;
a busy database, queued jobs or slow commits send it to the writer thread. Either way
an SQN is committed (readable by another connection) before `mar()` returns, and no
SQN is handed out twice."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from imsaka.hss.models import RegState
from imsaka.hss.store import IND_BITS, HssStore, MarGrant, NotFound
from imsaka.hss.subscriber import validate_subscriber

K = "465b5ce8b199b49faa5f0a2ee238a6bc"
OPC = "cd63cb71954a9f4e48a5994e37a02baf"
SCSCF = "sip:scscf1.home1.net:5080"


def _impi(i: int) -> str:
    return f"user{i}@home1.net"


@pytest.fixture
async def store(tmp_path):
    s = await HssStore.open(f"sqlite:///{tmp_path / 'hss.db'}")
    await s.import_subscribers(
        [
            validate_subscriber(impi=_impi(i), impus=[f"sip:{_impi(i)}"], k=K, opc=OPC)
            for i in range(4)
        ]
    )
    s.alone = lambda: True  # as an HSS server handling one request at a time
    try:
        yield s
    finally:
        await s.close()


def _committed_sqn(store: HssStore, impi: str) -> int:
    """SQN_HE as another connection sees it: only what was committed."""
    assert store._path is not None
    other = sqlite3.connect(store._path)
    try:
        return other.execute("SELECT sqn FROM impi WHERE identity = ?", (impi,)).fetchone()[0]
    finally:
        other.close()


async def _mar(store: HssStore, i: int) -> MarGrant:
    grant = await store.mar(_impi(i), f"sip:{_impi(i)}", 1, SCSCF)
    assert isinstance(grant, MarGrant)
    return grant


async def _register(store: HssStore, i: int) -> None:
    """SAR REGISTRATION's write for subscriber ``i``."""
    await store.assign(
        f"sip:{_impi(i)}",
        state=RegState.REGISTERED,
        server_name=SCSCF,
        server_host="scscf1.home1.net",
        server_realm="home1.net",
        impi=_impi(i),
    )


async def test_lone_commits_run_on_the_loop_and_are_durable_before_return(store):
    # The disk's speed is not under test (a loaded machine's fsync passed 2 ms and sent
    # a commit to the thread): any commit counts as quick here.
    store.inline_commit_max = 10.0
    seen = []
    for _ in range(5):
        grant = await _mar(store, 0)
        # committed before mar() returned, as seen from another connection
        assert _committed_sqn(store, _impi(0)) == grant.sqns[-1]
        seen.append(grant.sqns[-1] >> IND_BITS)
    assert seen == sorted(set(seen))  # every SQN once, increasing
    assert store.commits_inline == 5
    assert store._executor is None  # the writer thread was never needed
    assert store._worker is None  # nor the worker task: each commit ran in its caller
    await _register(store, 0)
    assert store.commits_inline == 6


async def test_busy_database_goes_to_the_writer_thread(store):
    await _mar(store, 1)  # opens the connections
    assert store._path is not None
    holder = sqlite3.connect(store._path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.execute, "COMMIT")
    before = store.commits_inline
    grant = await asyncio.wait_for(_mar(store, 1), 10)
    holder.close()
    assert store.commits_inline == before  # not on the loop: it would have had to wait
    assert store._executor is not None
    assert _committed_sqn(store, _impi(1)) == grant.sqns[-1]


async def test_the_loop_never_waits_for_a_lock(store):
    await _mar(store, 1)
    assert store._path is not None
    holder = sqlite3.connect(store._path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = loop.create_task(ticker())
    loop.call_later(0.3, holder.execute, "COMMIT")
    await _mar(store, 1)
    task.cancel()
    holder.close()
    assert ticks >= 10  # the loop kept running while the thread waited for the lock


async def test_slow_commits_or_queued_jobs_use_the_thread(store):
    store._commit_seconds = 1.0  # as if the disk had been slow
    await _mar(store, 2)
    assert store.commits_inline == 0
    assert store._commit_seconds < 1.0  # the average follows the commits it measures
    store.inline_commit_max = 0.0
    await _mar(store, 2)
    assert store.commits_inline == 0
    store.inline_commit_max = 10.0
    store._commit_seconds = 0.0
    # Four MARs at once for one IMPI: one group commit, four distinct SQNs.
    grants = await asyncio.gather(*(_mar(store, 3) for _ in range(4)))
    sqns = sorted(g.sqns[-1] >> IND_BITS for g in grants)
    assert len(set(sqns)) == 4
    assert _committed_sqn(store, _impi(3)) >> IND_BITS == sqns[-1]


async def test_direct_commit_raises_the_expected_error_after_committing_nothing(store):
    with pytest.raises(NotFound):
        await store.assign(
            "sip:nobody@home1.net",
            state=RegState.REGISTERED,
            server_name=SCSCF,
            server_host="scscf1.home1.net",
            server_realm="home1.net",
            impi=None,
        )
    assert store.commits_inline == 1
    grant = await _mar(store, 0)  # the store goes on
    assert _committed_sqn(store, _impi(0)) == grant.sqns[-1]


async def test_a_busy_worker_keeps_the_queue_order(store):
    store._worker_busy = True  # as while the worker takes batches off the queue
    grant = await _mar(store, 0)
    assert store._worker is not None  # queued and committed by the worker
    assert _committed_sqn(store, _impi(0)) == grant.sqns[-1]
    assert store._worker_busy is False  # the worker is done with the queue


async def test_without_the_alone_hint_writes_share_group_commits(store):
    store.alone = None
    grants = await asyncio.gather(*(_mar(store, 2) for _ in range(8)))
    assert len({g.sqns[-1] for g in grants}) == 8
    assert store.batches == 1  # one commit for the eight, by the worker
    store.alone = lambda: False  # other requests being handled: same
    await asyncio.gather(*(_mar(store, 2) for _ in range(8)))
    assert store.batches == 2


async def test_slow_fsyncs_do_not_send_assignments_to_the_thread(store):
    # An assignment is not fsynced (synchronous=NORMAL): how long fsynced commits took
    # does not decide where it runs; an SQN's commit still goes to the thread.
    store._commit_seconds = 1.0  # as if fsyncs had been slow
    await _register(store, 1)
    assert store.commits_inline == 1
    grant = await _mar(store, 1)
    assert store.commits_inline == 1
    assert _committed_sqn(store, _impi(1)) == grant.sqns[-1]
    store._commit_seconds_nosync = 1.0  # a checkpoint made an assignment slow
    await store.clear_pending(_impi(1))
    assert store.commits_inline == 1
