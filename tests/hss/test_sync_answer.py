"""The HSS's plain-function request handler (`CxService.respond`): UAR, LIR, an AKA MAR
and a registering SAR answered at once from the loop's SQLite connection (MAR and SAR
committed there too, while no other request is being handled), everything else through
the async way (`CxService.handle`) in a Task, with the same bytes on the wire and the
same counters either way.

A transcript of Cx requests (every UAR, SAR and LIR outcome of TS 29.228 §6.1 the
HSS gives, MAR in between) goes through an `HssServer`'s real `DiameterNode` on an
in-memory transport: request bytes in, answer bytes out. Three checks:

- against the same transcript answered by the async handler the HSS registered before
  (``await service.handle(request)`` in a Task for every request): byte for byte;
- against digests of the answers and the counters recorded with that handler
  (``GOLDEN``; ``python tests/hss/test_sync_answer.py`` prints them afresh);
- which requests were answered at once (written inside ``data_received``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
import tempfile
from typing import Any
from unittest import mock

import pytest

from imsaka.diameter import cx
from imsaka.diameter.peer import PeerConfig, PeerConnection
from imsaka.hss.config import HssConfig, PeerEntry, ScscfPoolEntry
from imsaka.hss.server import HssServer
from imsaka.hss.store import HssStore
from imsaka.hss.subscriber import validate_subscriber

K = "465b5ce8b199b49faa5f0a2ee238a6bc"
OP = "cdc202d5123e20f62b6d676ac72cb318"
HOME = "home1.net"
HSS_HOST = "hss.home1.net"
SCSCF_HOST = "scscf1.home1.net"
SCSCF_NAME = "sip:scscf1.home1.net:5080"
OTHER_NAME = "sip:scscf2.home1.net:5080"
ALICE, ALICE_IMPU, ALICE_TEL = "alice@home1.net", "sip:alice@home1.net", "tel:+15550001"
BOB, BOB_IMPU = "bob@home1.net", "sip:bob@home1.net"
SAT = cx.ServerAssignmentType
UAT = cx.UserAuthorizationType
IFC = (
    "<InitialFilterCriteria><Priority>0</Priority><TriggerPoint><ConditionTypeCNF>1"
    "</ConditionTypeCNF><SPT><ConditionNegated>0</ConditionNegated><Group>0</Group>"
    "<Method>INVITE</Method></SPT></TriggerPoint><ApplicationServer><ServerName>"
    "sip:as.home1.net</ServerName><DefaultHandling>0</DefaultHandling></ApplicationServer>"
    "</InitialFilterCriteria>"
)


def _transport(sink: Any) -> mock.Mock:
    """What a `_Connection` uses of an asyncio transport; writes go to `sink`."""
    transport = mock.Mock(spec=asyncio.Transport)
    transport.write.side_effect = sink
    transport.get_extra_info.return_value = ("127.0.0.1", 3868)
    transport.is_closing.return_value = False
    return transport


def _head(n: int, realm: str = HOME) -> dict[str, Any]:
    return {
        "session_id": f"{SCSCF_HOST};1;{n}",
        "origin_host": SCSCF_HOST,
        "origin_realm": HOME,
        "destination_realm": realm,
    }


def _uar(n, impi=ALICE, impu=ALICE_IMPU, visited=HOME, uat=None, flags=None, realm=HOME):
    return cx.UserAuthorizationRequest(
        **_head(n, realm),
        user_name=impi,
        public_identity=impu,
        visited_network_identifier=visited,
        user_authorization_type=uat,
        uar_flags=flags,
    )


def _sar(n, sat, impi=ALICE, impus=(ALICE_IMPU,), udaa=1, server=SCSCF_NAME):
    return cx.ServerAssignmentRequest(
        **_head(n),
        server_name=server,
        server_assignment_type=int(sat),
        user_data_already_available=udaa,
        user_name=impi,
        public_identities=tuple(impus),
    )


def _lir(n, impu=ALICE_IMPU, uat=None):
    return cx.LocationInfoRequest(**_head(n), public_identity=impu, user_authorization_type=uat)


def _mar(n, impi=ALICE, impu=ALICE_IMPU, server=SCSCF_NAME):
    return cx.MultimediaAuthRequest(
        **_head(n),
        user_name=impi,
        public_identity=impu,
        server_name=server,
        sip_number_auth_items=1,
        sip_auth_data_item=cx.SipAuthDataItem(sip_authentication_scheme=cx.SCHEME_AKAV1_MD5),
    )


def _rtr(n):
    return cx.RegistrationTerminationRequest(
        **_head(n),
        destination_host=HSS_HOST,
        user_name=ALICE,
        deregistration_reason=cx.DeregistrationReason(0),
    )


# (label, request, answered at once by the plain-function handler)
def _steps() -> list[tuple[str, Any, bool]]:
    n = iter(range(1, 1000))
    return [
        ("uar-first", _uar(next(n)), True),
        ("uar-first-caps", _uar(next(n), uat=UAT.REGISTRATION_AND_CAPABILITIES), True),
        ("uar-unknown-impu", _uar(next(n), impu="sip:nobody@home1.net"), True),
        ("uar-unknown-impi", _uar(next(n), impi="nobody@home1.net"), True),
        ("uar-not-together", _uar(next(n), impu=BOB_IMPU), True),
        ("uar-roaming-refused", _uar(next(n), visited="evil.example"), True),
        ("uar-roaming-allowed", _uar(next(n), visited="visited1.net"), True),
        ("uar-bad-type", _uar(next(n), uat=7), True),
        ("uar-dereg-not-registered", _uar(next(n), uat=UAT.DE_REGISTRATION), True),
        ("uar-barred", _uar(next(n), impi=BOB, impu=BOB_IMPU), True),
        ("uar-barred-emergency", _uar(next(n), impi=BOB, impu=BOB_IMPU, flags=1), True),
        ("uar-other-realm", _uar(next(n), realm="other.example"), True),
        ("rtr-unsupported", _rtr(next(n)), True),
        ("lir-unknown", _lir(next(n), impu="sip:nobody@home1.net"), True),
        ("lir-unregistered-no-ifc", _lir(next(n)), False),
        ("lir-unregistered-ifc", _lir(next(n), impu=BOB_IMPU), False),
        ("lir-caps", _lir(next(n), uat=UAT.REGISTRATION_AND_CAPABILITIES), True),
        ("sar-rereg-not-registered", _sar(next(n), SAT.RE_REGISTRATION), True),
        ("sar-dereg", _sar(next(n), SAT.USER_DEREGISTRATION), False),
        ("mar", _mar(next(n), server=OTHER_NAME), True),
        ("uar-pending", _uar(next(n)), True),
        ("sar-registration", _sar(next(n), SAT.REGISTRATION, udaa=0), True),
        ("uar-subsequent", _uar(next(n)), True),
        ("uar-dereg-registered", _uar(next(n), uat=UAT.DE_REGISTRATION), True),
        ("sar-rereg-unchanged", _sar(next(n), SAT.RE_REGISTRATION), True),
        ("sar-rereg-unchanged-data", _sar(next(n), SAT.RE_REGISTRATION, udaa=0), True),
        ("sar-rereg-tel", _sar(next(n), SAT.RE_REGISTRATION, impus=(ALICE_TEL,)), True),
        ("sar-rereg-unknown", _sar(next(n), SAT.RE_REGISTRATION, impus=("sip:x@home1.net",)), True),
        ("sar-rereg-not-together", _sar(next(n), SAT.RE_REGISTRATION, impus=(BOB_IMPU,)), True),
        ("sar-rereg-no-impi", _sar(next(n), SAT.RE_REGISTRATION, impi=None), False),
        ("sar-rereg-no-impu", _sar(next(n), SAT.RE_REGISTRATION, impus=()), False),
        ("lir-registered", _lir(next(n)), True),
        ("lir-registered-tel", _lir(next(n), impu=ALICE_TEL), True),
        ("mar-while-registered", _mar(next(n), server=OTHER_NAME), True),
        ("sar-rereg-pending", _sar(next(n), SAT.RE_REGISTRATION), True),
        ("sar-rereg-after-pending", _sar(next(n), SAT.RE_REGISTRATION), True),
        ("sar-rereg-moved", _sar(next(n), SAT.RE_REGISTRATION, server=OTHER_NAME), True),
        ("uar-moved", _uar(next(n)), True),
        ("sar-rereg-moved-again", _sar(next(n), SAT.RE_REGISTRATION, server=OTHER_NAME), True),
        ("sar-no-assignment", _sar(next(n), SAT.NO_ASSIGNMENT, server=OTHER_NAME), False),
        (
            "sar-dereg-store-name",
            _sar(next(n), SAT.USER_DEREGISTRATION_STORE_SERVER_NAME, server=OTHER_NAME),
            False,
        ),
        ("lir-name-kept", _lir(next(n)), True),
        ("uar-name-kept", _uar(next(n)), True),
        ("sar-rereg-after-dereg", _sar(next(n), SAT.RE_REGISTRATION, server=OTHER_NAME), True),
        ("sar-timeout-dereg", _sar(next(n), SAT.TIMEOUT_DEREGISTRATION, server=OTHER_NAME), False),
        ("lir-after-dereg", _lir(next(n)), False),
        ("uar-after-dereg", _uar(next(n)), True),
        ("sar-registration-again", _sar(next(n), SAT.REGISTRATION), True),
        ("sar-registration-moved", _sar(next(n), SAT.REGISTRATION, server=OTHER_NAME), True),
        # (the S-CSCF the user moved from: its binding lapsing ends nothing)
        ("sar-dereg-not-serving", _sar(next(n), SAT.TIMEOUT_DEREGISTRATION), False),
        ("lir-still-registered", _lir(next(n)), True),
    ]


def _config(db: str) -> HssConfig:
    return HssConfig(
        database=db,
        diameter_host=HSS_HOST,
        diameter_realm=HOME,
        diameter_port=0,
        peers=(PeerEntry(SCSCF_HOST),),
        home_networks=(HOME,),
        visited_networks=("visited1.net",),
        scscfs=(ScscfPoolEntry(SCSCF_NAME, SCSCF_HOST, (), (1,)),),
    )


def _rand(n: int) -> bytes:
    return bytes(range(n))


async def _serve(db: str) -> tuple[HssServer, Any, PeerConnection, list[bytes]]:
    store = await HssStore.open(db)
    await store.import_subscribers(
        [
            validate_subscriber(impi=ALICE, impus=[ALICE_IMPU, ALICE_TEL], k=K, op=OP),
            validate_subscriber(
                impi=BOB, impus=[BOB_IMPU], k=K, op=OP, barred=[BOB_IMPU], ifc_xml=IFC
            ),
        ]
    )
    # The disk's speed is not under test: slow fsyncs on a loaded machine would send a
    # MAR's commit to the writer thread, i.e. the async way.
    store.inline_commit_max = 10.0
    server = HssServer(_config(db), store=store, rand_source=_rand)
    await server.start()
    assert server.node is not None
    conn = server.node._accept()
    written: list[bytes] = []
    conn.connection_made(_transport(written.append))
    client = PeerConnection(PeerConfig(SCSCF_HOST, HOME), initiator=True, now=0.0)
    client.connection_made(0.0)
    for _ in range(4):  # CER/CEA
        for data in client.messages_to_send():
            conn.data_received(data)
        for data in written:
            client.receive_data(data, 0.0)
        written.clear()
    assert conn.core.is_open and client.is_open
    return server, conn, client, written


async def _close(server: HssServer, conn: Any) -> None:
    conn.transport.write.side_effect = None
    conn.connection_lost(None)
    await server.stop()
    await server.store.close()


async def transcript(db: str, *, task_handler: bool = False) -> tuple[list[Any], dict[str, int]]:
    """[(label, answer bytes, answered at once)] and the service's counters."""
    server, conn, _client, written = await _serve(db)
    if task_handler:
        # The HSS's handler before the plain function: every request in a Task.
        service = server.service
        assert service is not None and server.node is not None

        async def handler(request: Any, peer: Any) -> Any:
            return await service.handle(request)

        server.node.set_request_handler(handler)
    out = []
    try:
        for e2e, (label, request, _) in enumerate(_steps(), start=1):
            conn.data_received(request.encode(e2e, e2e))
            # (an RTR NEW_SERVER_ASSIGNED to the S-CSCF a SAR moved the user from: the
            # HSS's request on this connection, not an answer: left out)
            written[:] = [w for w in written if not w[4] & 0x80]
            at_once = bool(written)
            for _ in range(200):
                written[:] = [w for w in written if not w[4] & 0x80]
                if written:
                    break
                await asyncio.sleep(0.001)
            assert len(written) == 1, label
            out.append((label, written.pop(), at_once))
        assert server.service is not None
        return out, dict(server.service.counters)
    finally:
        await _close(server, conn)


