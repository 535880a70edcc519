"""Real HSS processes: two on one PostgreSQL never hand out the same SQN under
concurrent MAR load; a kill -9 between MAR and MAA never makes SQN go back."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from imsaka.aka.milenage import Milenage
from imsaka.diameter import cx
from imsaka.hss.store import HssStore
from imsaka.hss.subscriber import validate_subscriber

from .conftest import OPC, PG_URL, client_node, mar, wipe
from .procs import HssProcess, write_config

N_USERS = 4


def users():
    return [
        validate_subscriber(
            impi=f"u{i}@home1.net",
            impus=[f"sip:u{i}@home1.net"],
            k=f"{i + 1:032x}",
            opc=OPC,
            sqn="000000000000",
        )
        for i in range(N_USERS)
    ]


def sqn_of(item, k: bytes) -> int:
    ak = Milenage(k, opc=bytes.fromhex(OPC)).f2345(item.rand)[3]
    return int.from_bytes(bytes(a ^ b for a, b in zip(item.autn[:6], ak, strict=True)), "big")


def collect(answers, specs) -> dict[str, list[int]]:
    keys = {s.impi: s.k for s in specs}
    out: dict[str, list[int]] = {s.impi: [] for s in specs}
    for a in answers:
        if isinstance(a, cx.MultimediaAuthAnswer) and a.result_code == cx.DIAMETER_SUCCESS:
            for item in a.sip_auth_data_items:
                out[a.user_name].append(sqn_of(item, keys[a.user_name]))
    return out


@pytest.mark.postgres
async def test_two_hss_processes_on_postgres_never_share_an_sqn(tmp_path):
    store = await HssStore.open(PG_URL)
    await wipe(store)
    specs = users()
    await store.import_subscribers(specs)
    config = write_config(tmp_path / "hss.toml", PG_URL)
    procs = [HssProcess(config), HssProcess(config)]
    nodes = []
    try:
        nodes = [await client_node(p.port) for p in procs]

        async def load(node, offset):
            reqs = [
                node.request(
                    mar(
                        impi=f"u{(i + offset) % N_USERS}@home1.net",
                        impu=f"sip:u{(i + offset) % N_USERS}@home1.net",
                        n=1 + i % 3,
                    )
                )
                for i in range(300)
            ]
            return await asyncio.gather(*reqs)

        results = await asyncio.gather(load(nodes[0], 0), load(nodes[1], 1))
        for answers in results:  # both processes really served
            assert all(a.result_code == cx.DIAMETER_SUCCESS for a in answers)
        by_user = collect([a for r in results for a in r], specs)
        total = 0
        for impi, sqns in by_user.items():
            assert len(sqns) == len(set(sqns)), f"{impi}: an SQN was handed out twice"
            assert max(sqns) == await store.sqn_of(impi)
            total += len(sqns)
        assert total == sum(1 + i % 3 for i in range(300)) * 2
    finally:
        for node in nodes:
            await node.stop()
        for p in procs:
            p.stop()
        await wipe(store)
        await store.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_kill_9_between_mar_and_maa_never_moves_sqn_back(tmp_path, backend):
    db = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}" if backend == "sqlite" else PG_URL
    store = await HssStore.open(db)
    await wipe(store)
    specs = users()
    await store.import_subscribers(specs)
    config = write_config(tmp_path / "hss.toml", db)
    proc = HssProcess(config)
    node = await client_node(proc.port)
    received: list = []
    try:
        pending = [
            asyncio.ensure_future(
                node.request(
                    mar(
                        impi=f"u{i % N_USERS}@home1.net", impu=f"sip:u{i % N_USERS}@home1.net", n=2
                    ),
                    timeout=5,
                )
            )
            for i in range(2000)
        ]
        while sum(f.done() for f in pending) < 50:
            await asyncio.sleep(0.002)
        # Freeze the HSS (SIGSTOP) until it is caught between MAR and MAA: SQNs
        # committed in the database whose MAAs have not left the process (everything
        # it already wrote reaches us while it is frozen). Then kill -9 it right there.
        caught = False
        for _ in range(100):
            os.kill(proc.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(0.05)
            seen = collect([f.result() for f in pending if f.done() and not f.exception()], specs)
            for spec in specs:
                if await store.sqn_of(spec.impi) > max(seen[spec.impi], default=0):
                    caught = True
            if caught:
                break
            os.kill(proc.proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.002 + 0.003 * (_ % 3))
        proc.kill9()
        assert caught, "never froze the HSS between a commit and its MAA"
        done = await asyncio.gather(*pending, return_exceptions=True)
        received = [a for a in done if isinstance(a, cx.MultimediaAuthAnswer)]
        errors = {repr(a)[:150] for a in done if not isinstance(a, cx.MultimediaAuthAnswer)}
        assert 50 <= len(received) < 2000, (errors, proc.log()[-3000:])
        seen = collect(received, specs)
        # Restart on the same database: SQN_HE is at least every SQN that left the HSS,
        # and the next vectors are above all of them.
        proc = HssProcess(config)
        await node.stop()
        node = await client_node(proc.port)
        for spec in specs:
            stored = await store.sqn_of(spec.impi)
            if seen[spec.impi]:
                assert stored >= max(seen[spec.impi])
            answer = await node.request(mar(impi=spec.impi, impu=f"sip:{spec.impi}", n=1))
            fresh = collect([answer], specs)[spec.impi][0]
            assert fresh > stored >= max(seen[spec.impi], default=0)
            assert fresh not in seen[spec.impi]
    finally:
        await node.stop()
        proc.stop()
        await wipe(store)
        await store.close()


@pytest.mark.postgres
async def test_two_processes_migrating_an_empty_database_at_once(tmp_path):
    import sqlalchemy as sa

    store = await HssStore.open(PG_URL, run_migrations=False)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "DROP TABLE IF EXISTS hss_alembic_version, visited_network, impu, impi,"
                " implicit_set, service_profile, scscf, subscription CASCADE"
            )
        )
    await store.close()
    config = write_config(tmp_path / "hss.toml", PG_URL)
    # Both start together: the advisory lock lets one migrate, the other finds it done.
    procs = await asyncio.gather(
        asyncio.to_thread(HssProcess, config), asyncio.to_thread(HssProcess, config)
    )
    try:
        for p in procs:
            node = await client_node(p.port)
            try:
                answer = await node.request(
                    mar(impi="nobody@home1.net", impu="sip:nobody@home1.net")
                )
                assert answer.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
            finally:
                await node.stop()
    finally:
        for p in procs:
            p.stop()