def _digest(frame: bytes) -> str:
    return hashlib.sha256(frame).hexdigest()[:16]


# Recorded with the async handler of commit 6d7cc12 (every request in a Task).
GOLDEN: dict[str, Any] = {
    "answers": {
        "uar-first": "453000eecc7afa99",
        "uar-first-caps": "37653564fb9f0896",
        "uar-unknown-impu": "42c0f33e8124323d",
        "uar-unknown-impi": "934912ba16bb3449",
        "uar-not-together": "52946c724f598bc6",
        "uar-roaming-refused": "30505725b75f1f46",
        "uar-roaming-allowed": "e12f0f693f6b252f",
        "uar-bad-type": "d5bbdf997353d848",
        "uar-dereg-not-registered": "e4f126f745a84ec1",
        "uar-barred": "05a898c7377f62bb",
        "uar-barred-emergency": "641a97cade8df87e",
        "uar-other-realm": "b858c4f4e931a176",
        "rtr-unsupported": "e2cb4c48f125fa81",
        "lir-unknown": "9454e0265d61a540",
        "lir-unregistered-no-ifc": "c07ae3c6cf0c2c75",
        "lir-unregistered-ifc": "13478c326b45f085",
        "lir-caps": "194d31e216026dfc",
        "sar-rereg-not-registered": "89bc6dba6deda1fb",
        "sar-dereg": "f435341597e7cc43",
        "mar": "7f47f0ac6ef2ee3f",
        "uar-pending": "9d2a6d45ca444f27",
        "sar-registration": "c4bb11f6525cb2c4",
        "uar-subsequent": "f3ccd3adb5d8f385",
        "uar-dereg-registered": "1909f5e18d1c8fbc",
        "sar-rereg-unchanged": "76a8626feb913e88",
        "sar-rereg-unchanged-data": "2fff475a90ff42ab",
        "sar-rereg-tel": "9afed4475b519ea5",
        "sar-rereg-unknown": "ab07e7b3ac109c42",
        "sar-rereg-not-together": "f3e7fcc8df404134",
        "sar-rereg-no-impi": "b1db3040cd4b8bc3",
        "sar-rereg-no-impu": "35a1cec527e2ad4e",
        "lir-registered": "aad88459c53b6f10",
        "lir-registered-tel": "cd5503f3ee5f9f8e",
        "mar-while-registered": "90eea86340075996",
        "sar-rereg-pending": "929beab9935d2335",
        "sar-rereg-after-pending": "97a2960d70126165",
        "sar-rereg-moved": "9cfccd4036256c2a",
        "uar-moved": "ca115615e27e8861",
        "sar-rereg-moved-again": "25345156aa27401f",
        "sar-no-assignment": "4f814c00f5517efe",
        "sar-dereg-store-name": "9210cf2df8cfc690",
        "lir-name-kept": "156652a3572e56c8",
        "uar-name-kept": "5d83a7d9e9e53457",
        "sar-rereg-after-dereg": "688b3467f786a382",
        "sar-timeout-dereg": "731ae6bdf773a3f9",
        "lir-after-dereg": "578d769eaf649396",
        "uar-after-dereg": "36dff914096e1612",
        # added with the RTR NEW_SERVER_ASSIGNED (the async way's, 2026-11-28)
        "sar-registration-again": "b0f45ad575d534cc",
        "sar-registration-moved": "80aa3d8e6e6a889a",
        "sar-dereg-not-serving": "3fb9adff61426323",
        "lir-still-registered": "4eefb134a95b2f85",
    },
    "counters": {
        "error-5001": 4,
        "error-5002": 2,
        "roaming-refused": 1,
        "error-5004": 2,
        "error-5003": 4,
        "realm-not-served": 1,
        "error-3003": 1,
        "command-unsupported": 1,
        "error-3001": 1,
        "maa-vectors": 2,
        "sar_reregistration_unchanged": 6,
        "error-5005": 1,
        "scscf_reassigned": 2,
        "sar_deregistration_not_serving": 1,
    },
}


def _db(tmp_path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


async def test_answers_are_the_bytes_of_the_async_way(tmp_path):
    plain, counters = await transcript(_db(tmp_path, "plain.db"))
    tasks, task_counters = await transcript(_db(tmp_path, "task.db"), task_handler=True)
    for (label, frame, _), (_, expected, _) in zip(plain, tasks, strict=True):
        assert frame == expected, (label, cx.decode(cx.decode_frame(frame)))
    assert counters == task_counters
    assert not any(at_once for _, _, at_once in tasks)


async def test_answers_and_counters_are_those_recorded_before(tmp_path):
    plain, counters = await transcript(_db(tmp_path, "plain.db"))
    assert {label: _digest(frame) for label, frame, _ in plain} == GOLDEN["answers"]
    assert counters == GOLDEN["counters"]
    # the lapse at the S-CSCF the user moved from left it registered at the other one
    still = cx.decode(cx.decode_frame(dict((lb, f) for lb, f, _ in plain)["lir-still-registered"]))
    assert still.result_code == cx.DIAMETER_SUCCESS and still.server_name == OTHER_NAME


async def test_uar_lir_mar_and_registering_sar_are_answered_at_once(tmp_path):
    plain, _ = await transcript(_db(tmp_path, "plain.db"))
    expected = {label: at_once for label, _, at_once in _steps()}
    assert {label: at_once for label, _, at_once in plain} == expected


async def test_a_busy_database_sends_the_request_the_async_way(tmp_path, monkeypatch):
    server, conn, _client, written = await _serve(_db(tmp_path, "hss.db"))
    store, service = server.store, server.service
    assert service is not None
    try:
        first = _uar(1)
        conn.data_received(first.encode(1, 1))
        assert written, "a UAR on an idle database is answered at once"
        at_once = written.pop()
        # The loop's connection finds the database busy (busy timeout 0), as during a
        # WAL checkpoint or recovery; a reader thread's connection may wait and reads.
        read_on = store._read_on

        def busy_on_the_loop(db: sqlite3.Connection, plan: Any, args: Any) -> Any:
            if db is store._loop_db:
                exc = sqlite3.OperationalError("database is locked")
                exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
                raise exc
            return read_on(db, plan, args)

        monkeypatch.setattr(store, "_read_on", busy_on_the_loop)
        answer = service.respond(_uar(1))
        assert asyncio.iscoroutine(answer)
        deferred = await answer  # read again, on a reader thread
        # Its two reads (state, S-CSCF pool), each counted once: by the async way, not
        # by the try at once.
        assert store.reads_deferred == 2
        assert deferred.encode(1, 1) == at_once
    finally:
        await _close(server, conn)


async def test_writes_read_together_share_a_group_commit(tmp_path):
    # Two MARs and two SARs in one read: none is committed at once on its own (each
    # would be a commit, the MARs' an fsync, of its own); the async way groups them.
    server, conn, _client, written = await _serve(_db(tmp_path, "hss.db"))
    store = server.store
    try:
        requests = [
            _mar(1),
            _mar(2, impi=BOB, impu=BOB_IMPU),
            _sar(3, SAT.REGISTRATION, udaa=0),
            _sar(4, SAT.REGISTRATION, impi=BOB, impus=(BOB_IMPU,)),
        ]
        batches = store.batches
        conn.data_received(b"".join(r.encode(n, n) for n, r in enumerate(requests, start=10)))
        assert not written
        for _ in range(500):
            if len(written) == 4:
                break
            await asyncio.sleep(0.001)
        answers = [cx.decode(cx.decode_frame(frame)) for frame in written]
        assert [a.result_code for a in answers] == [cx.DIAMETER_SUCCESS] * 4
        assert store.batches == batches + 1  # one transaction for the four
        # alone again once the handlers' Tasks are done (a Task leaves the node's count
        # in its done callback, a loop turn after its answer was written): the next
        # one is committed at once
        assert server.node is not None
        for _ in range(100):
            if server.node.handlers_running == 0:
                break
            await asyncio.sleep(0)
        inline = store.commits_inline
        conn.data_received(_mar(5).encode(20, 20))
        assert len(written) == 5 and store.commits_inline == inline + 1
    finally:
        await _close(server, conn)


async def test_a_busy_database_sends_a_write_the_async_way(tmp_path):
    # Another connection holds the write lock: BEGIN IMMEDIATE on the loop's connection
    # (busy timeout 0) fails at once, nothing is written, and the async way (the writer
    # thread, which may wait) commits; the answer is the same.
    server, conn, _client, _written = await _serve(_db(tmp_path, "hss.db"))
    store, service = server.store, server.service
    assert service is not None
    path = str(store.engine.url.database)
    try:
        conn.data_received(_uar(1).encode(1, 1))  # opens the loop's connection
        for request in (_mar(2), _sar(3, SAT.REGISTRATION, udaa=0)):
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            answer = service.respond(request)
            assert asyncio.iscoroutine(answer)
            task = asyncio.ensure_future(answer)
            await asyncio.sleep(0.05)
            other.execute("ROLLBACK")
            other.close()
            assert (await task).result_code == cx.DIAMETER_SUCCESS
        view = await store.get_subscriber(ALICE)
        assert view.scscf_name == SCSCF_NAME and view.pending_scscf is None
        assert view.sqn >> 5 == 1  # one vector handed out, by the async way
    finally:
        await _close(server, conn)


async def test_without_a_sqlite_file_nothing_is_read_at_once(tmp_path, monkeypatch):
    # PostgreSQL or SQLite in memory: no loop connection, so every read takes the
    # async way (asyncpg or SQLAlchemy, in a Task), never tried here.
    server, conn, _client, _written = await _serve(_db(tmp_path, "hss.db"))
    store, service = server.store, server.service
    assert service is not None
    try:
        monkeypatch.setattr(store, "_path", None)
        monkeypatch.setattr(store, "_loop_reader", pytest.fail)
        for request in (
            _uar(1),
            _lir(2),
            _mar(3),
            _sar(4, SAT.RE_REGISTRATION),
            _sar(5, SAT.REGISTRATION, udaa=0),
        ):
            answer = service.respond(request)
            assert asyncio.iscoroutine(answer)
            answer.close()
    finally:
        await _close(server, conn)


def record() -> dict[str, Any]:
    """Digests and counters of the transcript answered by the async handler."""

    async def main() -> tuple[list[Any], dict[str, int]]:
        with tempfile.TemporaryDirectory() as tmp:
            return await transcript(f"sqlite+aiosqlite:///{tmp}/hss.db", task_handler=True)

    answers, counters = asyncio.run(main())
    return {"answers": {label: _digest(f) for label, f, _ in answers}, "counters": counters}


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=4, sort_keys=False)
    print()
