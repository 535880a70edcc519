"""The HSS store: subscriber data on SQLite or PostgreSQL (SQLAlchemy 2 async).

Implements the data side of TS 29.228 §6 (registration state and S-CSCF
assignment kept in the database, so they survive an HSS restart) and the HE side
of TS 33.102 Annex C SQN management:

- SQN = SEQ ‖ IND with IND 5 bits (Annex C.3.2, profile 2). Every vector takes
  SEQ + 1 and IND + 1 (mod 32), as hostapd and FHoSS do, so consecutive vectors
  use different ISIM array slots.
- SQN_HE moves only inside one ``UPDATE … SET sqn = f(sqn) … RETURNING sqn``: the
  database computes the new value from the row it locked, so two HSS processes
  cannot both hand out the same SQN (no read-modify-write in Python). A batch of n
  vectors is one statement that advances by n steps.
- The UPDATE is committed, and on disk (fsynced), before any vector leaves the HSS: a
  crash (kill -9, power cut) after the MAR can skip SQNs forward but never hand one out
  again. A commit without SQNs (SAR assignments) is not fsynced on its own (SQLite
  synchronous=NORMAL: `HssStore.fsync_every_commit`).
- Group commit: every write a registration makes (MAR: SQNs and the pending
  S-CSCF; SIP Digest MAR: the pending S-CSCF; SAR: registration state and the
  assigned S-CSCF, or the pending one cleared) goes through one queue. Whatever
  queued up while the previous transaction was committing shares the next one, in
  arrival order: one BEGIN … COMMIT, one fsync. No caller gets its result (so no
  answer leaves) before that COMMIT returned. UAR and LIR only read.
- Cx reads and registration writes are plans (`imsaka.hss.plans`, SQL written
  once). SQLite file: reads on the event loop's own sqlite3 connection in deferred
  transactions, i.e. WAL snapshots that never wait for the writer's lock (a busy
  database sends the read to a reader thread). Group commits run on that connection
  too (``BEGIN IMMEDIATE``, never waiting for the lock): a lone one fsynced at COMMIT
  (synchronous=FULL), one under load committed without and the WAL then fdatasynced
  on a thread before any of its SQNs leave, the loop serving meanwhile. Only when
  the database is busy does the writer thread run the batch on its own connection,
  FULL. PostgreSQL: asyncpg.
  No cache: every request reads what is committed. The loop's reads are also offered
  as plain calls (``*_now``: the result, or `WAIT` when the read would have to wait),
  so the Cx service can answer a read-only request without a Task.
- Resync (TS 33.102 §6.3.5, `imsaka.aka.sqn.resync_sqn_he`): SQN_HE stays when
  its next SEQ is above SEQ_MS by at most Δ, else it restarts from SQN_MS; the
  new vectors are taken in the same single statement. The caller verifies MAC-S
  before asking (`imsaka.aka.resync.recover_sqn_ms`); a bad MAC-S never reaches here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from imsaka.aka.sqn import DEFAULT_DELTA, SqnExhaustedError
from imsaka.diameter.codec import frozen_builder
from imsaka.hss import models as m
from imsaka.hss.models import RegState
from imsaka.hss.plans import ALL, ONE, RUN, Plan, run_pg, run_sa, run_sqlite, run_sqlite_alone
from imsaka.hss.subscriber import FieldError, SubscriberSpec
from imsaka.hss.userdata import ProfileIdentities, build_user_data

__all__ = [
    "IND_BITS",
    "WAIT",
    "Conflict",
    "HssStore",
    "MarGrant",
    "NotFound",
    "SubscriberView",
    "migrate",
    "normalize_url",
    "sqn_sequence",
]

log = logging.getLogger("imsaka.hss.store")

IND_BITS = 5
IND_MASK = (1 << IND_BITS) - 1
MAX_SQN = (1 << 48) - 1
MAX_SEQ = MAX_SQN >> IND_BITS  # SEQ_HE may not pass this: the subscriber then needs a new K
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x1A5A_4855  # advisory lock id: two HSS processes migrate one at a time


class NotFound(LookupError):
    """No such identity in the store."""


class Conflict(ValueError):
    """The write would duplicate an identity that exists (names the field)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


# --------------------------------------------------------------------------- SQN


def sqn_step(sqn: int, steps: int = 1) -> int:
    """SQN after ``steps`` vectors: SEQ + steps, IND + steps mod 2^5 (TS 33.102 C.3.2).

    Raises `SqnExhaustedError` when SEQ would pass 2^43 − 1, as
    `imsaka.aka.sqn.next_sqn` does (and as the SQL UPDATEs refuse): never wraps."""
    seq = (sqn >> IND_BITS) + steps
    if seq > MAX_SEQ:
        raise SqnExhaustedError("sqn: SEQ_HE is at its maximum; the subscriber needs a new K")
    ind = ((sqn & IND_MASK) + steps) & IND_MASK
    return (seq << IND_BITS) | ind


def sqn_sequence(last: int, n: int) -> list[int]:
    """The n SQNs a batch ending at ``last`` (the new SQN_HE) handed out, oldest first."""
    seq = last >> IND_BITS
    ind = last & IND_MASK
    return [(((seq - j) << IND_BITS) | ((ind - j) & IND_MASK)) for j in range(n - 1, -1, -1)]


def _sqn_sql(n: int, resync_to: int | None = None, delta: int = DEFAULT_DELTA) -> str:
    """The new SQN_HE as SQL on the locked row of ``impi`` after n vectors.

    Pure arithmetic on the row the UPDATE holds, the same as sqn_step(); with
    ``resync_to`` = SQN_MS that of imsaka.aka.sqn.resync_sqn_he first: SQN_HE stays
    when its next SEQ is above SEQ_MS by at most Δ, else it restarts from SQN_MS. One
    statement, so no concurrent MAR slips between. Every number is an int built here
    (never user text), inline, so PostgreSQL types the result as bigint."""
    n = int(n)
    advance = (
        f"((((sqn >> {IND_BITS}) + {n}) << {IND_BITS}) | (((sqn & {IND_MASK}) + {n}) & {IND_MASK}))"
    )
    if resync_to is None:
        return advance
    seq_ms = int(resync_to) >> IND_BITS
    seq_next = f"((sqn >> {IND_BITS}) + 1)"
    return (
        f"(CASE WHEN {seq_ms} < {seq_next} AND {seq_next} <= {seq_ms + int(delta)}"
        f" THEN {advance} ELSE {sqn_step(int(resync_to), n)} END)"
    )


def _connect_sqlite(path: str, *, timeout: float, query_only: bool = False) -> sqlite3.Connection:
    """A DB-API connection to the SQLite file, in autocommit mode: we issue BEGIN."""
    db = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    if query_only:
        db.execute("PRAGMA query_only=ON")
    else:
        _sqlite_durable(db)
    return db


# --------------------------------------------------------------------------- engine


def normalize_url(url: str | None) -> str:
    """Accept ``sqlite:///x.db``, ``postgresql://…``, a bare file path; return an async URL."""
    if not url:
        return "sqlite+aiosqlite:///imsaka.db"
    if "://" not in url:
        return f"sqlite+aiosqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        return f"postgresql+asyncpg://{rest}"
    return url


# PRAGMA synchronous values. FULL: the WAL is fsynced at every commit. NORMAL (WAL mode):
# a commit is written to the WAL (so it survives a kill -9 of the HSS) and becomes
# power-cut safe with the next FULL commit or checkpoint, which fsync the whole WAL.
_SYNC_NORMAL, _SYNC_FULL = 1, 2
# Commits on the loop's connection between two looks at the WAL's size (a registration
# adds a few pages: the WAL passes its checkpoint size by a few hundred at most).
_CHECK_EVERY = 64


def _sqlite_durable(dbapi_conn: Any) -> None:
    """WAL, and ``synchronous=FULL``: the WAL is fsynced at every commit, so a
    committed SQN survives a power cut as well as a kill -9 (the group commit lowers
    it to NORMAL for a batch that hands out no SQN: `HssStore._begin`)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_events(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _rec: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        _sqlite_durable(dbapi_conn)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN, so a transaction that reads then
        # writes can never fail half-way with SQLITE_BUSY on lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str | None) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _sqlite_events(engine.sync_engine)
        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=False)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent, safe to race)."""
    from alembic import command
    from alembic.config import Config

    def _upgrade(sync_conn: Any) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
        await conn.run_sync(_upgrade)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class ImpuView:
    identity: str
    barred: bool
    reg_state: RegState
    implicit_set: int
    service_profile: int


@dataclass(frozen=True, slots=True)
class SubscriberView:
    """What may be shown of a subscriber: never K, OP or OPc."""

    impi: str
    op_kind: str
    amf: str
    sqn: int
    algorithm: str
    schemes: tuple[str, ...]
    has_digest_password: bool
    impus: tuple[ImpuView, ...]
    scscf_name: str | None
    scscf_host: str | None
    pending_scscf: str | None
    visited_networks: tuple[str, ...]
    ifc_xml: str | None
    mandatory_capabilities: tuple[int, ...] = ()
    optional_capabilities: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "impi": self.impi,
            "op_kind": self.op_kind,
            "amf": self.amf,
            "sqn": f"{self.sqn:012x}",
            "algorithm": self.algorithm,
            "schemes": list(self.schemes),
            "has_digest_password": self.has_digest_password,
            "impus": [
                {
                    "impu": u.identity,
                    "barred": u.barred,
                    "reg_state": u.reg_state.name,
                    "implicit_set": u.implicit_set,
                    "service_profile": u.service_profile,
                }
                for u in self.impus
            ],
            "scscf_name": self.scscf_name,
            "scscf_host": self.scscf_host,
            "pending_scscf": self.pending_scscf,
            "visited_networks": list(self.visited_networks),
            "ifc_xml": self.ifc_xml,
            "mandatory_capabilities": list(self.mandatory_capabilities),
            "optional_capabilities": list(self.optional_capabilities),
        }


@dataclass(frozen=True, slots=True)
class MarGrant:
    """Credentials and freshly allocated SQNs for one MAR; secrets stay out of repr."""

    impi: str
    k: bytes = field(repr=False)
    opc: bytes = field(repr=False)
    amf: bytes
    sqns: tuple[int, ...]
    schemes: tuple[str, ...]
    digest_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """Result of matching an (IMPI, IMPU) pair: which Cx error applies, if any."""

    impi_known: bool
    impu_known: bool
    matched: bool


class SqnExhausted:
    """MAR result when SEQ_HE would pass 2^43 − 1: no vector can be fresh any more."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SQN_EXHAUSTED"


SQN_EXHAUSTED = SqnExhausted()

# The eight IdentityChecks there are: frozen, so every read hands out one of these.
_CHECKS = {
    (i, u, m): IdentityCheck(i, u, m)
    for i in (False, True)
    for u in (False, True)
    for m in (False, True)
}


class Wait:
    """A read that cannot be done at once on the event loop's connection (`_read_now`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()


@dataclass(frozen=True, slots=True)
class UserState:
    """What UAR/SAR/LIR decide from: the IMPU, its subscription and serving S-CSCF."""

    subscription_id: int
    impu: str
    barred: bool
    reg_state: RegState
    implicit_set_id: int
    scscf_name: str | None
    scscf_host: str | None
    scscf_realm: str | None
    pending_scscf: str | None
    mandatory_caps: tuple[int, ...]
    optional_caps: tuple[int, ...]
    visited_networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServingInfo:
    """Where HSS-initiated requests (RTR, PPR) go for one subscription."""

    subscription_id: int
    impis: tuple[str, ...]
    impus: tuple[str, ...]
    scscf_name: str | None
    scscf_host: str | None
    scscf_realm: str | None


def _caps(text: str) -> tuple[int, ...]:
    if not text:  # most subscriptions: no capabilities (every UAR and SAR reads two)
        return ()
    return tuple(int(x) for x in text.split(",") if x.strip())


# --------------------------------------------------------------------------- query plans
#
# Every Cx read and registration write is a plan (`imsaka.hss.plans`): plain SQL with
# ``:name`` parameters, run on the loop thread's sqlite3 connection, on the writer
# thread's, on asyncpg, or on a SQLAlchemy connection. Rows are read by position.


def _identities(impi: str | None, impu: str) -> Plan:
    """IdentityCheck of an (IMPI, IMPU) pair: known each, and of one subscription."""
    u = yield ONE, "SELECT subscription_id FROM impu WHERE identity = :impu", {"impu": impu}
    i = None
    if impi is not None:
        i = yield ONE, "SELECT subscription_id FROM impi WHERE identity = :impi", {"impi": impi}
    return _CHECKS[i is not None, u is not None, i is not None and u is not None and i[0] == u[0]]


_STATE_COLUMNS = (
    "u.subscription_id, u.identity, u.barred, u.reg_state, u.implicit_set_id,"
    " s.scscf_name, s.scscf_host, s.mandatory_caps, s.optional_caps, s.scscf_realm"
)


def _nets(sid: int) -> Plan:
    rows = yield (
        ALL,
        "SELECT network FROM visited_network WHERE subscription_id = :sid",
        {"sid": sid},
    )
    return tuple(r[0] for r in rows)


# RegState by stored value: an index, not an Enum call (every UAR and SAR builds one).
_REG_STATES = {int(s): s for s in RegState}


_new_user_state = frozen_builder(UserState)  # UserState(...), no setattr per field


def _state_of(row: Any, pending: str | None, nets: tuple[str, ...]) -> UserState:
    return _new_user_state(
        row[0],  # subscription_id
        row[1],  # impu
        bool(row[2]),  # barred
        _REG_STATES[row[3]],  # reg_state
        row[4],  # implicit_set_id
        row[5],  # scscf_name
        row[6],  # scscf_host
        row[9],  # scscf_realm
        pending,  # pending_scscf
        _caps(row[7]),  # mandatory_caps
        _caps(row[8]),  # optional_caps
        nets,  # visited_networks
    )


# Every UAR and SAR runs it: one string, so sqlite3's statement cache finds it by a hash
# computed once.
_CHECKED_STATE_SQL = (
    f"SELECT {_STATE_COLUMNS}, i.subscription_id, i.pending_scscf,"
    " EXISTS (SELECT 1 FROM visited_network v WHERE v.subscription_id = u.subscription_id)"
    " FROM impu u JOIN subscription s ON s.id = u.subscription_id"
    " LEFT OUTER JOIN impi i ON i.identity = :impi"
    " WHERE u.identity = :impu"
)


def _checked_state(impi: str | None, impu: str, with_pending: bool) -> Plan:
    # One joined SELECT (IMPU, its subscription, the IMPI, whether any visited network
    # is allowed): every UAR and SAR runs it, usually as the read's only statement; the
    # networks are read only when there are some. "" never names an IMPI.
    row = yield ONE, _CHECKED_STATE_SQL, {"impi": impi or "", "impu": impu}
    if row is None:
        return (yield from _identities(impi, impu)), None
    impi_sid = row[10]
    check = _CHECKS[impi_sid is not None, True, impi_sid is not None and impi_sid == row[0]]
    nets = (yield from _nets(row[0])) if row[12] else ()
    return check, _state_of(row, row[11] if with_pending and impi else None, nets)


def _checked_state_and_data(impi: str, impu: str) -> Plan:
    # A registering SAR in one read: the identity check, the state and, when the
    # identities match, the User-Data it answers with (neither changes with the
    # assignment the SAR then writes). The state carries the IMPI's pending S-CSCF (the
    # same SELECT reads it): a RE_REGISTRATION asking for User-Data tells an unchanged
    # registration from one that must clear a pending S-CSCF by it (`_unchanged`).
    check, state = yield from _checked_state(impi, impu, True)
    data = None
    if check.matched and state is not None:
        data = yield from _set_data(impi, impu, state.subscription_id, state.implicit_set_id)
    return check, state, data


def _user_state(impu: str, impi: str | None) -> Plan:
    row = yield (
        ONE,
        f"SELECT {_STATE_COLUMNS} FROM impu u JOIN subscription s ON s.id = u.subscription_id"
        " WHERE u.identity = :impu",
        {"impu": impu},
    )
    if row is None:
        raise NotFound(impu)
    nets = yield from _nets(row[0])
    pending = None
    if impi is not None:
        got = yield ONE, "SELECT pending_scscf FROM impi WHERE identity = :impi", {"impi": impi}
        pending = got[0] if got else None
    return _state_of(row, pending, nets)


def _set_of(impu: str) -> Plan:
    """(subscription id, implicit set id, registration state) of ``impu``."""
    row = yield (
        ONE,
        "SELECT subscription_id, implicit_set_id, reg_state FROM impu WHERE identity = :impu",
        {"impu": impu},
    )
    if row is None:
        raise NotFound(impu)
    return row[0], row[1], _REG_STATES[row[2]]


def _set_members(sid: int, set_id: int) -> Plan:
    """The IMPUs of implicit set ``set_id`` of subscription ``sid``, oldest first."""
    members = yield (
        ALL,
        "SELECT identity FROM impu WHERE subscription_id = :sid AND implicit_set_id = :set_id"
        " ORDER BY id",
        {"sid": sid, "set_id": set_id},
    )
    return tuple(r[0] for r in members)


def _user_data(impi: str | None, impu: str) -> Plan:
    sid, set_id, _state = yield from _set_of(impu)
    if impi is None:
        first = yield (
            ONE,
            "SELECT identity FROM impi WHERE subscription_id = :sid ORDER BY id LIMIT 1",
            {"sid": sid},
        )
        impi = first[0] if first else None
    return (yield from _set_data(impi, impu, sid, set_id))


def _set_data(impi: str | None, impu: str, sid: int, set_id: int) -> Plan:
    """(User-Data, the implicit set) of ``impu``'s set ``set_id`` in subscription ``sid``:
    each member with its service profile, one SELECT."""
    members = yield (
        ALL,
        "SELECT u.identity, u.barred, u.service_profile_id, p.ifc_xml FROM impu u"
        " JOIN service_profile p ON p.id = u.service_profile_id"
        " WHERE u.subscription_id = :sid AND u.implicit_set_id = :set_id ORDER BY u.id",
        {"sid": sid, "set_id": set_id},
    )
    # The registering IMPU first: it must appear byte-exact (Kamailio looks it up).
    ordered = sorted(members, key=lambda r: r[0] != impu)
    profiles: dict[int, tuple[list[tuple[str, bool]], str | None]] = {}
    for r in ordered:
        profiles.setdefault(r[2], ([], r[3]))[0].append((r[0], bool(r[1])))
    # Profiles in the order they were provisioned, the registering IMPU's first.
    docs = [ProfileIdentities(*profiles[pid]) for pid in sorted(profiles)]
    docs.sort(key=lambda d: not any(uri == impu for uri, _ in d.identities))
    return build_user_data(impi or "", docs), tuple(r[0] for r in ordered)


def _column(table: str, column: str, sid: int) -> Plan:
    """`column` of every row of `table` that belongs to subscription `sid`, oldest first."""
    rows = yield (
        ALL,
        f"SELECT {column} FROM {table} WHERE subscription_id = :sid ORDER BY id",
        {"sid": sid},
    )
    return [r[0] for r in rows]


def _view(impi: str) -> Plan:
    row = yield (
        ONE,
        "SELECT i.identity, i.op_kind, i.amf, i.sqn, i.algorithm, i.auth_schemes,"
        " i.digest_password IS NOT NULL, i.pending_scscf, i.subscription_id,"
        " s.scscf_name, s.scscf_host, s.mandatory_caps, s.optional_caps"
        " FROM impi i JOIN subscription s ON s.id = i.subscription_id"
        " WHERE i.identity = :impi",
        {"impi": impi},
    )
    if row is None:
        raise NotFound(impi)
    sid = row[8]
    impus = yield (
        ALL,
        "SELECT identity, barred, reg_state, implicit_set_id, service_profile_id FROM impu"
        " WHERE subscription_id = :sid ORDER BY id",
        {"sid": sid},
    )
    nets = yield from _column("visited_network", "network", sid)
    ifc = yield (
        ONE,
        "SELECT ifc_xml FROM service_profile WHERE subscription_id = :sid ORDER BY id LIMIT 1",
        {"sid": sid},
    )
    return SubscriberView(
        impi=row[0],
        op_kind=row[1],
        amf=bytes(row[2]).hex(),
        sqn=row[3],
        algorithm=row[4],
        schemes=tuple(row[5].split(",")),
        has_digest_password=bool(row[6]),
        impus=tuple(ImpuView(u[0], bool(u[1]), RegState(u[2]), u[3], u[4]) for u in impus),
        scscf_name=row[9],
        scscf_host=row[10],
        pending_scscf=row[7],
        visited_networks=tuple(nets),
        ifc_xml=ifc[0] if ifc else None,
        mandatory_capabilities=_caps(row[11]),
        optional_capabilities=_caps(row[12]),
    )


def _serving(sid: int) -> Plan:
    sub = yield (
        ONE,
        "SELECT scscf_name, scscf_host, scscf_realm FROM subscription WHERE id = :sid",
        {"sid": sid},
    )
    impis = yield from _column("impi", "identity", sid)
    impus = yield from _column("impu", "identity", sid)
    return ServingInfo(sid, tuple(impis), tuple(impus), sub[0], sub[1], sub[2])


def _serving_by(table: str, identity: str) -> Plan:
    """ServingInfo of the subscription of an IMPI (``table`` "impi") or IMPU ("impu")."""
    row = yield (
        ONE,
        f"SELECT subscription_id FROM {table} WHERE identity = :identity",
        {"identity": identity},
    )
    if row is None:
        raise NotFound(identity)
    return (yield from _serving(row[0]))


def _serving_set(impu: str) -> Plan:
    """(ServingInfo of the subscription of ``impu`` with the IMPUs of its implicit set
    alone, that set's registration state): what an RTR ending that set names."""
    sid, set_id, state = yield from _set_of(impu)
    info = yield from _serving(sid)
    return replace(info, impus=(yield from _set_members(sid, set_id))), state


def _scscf_pool() -> Plan:
    rows = yield (
        ALL,
        "SELECT name, diameter_host, mandatory_caps, optional_caps FROM scscf ORDER BY id",
        {},
    )
    return [
        {
            "name": r[0],
            "diameter_host": r[1],
            "mandatory_capabilities": _caps(r[2]),
            "optional_capabilities": _caps(r[3]),
        }
        for r in rows
    ]


def _scscf_host(server_name: str) -> Plan:
    row = yield ONE, "SELECT diameter_host FROM scscf WHERE name = :name", {"name": server_name}
    return row[0] if row else None


def _count() -> Plan:
    row = yield ONE, "SELECT count(*) FROM impi", {}
    return int(row[0])


def _impi_columns(impi: str, columns: str) -> Plan:
    row = yield ONE, f"SELECT {columns} FROM impi WHERE identity = :impi", {"impi": impi}
    if row is None:
        raise NotFound(impi)
    return row


# Reads whose usual path is a single statement: run without a transaction around it.
_USUALLY_ONE_STATEMENT = frozenset(
    {_checked_state, _scscf_pool, _scscf_host, _count, _impi_columns}
)


# Registration writes (group-committed). Each raises NotFound only before it has
# written anything, so its batch can go on.


def _assign(impu: str, **how: Any) -> Plan:
    """`_assign_rows` (``how``: its keywords) for the implicit set of ``impu``."""
    row = yield (
        ONE,
        "SELECT u.subscription_id, u.implicit_set_id, s.scscf_name, s.scscf_host, s.scscf_realm"
        " FROM impu u JOIN subscription s ON s.id = u.subscription_id WHERE u.identity = :impu",
        {"impu": impu},
    )
    if row is None:
        raise NotFound(impu)  # nothing written yet: the batch goes on
    return (yield from _assign_rows(row[0], row[1], (row[2], row[3], row[4]), **how))


def _assign_rows(
    sid: int,
    set_id: int,
    serving: tuple[str | None, str | None, str | None],
    *,
    state: RegState,
    server_name: str | None,
    server_host: str | None,
    server_realm: str | None,
    keep_server: bool,
    impi: str | None,
    want_set: bool = True,
) -> Plan:
    """Implicit set ``set_id`` of subscription ``sid`` in ``state``, served by
    ``server_*`` (or, not registered, the S-CSCF cleared unless ``keep_server`` or another
    set is still served), ``impi``'s pending S-CSCF cleared; ``serving`` is the S-CSCF
    (name, host, realm) read in this transaction. Returns the set's IMPUs (``want_set``)."""
    # Each UPDATE only touches rows whose value changes: a re-registration that
    # changes nothing dirties no page, so its COMMIT needs no fsync (and PostgreSQL
    # writes no new row versions).
    yield (
        RUN,
        "UPDATE impu SET reg_state = :state"
        " WHERE subscription_id = :sid AND implicit_set_id = :set_id AND reg_state != :state",
        {"state": int(state), "sid": sid, "set_id": set_id},
    )
    if state == RegState.NOT_REGISTERED:
        # The S-CSCF stays assigned while any other implicit set of the
        # subscription is still registered or unregistered-served.
        others = yield (
            ONE,
            "SELECT count(*) FROM impu WHERE subscription_id = :sid AND reg_state != :none",
            {"sid": sid, "none": int(RegState.NOT_REGISTERED)},
        )
        if not keep_server and others[0] == 0:
            if serving != (None, None, None):
                yield (
                    RUN,
                    "UPDATE subscription SET scscf_name = NULL, scscf_host = NULL,"
                    " scscf_realm = NULL WHERE id = :sid",
                    {"sid": sid},
                )
            yield (
                RUN,
                "UPDATE impi SET pending_scscf = NULL"
                " WHERE subscription_id = :sid AND pending_scscf IS NOT NULL",
                {"sid": sid},
            )
    else:
        if serving != (server_name, server_host, server_realm):
            yield (
                RUN,
                "UPDATE subscription SET scscf_name = :name, scscf_host = :host,"
                " scscf_realm = :realm WHERE id = :sid",
                {"name": server_name, "host": server_host, "realm": server_realm, "sid": sid},
            )
            if serving[0] is not None and serving[0] != server_name:
                # The subscription moved to another S-CSCF (one per subscription, TS
                # 23.228 §5.4.2): another device's challenge open at the old one is
                # answered at the new one (which challenges it again), not taken there
                # to move the subscription back (a UAR names a pending S-CSCF first).
                yield (
                    RUN,
                    "UPDATE impi SET pending_scscf = NULL WHERE subscription_id = :sid"
                    " AND pending_scscf IS NOT NULL AND pending_scscf != :name",
                    {"sid": sid, "name": server_name},
                )
        if impi is not None:
            yield from _clear_pending(impi)
    if not want_set:
        return None
    return (yield from _set_members(sid, set_id))


def _clear_pending(impi: str) -> Plan:
    yield (
        RUN,
        "UPDATE impi SET pending_scscf = NULL WHERE identity = :impi AND pending_scscf IS NOT NULL",
        {"impi": impi},
    )


def _checked_assign(
    impi: str,
    impu: str,
    with_data: bool,
    assign: Callable[[UserState], bool],
    sender: tuple[str, str, str],
) -> Plan:
    """A registering SAR in one write transaction: the read of `_checked_state` (with
    `_checked_state_and_data`'s User-Data when ``with_data``), then, when the identities
    match and ``assign(state)`` says so, the implicit set REGISTERED and served by the
    ``sender`` (Server-Name, Diameter host, realm; `_assign_rows` on what the read found:
    no second lookup). Returns (check, state, data, assigned)."""
    if with_data:
        check, state, data = yield from _checked_state_and_data(impi, impu)
    else:
        check, state = yield from _checked_state(impi, impu, True)
        data = None
    if not (check.matched and state is not None and assign(state)):
        return check, state, data, False
    yield from _assign_rows(
        state.subscription_id,
        state.implicit_set_id,
        (state.scscf_name, state.scscf_host, state.scscf_realm),
        state=RegState.REGISTERED,
        server_name=sender[0],
        server_host=sender[1],
        server_realm=sender[2],
        keep_server=True,
        impi=impi,
        want_set=False,
    )
    return check, state, data, True


def _digest(impi: str, server_name: str | None) -> Plan:
    row = yield (
        ONE,
        "UPDATE impi SET pending_scscf = :name WHERE identity = :impi"
        " RETURNING auth_schemes, digest_password",
        {"name": server_name, "impi": impi},
    )
    if row is None:
        raise NotFound(impi)  # no row matched: nothing written
    return tuple(row[0].split(",")), row[1]


# --------------------------------------------------------------------------- group commit


@dataclass(slots=True)
class _MarJob:
    impi: str
    impu: str
    n: int
    server_name: str | None
    resync_to: int | None
    scheme: str | None
    future: asyncio.Future | None  # None: committed at once (`HssStore._commit_now`)


@dataclass(slots=True)
class _WriteJob:
    """A registration-state write (SAR assignment, pending S-CSCF) for the group commit.

    ``plan()`` gives the write's plan, run inside the batch's transaction; it raises
    `NotFound` only before it has written anything, so the batch can go on."""

    plan: Callable[[], Plan]
    future: asyncio.Future | None  # None: committed at once (`HssStore._commit_now`)


@dataclass(frozen=True, slots=True)
class _Failed:
    """A job's expected error (unknown identity), raised to its caller after the commit."""

    exc: Exception


_EXPECTED = (NotFound, FieldError)


@dataclass(frozen=True, slots=True)
class _GrantRow:
    sqn: int
    k: bytes = field(repr=False)
    opc: bytes = field(repr=False)
    amf: bytes
    auth_schemes: str
    digest_password: str | None = field(repr=False)


def _segments(batch: list[_MarJob | _WriteJob]) -> Iterator[_WriteJob | list[_MarJob]]:
    """A batch in arrival order: each write on its own, consecutive SQN allocations as
    one segment (one SELECT, one UPDATE per group), a resync as a segment of its own
    (SQN_HE from SQN_MS). Writes stay where they arrived, so a later one sees the
    earlier ones."""
    i = 0
    while i < len(batch):
        job = batch[i]
        if isinstance(job, _WriteJob):
            yield job
            i += 1
            continue
        j = i + 1
        if job.resync_to is None:
            while j < len(batch):
                nxt = batch[j]
                if not isinstance(nxt, _MarJob) or nxt.resync_to is not None:
                    break
                j += 1
        yield batch[i:j]  # type: ignore[misc]
        i = j


# --------------------------------------------------------------------------- store


class HssStore:
    """Async access to the HSS database. Create with `await HssStore.open(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite file: the group commit runs on one writer thread with its own sqlite3
        # connection (BEGIN IMMEDIATE); Cx reads run on the event
        # loop's own sqlite3 connection, a single statement on its own, else in a
        # deferred transaction (WAL snapshots that never wait for the writer); a read that finds the database busy anyway
        # (WAL recovery, a checkpoint resetting the log) goes to a reader thread.
        self._path: str | None = None
        database = engine.url.database
        if self.dialect == "sqlite" and database and database != ":memory:":
            self._path = database
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer_db: sqlite3.Connection | None = None
        # A group commit found with nothing else queued, while recent commits took at
        # most `inline_commit_max` seconds, runs on the event loop itself, on the loop's
        # read connection (it never waits for a lock: busy → the writer thread after
        # all; and its page cache survives its own commits, where a commit by another
        # connection would make its next read fetch every page again). The loop
        # stalls for that one commit, but a lone commit spares the two thread hand-offs
        # (worker wake-up, loop wake-up) that cost about twice its own CPU time. Under
        # load (jobs queued behind the batch) or on a slow disk, the batch is committed
        # on the loop's connection without an fsync and only the WAL's fdatasync waits
        # on the thread (`_commit_then_sync`). Negative: no group commit on the loop's
        # connection at all, each on the writer thread's (busy database: always so).
        self.inline_commit_max = 0.002
        self.commits_inline = 0  # group commits run on the loop (for benchmarks and tests)
        # Moving averages of a group commit's wall time: fsynced ones (SQNs) and those
        # that are not (`_begin`), which never wait for the disk but at a checkpoint.
        self._commit_seconds = 0.0
        self._commit_seconds_nosync = 0.0
        self._worker_busy = False  # the worker is taking batches off the queue
        #: True when no other request may be about to write (the HSS server asks its
        #: Diameter node: one request handler running). Only then may a write skip the
        #: worker (`_enqueue`): requests read together must still share one commit.
        #: None: every write goes through the worker.
        self.alone: Callable[[], bool] | None = None
        self._loop_db: sqlite3.Connection | None = None
        self._loop_thread: int | None = None
        self._read_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_dbs: list[sqlite3.Connection] = []
        self._reader_local = threading.local()
        self._pg_pool: Any = None
        self._queue: list[_MarJob | _WriteJob] = []
        self._inflight: list[_MarJob | _WriteJob] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.max_batch = 256
        #: False: a group commit that hands out no SQN (SAR assignments, a pending
        #: S-CSCF) is not fsynced on its own (SQLite synchronous=NORMAL): it is in the
        #: WAL before its answer, so a crash of the HSS keeps it, and the next commit
        #: with SQNs (fsynced, TS 33.102 Annex C) or checkpoint makes it power-cut safe
        #: too. True: every group commit is fsynced.
        self.fsync_every_commit = False
        self._sync_mode: dict[sqlite3.Connection, int] = {}  # PRAGMA synchronous per conn
        self.batches = 0  # number of group commits (for benchmarks and tests)
        self.wal_syncs = 0  # group commits on the loop whose WAL the thread fdatasynced
        #: WAL size from which the thread checkpoints it (SQLite's autocheckpoint: 1000 pages)
        self.wal_checkpoint_bytes = 1000 * (4096 + 24)
        self.checkpoints = 0  # checkpoints run on the thread (for tests)
        self._since_check = 0
        self._checkpointing = False
        self._wal: int | None = None  # descriptor of the WAL file (`_wal_fd`)
        self.reads_deferred = 0  # SQLite reads that found the database busy (to a thread)

    @classmethod
    async def open(cls, url: str | None = None, *, run_migrations: bool = True) -> HssStore:
        engine = create_engine(url)
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            parent = Path(database).expanduser().resolve().parent
            if not parent.is_dir():
                await engine.dispose()
                raise OSError(f"directory {str(parent)!r} does not exist")
        try:
            if run_migrations:
                await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
        # The batch being committed when the worker was cancelled may still commit on
        # its thread (SQNs can only skip forward); its callers get an error, not a hang.
        for job in (*self._inflight, *self._queue):
            if not job.future.done():
                job.future.set_exception(RuntimeError("HSS store closed"))
        self._inflight = []
        self._queue.clear()
        for executor in (self._executor, self._read_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._read_executor = None
        for db in (self._writer_db, self._loop_db, *self._reader_dbs):
            if db is not None:
                db.close()
        if self._wal is not None:
            os.close(self._wal)
            self._wal = None
        self._writer_db = self._loop_db = None
        self._sync_mode.clear()
        self._reader_dbs.clear()
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
        await self.engine.dispose()

    # ------------------------------------------------------------------ provisioning

    async def add_subscriber(self, spec: SubscriberSpec) -> None:
        """Write one subscriber in one transaction; `Conflict` if an identity exists."""
        await self.import_subscribers([spec])

    async def import_subscribers(
        self, specs: Sequence[SubscriberSpec], *, chunk: int = 2000
    ) -> int:
        """Write many subscribers in ONE transaction: all of them or none.

        IDs are allocated in Python from the current maxima inside the write
        transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the tables are locked), so
        the bulk insert is a few executemany calls per chunk instead of one round
        trip per row.
        """
        self._check_duplicates(specs)
        try:
            return await self._import(specs, chunk)
        except IntegrityError:
            # Another writer inserted the same identity between our check and insert;
            # the transaction rolled back whole.
            raise Conflict("impi", "an identity of this import was written concurrently") from None

    async def _import(self, specs: Sequence[SubscriberSpec], chunk: int) -> int:
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    sa.text(
                        "LOCK TABLE subscription, impi, impu, implicit_set, service_profile,"
                        " visited_network IN SHARE ROW EXCLUSIVE MODE"
                    )
                )
            await self._check_existing(conn, specs)
            ids = {}
            for table in (m.subscription, m.impi, m.impu, m.implicit_set, m.service_profile):
                ids[table.name] = (
                    await conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0)))
                ).scalar_one()
            for start in range(0, len(specs), chunk):
                rows: dict[str, list[dict[str, Any]]] = {
                    "subscription": [],
                    "impi": [],
                    "implicit_set": [],
                    "service_profile": [],
                    "impu": [],
                    "visited_network": [],
                }
                for spec in specs[start : start + chunk]:
                    ids["subscription"] += 1
                    sid = ids["subscription"]
                    ids["impi"] += 1
                    ids["implicit_set"] += 1
                    ids["service_profile"] += 1
                    rows["subscription"].append(
                        {"id": sid, "mandatory_caps": "", "optional_caps": ""}
                    )
                    rows["impi"].append(
                        {
                            "id": ids["impi"],
                            "subscription_id": sid,
                            "identity": spec.impi,
                            "k": spec.k,
                            "op_kind": spec.op_kind,
                            "op": spec.op,
                            "opc": spec.opc,
                            "amf": spec.amf,
                            "sqn": spec.sqn,
                            "algorithm": "milenage",
                            "auth_schemes": ",".join(spec.schemes),
                            "digest_password": spec.digest_password,
                            "pending_scscf": None,
                        }
                    )
                    rows["implicit_set"].append({"id": ids["implicit_set"], "subscription_id": sid})
                    rows["service_profile"].append(
                        {
                            "id": ids["service_profile"],
                            "subscription_id": sid,
                            "name": "default",
                            "ifc_xml": spec.ifc_xml,
                        }
                    )
                    for uri in spec.impus:
                        ids["impu"] += 1
                        rows["impu"].append(
                            {
                                "id": ids["impu"],
                                "subscription_id": sid,
                                "identity": uri,
                                "barred": uri in spec.barred,
                                "implicit_set_id": ids["implicit_set"],
                                "service_profile_id": ids["service_profile"],
                                "reg_state": int(RegState.NOT_REGISTERED),
                            }
                        )
                    for net in spec.visited_networks:
                        rows["visited_network"].append({"subscription_id": sid, "network": net})
                for name in (
                    "subscription",
                    "impi",
                    "implicit_set",
                    "service_profile",
                    "impu",
                    "visited_network",
                ):
                    if rows[name]:
                        await conn.execute(m.metadata.tables[name].insert(), rows[name])
            if self.dialect == "postgresql":
                await self._bump_pg_sequences(conn)
        return len(specs)

    @staticmethod
    def _check_duplicates(specs: Sequence[SubscriberSpec]) -> None:
        seen_impi: set[str] = set()
        seen_impu: set[str] = set()
        for i, spec in enumerate(specs):
            if spec.impi in seen_impi:
                raise Conflict("impi", f"{spec.impi!r} appears twice (entry {i + 1})")
            seen_impi.add(spec.impi)
            for uri in spec.impus:
                if uri in seen_impu:
                    raise Conflict("impu", f"{uri!r} appears twice (entry {i + 1})")
                seen_impu.add(uri)

    async def _check_existing(self, conn: AsyncConnection, specs: Sequence[SubscriberSpec]) -> None:
        impis = [s.impi for s in specs]
        impus = [u for s in specs for u in s.impus]
        for start in range(0, len(impis), 5000):
            part = impis[start : start + 5000]
            row = (
                await conn.execute(
                    sa.select(m.impi.c.identity).where(m.impi.c.identity.in_(part)).limit(1)
                )
            ).first()
            if row:
                raise Conflict("impi", f"{row[0]!r} already exists")
        for start in range(0, len(impus), 5000):
            part = impus[start : start + 5000]
            row = (
                await conn.execute(
                    sa.select(m.impu.c.identity).where(m.impu.c.identity.in_(part)).limit(1)
                )
            ).first()
            if row:
                raise Conflict("impu", f"{row[0]!r} already exists")

    async def _bump_pg_sequences(self, conn: AsyncConnection) -> None:
        for name in ("subscription", "impi", "impu", "implicit_set", "service_profile"):
            await conn.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'),"
                    f" (SELECT COALESCE(MAX(id), 1) FROM {name}))"
                )
            )

    async def get_subscriber(self, impi: str) -> SubscriberView:
        return await self._read(_view, impi)

    async def delete_subscriber(self, impi: str) -> ServingInfo:
        """Delete the IMPI; its subscription (IMPUs, profiles) goes with its last IMPI.

        Returns where the subscriber was served, so the caller can send an RTR.
        """
        async with self.engine.begin() as conn:
            info = await conn.run_sync(run_sa, _serving_by("impi", impi))
            await conn.execute(sa.delete(m.impi).where(m.impi.c.identity == impi))
            left = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        m.impi.c.subscription_id == info.subscription_id
                    )
                )
            ).scalar_one()
            if left == 0:
                sid = info.subscription_id
                # Explicit deletes: SQLite only cascades with foreign_keys=ON and we
                # do not rely on every connection having it.
                await conn.execute(sa.delete(m.impu).where(m.impu.c.subscription_id == sid))
                await conn.execute(
                    sa.delete(m.visited_network).where(m.visited_network.c.subscription_id == sid)
                )
                await conn.execute(
                    sa.delete(m.implicit_set).where(m.implicit_set.c.subscription_id == sid)
                )
                await conn.execute(
                    sa.delete(m.service_profile).where(m.service_profile.c.subscription_id == sid)
                )
                await conn.execute(sa.delete(m.subscription).where(m.subscription.c.id == sid))
        return info

    async def serving_for_impu(self, impu: str) -> ServingInfo:
        return await self._read(_serving_by, "impu", impu)

    async def serving_for_set(self, impu: str) -> tuple[ServingInfo, RegState]:
        """`ServingInfo` naming the implicit set of ``impu`` alone, and its state."""
        return await self._read(_serving_set, impu)

    async def serving_for_impi(self, impi: str) -> ServingInfo:
        return await self._read(_serving_by, "impi", impi)

    async def update_subscriber(
        self,
        impi: str,
        *,
        k: bytes | None = None,
        op: bytes | None = None,
        opc: bytes | None = None,
        op_kind: str | None = None,
        amf: bytes | None = None,
        sqn: int | None = None,
        schemes: Sequence[str] | None = None,
        digest_password: str | None = None,
        ifc_xml: str | None = None,
        clear_ifc: bool = False,
        barred: dict[str, bool] | None = None,
        visited_networks: Sequence[str] | None = None,
        mandatory_capabilities: Sequence[int] | None = None,
        optional_capabilities: Sequence[int] | None = None,
    ) -> ServingInfo:
        """Change provisioned data in one transaction; returns where the user is served (PPR)."""
        async with self.engine.begin() as conn:
            info = await conn.run_sync(run_sa, _serving_by("impi", impi))
            values: dict[str, Any] = {}
            if k is not None:
                values["k"] = k
            if opc is not None:
                values["opc"] = opc
                values["op"] = op
                values["op_kind"] = op_kind or ("op" if op is not None else "opc")
            if amf is not None:
                values["amf"] = amf
            if sqn is not None:
                values["sqn"] = sqn
            if schemes is not None:
                values["auth_schemes"] = ",".join(schemes)
            if digest_password is not None:
                values["digest_password"] = digest_password
            if values:
                await conn.execute(
                    sa.update(m.impi).where(m.impi.c.identity == impi).values(**values)
                )
            if ifc_xml is not None or clear_ifc:
                await conn.execute(
                    sa.update(m.service_profile)
                    .where(m.service_profile.c.subscription_id == info.subscription_id)
                    .values(ifc_xml=None if clear_ifc else ifc_xml)
                )
            if barred:
                for uri, flag in barred.items():
                    res = await conn.execute(
                        sa.update(m.impu)
                        .where(
                            m.impu.c.identity == uri,
                            m.impu.c.subscription_id == info.subscription_id,
                        )
                        .values(barred=bool(flag))
                    )
                    if res.rowcount != 1:
                        raise FieldError("barred", f"{uri!r} is not an IMPU of {impi!r}")
            caps: dict[str, str] = {}
            if mandatory_capabilities is not None:
                caps["mandatory_caps"] = ",".join(str(int(c)) for c in mandatory_capabilities)
            if optional_capabilities is not None:
                caps["optional_caps"] = ",".join(str(int(c)) for c in optional_capabilities)
            if caps:
                await conn.execute(
                    sa.update(m.subscription)
                    .where(m.subscription.c.id == info.subscription_id)
                    .values(**caps)
                )
            if visited_networks is not None:
                await conn.execute(
                    sa.delete(m.visited_network).where(
                        m.visited_network.c.subscription_id == info.subscription_id
                    )
                )
                if visited_networks:
                    await conn.execute(
                        m.visited_network.insert(),
                        [
                            {"subscription_id": info.subscription_id, "network": n}
                            for n in dict.fromkeys(visited_networks)
                        ],
                    )
        return info

    async def add_impus(
        self, impi: str, impus: Sequence[str], barred: Iterable[str] = (), *, new_set: bool = False
    ) -> ServingInfo:
        """Add IMPUs to the subscriber's implicit set and default profile.

        With ``new_set`` they form a new implicit registration set of their own
        (TS 29.228 §6.5: registered and de-registered together, apart from the others).
        """
        barred = set(barred)
        async with self.engine.begin() as conn:
            info = await conn.run_sync(run_sa, _serving_by("impi", impi))
            existing = (
                await conn.execute(
                    sa.select(m.impu.c.identity).where(m.impu.c.identity.in_(list(impus)))
                )
            ).first()
            if existing:
                raise Conflict("impu", f"{existing[0]!r} already exists")
            ref = (
                await conn.execute(
                    sa.select(
                        m.impu.c.implicit_set_id, m.impu.c.service_profile_id, m.impu.c.reg_state
                    )
                    .where(m.impu.c.subscription_id == info.subscription_id)
                    .order_by(m.impu.c.id)
                    .limit(1)
                )
            ).one()
            set_id, state = ref.implicit_set_id, ref.reg_state
            if new_set:
                set_id = (
                    await conn.execute(
                        m.implicit_set.insert()
                        .values(subscription_id=info.subscription_id)
                        .returning(m.implicit_set.c.id)
                    )
                ).scalar_one()
                state = int(RegState.NOT_REGISTERED)
            await conn.execute(
                m.impu.insert(),
                [
                    {
                        "subscription_id": info.subscription_id,
                        "identity": u,
                        "barred": u in barred,
                        "implicit_set_id": set_id,
                        "service_profile_id": ref.service_profile_id,
                        # TS 29.228 §6.5: an implicit set shares one registration state
                        "reg_state": state,
                    }
                    for u in impus
                ],
            )
        return await self.serving_for_impi(impi)

    async def add_impi(self, existing_impi: str, spec: SubscriberSpec) -> ServingInfo:
        """Add another private identity to the subscription of ``existing_impi``.

        TS 23.228 §4.3.3.4: several IMPIs of one IMS subscription share its IMPUs;
        ``spec.impus`` is ignored (the shared ones apply).
        """
        try:
            async with self.engine.begin() as conn:
                info = await conn.run_sync(run_sa, _serving_by("impi", existing_impi))
                clash = (
                    await conn.execute(sa.select(m.impi.c.id).where(m.impi.c.identity == spec.impi))
                ).first()
                if clash:
                    raise Conflict("impi", f"{spec.impi!r} already exists")
                await conn.execute(
                    m.impi.insert().values(
                        subscription_id=info.subscription_id,
                        identity=spec.impi,
                        k=spec.k,
                        op_kind=spec.op_kind,
                        op=spec.op,
                        opc=spec.opc,
                        amf=spec.amf,
                        sqn=spec.sqn,
                        algorithm="milenage",
                        auth_schemes=",".join(spec.schemes),
                        digest_password=spec.digest_password,
                    )
                )
        except IntegrityError:
            raise Conflict("impi", f"{spec.impi!r} was written concurrently") from None
        return await self.serving_for_impi(spec.impi)

    async def sync_scscf_pool(self, pool: Sequence[dict[str, Any]]) -> None:
        """Make the scscf table equal to the configured pool (name, host, capabilities)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(m.scscf))
            if pool:
                await conn.execute(
                    m.scscf.insert(),
                    [
                        {
                            "name": p["name"],
                            "diameter_host": p.get("diameter_host"),
                            "mandatory_caps": ",".join(
                                str(c) for c in p.get("mandatory_capabilities", ())
                            ),
                            "optional_caps": ",".join(
                                str(c) for c in p.get("optional_capabilities", ())
                            ),
                        }
                        for p in pool
                    ],
                )

    async def scscf_pool(self) -> list[dict[str, Any]]:
        return await self._read(_scscf_pool)

    async def scscf_host_for(self, server_name: str) -> str | None:
        return await self._read(_scscf_host, server_name)

    async def count_subscribers(self) -> int:
        return await self._read(_count)

    # ------------------------------------------------------------------ Cx reads

    async def _read(self, plan: Callable[..., Plan], *args: Any) -> Any:
        """Run the read ``plan(*args)`` in one read-only transaction.

        SQLite file: right here on the event loop's sqlite3 connection (short indexed
        lookups on a WAL snapshot: a few microseconds each, cheaper than any thread
        hand-off); if SQLite reports the database busy, again on a reader thread that
        may wait. PostgreSQL: on asyncpg. Otherwise on the async engine."""
        if self._path is not None:
            got = self._read_now(plan, *args)
            if got is not WAIT:
                return got
            if self._loop_reader() is not None:
                self.reads_deferred += 1  # the loop's connection found the database busy
            if self._read_executor is None:
                self._read_executor = concurrent.futures.ThreadPoolExecutor(
                    2, thread_name_prefix="hss-sqlite-read"
                )
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_executor, self._read_in_thread, plan, args)
        if self.dialect == "postgresql":
            async with (await self._pg()).acquire() as pg:
                return await run_pg(pg, plan(*args))
        async with self.engine.connect() as conn:
            return await conn.run_sync(run_sa, plan(*args))

    def _read_now(self, plan: Callable[..., Plan], *args: Any) -> Any:
        """``plan(*args)`` on the event loop's sqlite3 connection, at once, as `_read`
        does first; `WAIT` where that cannot be (not a SQLite file, not the loop's
        thread, the database busy), and the caller then takes the async way (`_read`),
        which reads again. Never the async engine, its pool or asyncpg: those want a
        Task (an asyncio timeout refuses to start outside one), and there is none here."""
        if self._path is None:
            return WAIT
        db = self._loop_reader()
        if db is None:
            return WAIT
        try:
            return self._read_on(db, plan, args)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            return WAIT  # counted in reads_deferred by `_read` when it defers

    async def _pg(self) -> Any:
        """PostgreSQL: asyncpg's own pool for Cx reads and group commits (cheaper to
        take a connection from than the SQLAlchemy pool: no greenlet, no reset)."""
        if self._pg_pool is None:
            import asyncpg

            # The same connect arguments as the engine's (host, user, password, query
            # options), less those only SQLAlchemy's adapter understands.
            _args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            for key in ("prepared_statement_cache_size", "prepared_statement_name_func"):
                kwargs.pop(key, None)
            pool = await asyncpg.create_pool(min_size=1, max_size=8, **kwargs)
            if self._pg_pool is None:
                self._pg_pool = pool
            else:  # another task created one meanwhile
                await pool.close()
        return self._pg_pool

    def _loop_reader(self) -> sqlite3.Connection | None:
        """The sqlite3 connection of the thread that came first (the event loop's): its
        reads and its inline group commits."""
        if self._loop_db is None:
            assert self._path is not None
            # timeout 0: a busy database raises at once (the read then goes to a thread)
            self._loop_db = _connect_sqlite(self._path, timeout=0.0)
            # Its commits never checkpoint (copying the WAL into the database and
            # fsyncing both would stall the loop): the thread does (`_maybe_checkpoint`).
            self._loop_db.execute("PRAGMA wal_autocheckpoint=0")
            self._loop_thread = threading.get_ident()
        elif self._loop_thread != threading.get_ident():
            return None
        return self._loop_db

    @staticmethod
    def _read_on(db: sqlite3.Connection, plan: Callable[..., Plan], args: tuple[Any, ...]) -> Any:
        if plan in _USUALLY_ONE_STATEMENT:
            # Its first statement alone is read from one snapshot without BEGIN and
            # COMMIT (two statements fewer); if the plan goes on, all of it again below.
            done, result = run_sqlite_alone(db, plan(*args))
            if done:
                return result
        db.execute("BEGIN")  # deferred: the snapshot starts at the first SELECT
        try:
            return run_sqlite(db, plan(*args))
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    def _read_in_thread(self, plan: Callable[..., Plan], args: tuple[Any, ...]) -> Any:
        db = getattr(self._reader_local, "db", None)
        if db is None:
            assert self._path is not None
            db = self._reader_local.db = _connect_sqlite(self._path, timeout=30.0, query_only=True)
            self._reader_dbs.append(db)
        return self._read_on(db, plan, args)

    async def check_identities(self, impi: str | None, impu: str) -> IdentityCheck:
        return await self._read(_identities, impi, impu)

    async def user_state(self, impu: str, impi: str | None = None) -> UserState:
        """State of ``impu``; with ``impi`` also that IMPI's pending S-CSCF (from MAR)."""
        return await self._read(_user_state, impu, impi)

    async def checked_state(
        self, impi: str | None, impu: str, *, with_pending: bool = False
    ) -> tuple[IdentityCheck, UserState | None]:
        """UAR/SAR in one read: the identity check and, when ``impu`` exists, its state
        (with ``with_pending`` also the pending S-CSCF of ``impi``)."""
        return await self._read(_checked_state, impi, impu, with_pending)

    async def checked_state_and_data(
        self, impi: str, impu: str
    ) -> tuple[IdentityCheck, UserState | None, tuple[bytes, tuple[str, ...]] | None]:
        """`checked_state` and, when the identities match, `user_data`, in one read."""
        return await self._read(_checked_state_and_data, impi, impu)

    # The same reads at once on the loop's connection, for answers given without a Task
    # (`imsaka.hss.service.CxService.respond`); `WAIT` when they must wait (`_read_now`).

    def checked_state_now(
        self, impi: str | None, impu: str, *, with_pending: bool = False
    ) -> tuple[IdentityCheck, UserState | None] | Wait:
        return self._read_now(_checked_state, impi, impu, with_pending)

    def checked_state_and_data_now(
        self, impi: str, impu: str
    ) -> tuple[IdentityCheck, UserState | None, tuple[bytes, tuple[str, ...]] | None] | Wait:
        return self._read_now(_checked_state_and_data, impi, impu)

    def user_state_now(self, impu: str) -> UserState | Wait:
        return self._read_now(_user_state, impu, None)

    def scscf_pool_now(self) -> list[dict[str, Any]] | Wait:
        return self._read_now(_scscf_pool)

    async def user_data(self, impi: str | None, impu: str) -> tuple[bytes, tuple[str, ...]]:
        """(User-Data XML, the implicit set of ``impu``) for an SAA (TS 29.228 §6.1.2, §6.5)."""
        return await self._read(_user_data, impi, impu)

    async def assign(
        self,
        impu: str,
        *,
        state: RegState,
        server_name: str | None,
        server_host: str | None = None,
        server_realm: str | None = None,
        keep_server: bool = True,
        impi: str | None = None,
        want_set: bool = True,
    ) -> tuple[str, ...] | None:
        """Set the registration state of the implicit set of ``impu`` and the serving S-CSCF.

        With ``keep_server`` False the stored S-CSCF name is cleared (de-registration
        types that do not keep the name, TS 29.228 §6.1.2.1). Returns the implicit set
        (None with ``want_set`` False: one SELECT fewer in the write transaction).
        Group-committed with concurrent writes; returns after the COMMIT.
        """
        return await self._write(
            _assign,
            impu,
            state=state,
            server_name=server_name,
            server_host=server_host,
            server_realm=server_realm,
            keep_server=keep_server,
            impi=impi,
            want_set=want_set,
        )

    async def checked_assign(
        self,
        impi: str,
        impu: str,
        *,
        with_data: bool,
        assign: Callable[[UserState], bool],
        sender: tuple[str, str, str],
    ) -> tuple[IdentityCheck, UserState | None, tuple[bytes, tuple[str, ...]] | None, bool]:
        """`checked_assign_now` in the next group commit: the SAR's read and its
        assignment in one write transaction (no read of its own before it)."""
        return await self._write(_checked_assign, impi, impu, with_data, assign, sender)

    async def clear_pending(self, impi: str) -> None:
        """Forget the pending S-CSCF of ``impi`` (group-committed)."""
        await self._write(_clear_pending, impi)

    async def deregister_subscription(self, sid: int) -> None:
        """Administrative de-registration: every IMPU not registered, S-CSCF name cleared."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(m.impu)
                .where(m.impu.c.subscription_id == sid)
                .values(reg_state=int(RegState.NOT_REGISTERED))
            )
            await conn.execute(
                sa.update(m.subscription)
                .where(m.subscription.c.id == sid)
                .values(scscf_name=None, scscf_host=None, scscf_realm=None)
            )
            await conn.execute(
                sa.update(m.impi).where(m.impi.c.subscription_id == sid).values(pending_scscf=None)
            )

    async def digest_credentials(
        self, impi: str, server_name: str | None
    ) -> tuple[tuple[str, ...], str | None]:
        """(allowed schemes, SIP Digest password) of an IMPI; records the pending S-CSCF
        (group-committed: returns after the COMMIT)."""
        return await self._write(_digest, impi, server_name)

    async def sqn_of(self, impi: str) -> int:
        return int((await self._read(_impi_columns, impi, "sqn"))[0])

    async def credentials(self, impi: str) -> tuple[bytes, bytes, bytes]:
        """(K, OPc, AMF) for resync verification; never leaves the HSS."""
        k, opc, amf = await self._read(_impi_columns, impi, "k, opc, amf")
        return bytes(k), bytes(opc), bytes(amf)

    # ------------------------------------------------------------------ SQN allocation

    async def allocate_sqns(self, impi: str, n: int) -> list[int]:
        """Advance SQN_HE by n steps in one statement, commit, return the n SQNs."""
        if n < 1:
            raise ValueError("n must be ≥ 1")
        async with self.engine.begin() as conn:
            new = (
                await conn.execute(
                    sa.update(m.impi)
                    .where(
                        m.impi.c.identity == impi,
                        m.impi.c.sqn.op(">>")(sa.literal_column(str(IND_BITS)))
                        + sa.literal_column(str(int(n)))
                        <= sa.literal_column(str(MAX_SEQ)),
                    )
                    .values(sqn=sa.literal_column(_sqn_sql(n)))
                    .returning(m.impi.c.sqn)
                )
            ).scalar()
        if new is None:
            await self.sqn_of(impi)  # NotFound for an unknown IMPI
            raise ValueError("sqn: SEQ_HE is at its maximum; the subscriber needs a new K")
        return sqn_sequence(int(new), n)

    async def mar(
        self,
        impi: str,
        impu: str,
        n: int,
        server_name: str | None,
        *,
        resync_to: int | None = None,
        scheme: str | None = None,
    ) -> MarGrant | IdentityCheck | SqnExhausted:
        """Allocate n SQNs for one MAR (group-committed with concurrent MARs).

        Returns a `MarGrant` (credentials + committed SQNs), or the `IdentityCheck`
        that explains why not (unknown IMPI/IMPU, or they do not belong together;
        ``matched`` True means the identities are fine but ``scheme`` is not one of
        the IMPI's allowed authentication schemes, and no SQN was taken).
        ``resync_to`` = SQN_MS (already verified by the caller): SQN_HE restarts there;
        a resync is a step of its own in the group-committed transaction (its own
        statement, never merged into another MAR's UPDATE).
        """
        if n < 1:
            raise ValueError("n must be ≥ 1")
        if resync_to is not None and (resync_to >> IND_BITS) + n > MAX_SEQ:
            return SQN_EXHAUSTED  # no fresh SQN can follow SQN_MS; nothing written
        loop = asyncio.get_running_loop()
        job = _MarJob(impi, impu, n, server_name, resync_to, scheme, loop.create_future())
        return await self._enqueue(job)

    async def _write(self, plan: Callable[..., Plan], *args: Any, **kwargs: Any) -> Any:
        """Run the write ``plan(*args, **kwargs)`` in the next group commit."""
        job = _WriteJob(
            functools.partial(plan, *args, **kwargs), asyncio.get_running_loop().create_future()
        )
        return await self._enqueue(job)

    async def _enqueue(self, job: _MarJob | _WriteJob) -> Any:
        """The job's result once committed: at once (`_commit_now`) when it can be,
        otherwise through the queue and the worker."""
        result = self._commit_now(job)
        if result is WAIT:
            return await self._submit(job)
        return result

    def _commit_now(self, job: _MarJob | _WriteJob) -> Any:
        """The job's result, committed in a group commit of its own right here on the
        loop, without the worker task's hop; or `WAIT`, with nothing written, unless the
        writer is idle, nothing is queued, commits are quick (SQLite file) and no other
        request is about to write (`alone`: those read together share a commit)."""
        alone = self.alone
        if (
            alone is None
            or self._path is None
            or self._queue
            or self._worker_busy
            or self._average(self._durable([job])) > self.inline_commit_max
            or not alone()
        ):
            return WAIT
        try:
            results = self._commit_inline([job])
        except Exception as exc:  # as the worker: this request fails, not the server
            log.error("HSS write failed: %s", type(exc).__name__)
            raise
        if results is None:
            return WAIT
        self.batches += 1
        result = results[0]
        if isinstance(result, _Failed):
            raise result.exc
        return result

    # The same writes at once on the loop's connection, for answers given without a
    # Task (`imsaka.hss.service.CxService.respond`); `WAIT` when they would have to wait
    # (`_commit_now`), and then nothing was written.

    def mar_now(
        self, impi: str, impu: str, n: int, server_name: str | None, *, scheme: str | None = None
    ) -> MarGrant | IdentityCheck | SqnExhausted | Wait:
        """`mar` (no resync) committed at once, or `WAIT`."""
        if n < 1:
            raise ValueError("n must be ≥ 1")
        return self._commit_now(_MarJob(impi, impu, n, server_name, None, scheme, None))

    def checked_assign_now(
        self,
        impi: str,
        impu: str,
        *,
        with_data: bool,
        assign: Callable[[UserState], bool],
        sender: tuple[str, str, str],
    ) -> tuple[IdentityCheck, UserState | None, tuple[bytes, tuple[str, ...]] | None, bool] | Wait:
        """A registering SAR's read (`checked_state`, with `checked_state_and_data`'s
        User-Data when ``with_data``) and, if the identities match and ``assign(state)``
        says so, its assignment (`assign`: the implicit set REGISTERED, served by the
        ``sender``'s Server-Name, Diameter host and realm, the IMPI's pending S-CSCF
        cleared), in one write transaction committed at once; or `WAIT`. Returns (check,
        state, data, assigned)."""
        plan = functools.partial(_checked_assign, impi, impu, with_data, assign, sender)
        return self._commit_now(_WriteJob(plan, None))

    def _submit(self, job: _MarJob | _WriteJob) -> asyncio.Future:
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(
                self._write_worker(), name="hss-group-commit"
            )
        assert self._wakeup is not None
        self._wakeup.set()
        return job.future

    async def _write_worker(self) -> None:
        # Group commit: whatever queued up while the previous transaction was being
        # committed goes into the next one (one BEGIN … COMMIT, one fsync), in arrival
        # order. No future is resolved before its transaction's COMMIT has returned.
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._worker_busy = True
            try:
                while self._queue:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                    self._inflight = batch
                    try:
                        results = await self._run_batch(batch)
                    except Exception as exc:
                        if len(batch) == 1:  # a DB failure fails this request, not the server
                            log.error("HSS write failed: %s", type(exc).__name__)
                            self._resolve(batch, [_Failed(exc)])
                            continue
                        # Nothing of the batch was committed: run each job on its own, so
                        # one bad request cannot fail the others with it.
                        log.warning(
                            "group commit of %d failed (%s); retrying one by one",
                            len(batch),
                            type(exc).__name__,
                        )
                        for job in batch:
                            try:
                                self._resolve([job], await self._run_batch([job]))
                            except Exception as one:
                                log.error("HSS write failed: %s", type(one).__name__)
                                self._resolve([job], [_Failed(one)])
                        continue
                    self._resolve(batch, results)
            finally:
                self._worker_busy = False

    @staticmethod
    def _resolve(batch: Sequence[_MarJob | _WriteJob], results: Sequence[Any]) -> None:
        for job, result in zip(batch, results, strict=True):
            if job.future.done():  # the caller went away (cancelled)
                continue
            if isinstance(result, _Failed):
                job.future.set_exception(result.exc)
            else:
                job.future.set_result(result)

    async def _run_batch(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        for attempt in range(5):
            try:
                return await self._batch_once(batch)
            except Exception as exc:
                # PostgreSQL deadlock / serialization failure between two HSS
                # processes (from asyncpg itself or through SQLAlchemy): nothing was
                # committed, so simply run the batch again.
                orig = getattr(exc, "orig", exc)
                code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
                if code in ("40P01", "40001") and attempt < 4:
                    continue
                raise
        raise RuntimeError("unreachable")

    async def _batch_once(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        self.batches += 1
        if self._path is not None:
            # SQLite file: the whole transaction (BEGIN IMMEDIATE … COMMIT with its
            # fsync) runs on one dedicated thread, one hop per batch instead of one
            # per statement; the event loop keeps decoding and answering meanwhile.
            # A lone batch after quick commits runs right here (see __init__).
            durable = self._durable(batch)
            if not self._queue and self._average(durable) <= self.inline_commit_max:
                results = self._commit_inline(batch)
                if results is not None:
                    return results
            if self.inline_commit_max >= 0:
                results = await self._commit_then_sync(batch, durable)
                if results is not None:
                    return results
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            results = await loop.run_in_executor(self._thread(), self._batch_in_thread, batch)
            self._note_commit(start, durable)
            return results
        if self.dialect == "postgresql":
            return await self._batch_pg(batch)
        async with self.engine.begin() as conn:
            return await conn.run_sync(self._batch_sa, batch)

    def _batch_sa(self, conn: sa.Connection, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        return self._run_jobs(
            batch, functools.partial(run_sa, conn), functools.partial(self._batch_sync, conn)
        )

    def _run_jobs(
        self,
        batch: list[_MarJob | _WriteJob],
        run: Callable[[Plan], Any],
        mar_segment: Callable[[list[_MarJob]], tuple[Any, ...]],
    ) -> list[Any]:
        """Run a batch segment by segment (`_segments`) in the caller's transaction."""
        results: list[Any] = []
        for part in _segments(batch):
            if isinstance(part, _WriteJob):
                try:
                    results.append(run(part.plan()))
                except _EXPECTED as exc:
                    results.append(_Failed(exc))
            else:
                results.extend(self._hand_out(part, *mar_segment(part)))
        return results

    # The three executors below run the same plan: one SELECT validating every
    # (IMPI, IMPU) pair and the schemes, then one UPDATE … RETURNING per group of
    # IMPIs taking the same number of steps, all in one transaction.

    @staticmethod
    def _plan(
        batch: list[_MarJob], rows: Iterable[tuple[str, str, str | None]]
    ) -> tuple[
        list[bool], set[tuple[str, str]], dict[str, int], dict[tuple[int, str | None], list[str]]
    ]:
        """From (IMPI, its schemes, a matching IMPU or None) rows: which MARs go ahead,
        the steps each IMPI advances, and the UPDATE groups (steps, S-CSCF name)."""
        pairs: set[tuple[str, str]] = set()
        allowed: dict[str, tuple[str, ...]] = {}
        for identity, schemes, uri in rows:
            allowed[identity] = tuple(schemes.split(","))
            if uri is not None:
                pairs.add((identity, uri))
        ok = [
            (j.impi, j.impu) in pairs and (j.scheme is None or j.scheme in allowed[j.impi])
            for j in batch
        ]
        steps: dict[str, int] = {}
        names: dict[str, str | None] = {}
        for job, good in zip(batch, ok, strict=True):
            if good:
                steps[job.impi] = steps.get(job.impi, 0) + job.n
                names[job.impi] = job.server_name
        groups: dict[tuple[int, str | None], list[str]] = {}
        for identity, n in steps.items():
            groups.setdefault((n, names[identity]), []).append(identity)
        return ok, pairs, steps, groups

    @staticmethod
    def _misses(
        batch: list[_MarJob], ok: list[bool], pairs: set[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for job, good in zip(batch, ok, strict=True):
            key = (job.impi, job.impu)
            if not good and key not in pairs and key not in out:
                out.append(key)
        return out

    @staticmethod
    def _checks(
        batch: list[_MarJob],
        ok: list[bool],
        pairs: set[tuple[str, str]],
        found: dict[tuple[str, str], IdentityCheck],
    ) -> dict[tuple[str, str], IdentityCheck]:
        checks = dict(found)
        for job, good in zip(batch, ok, strict=True):
            key = (job.impi, job.impu)
            if not good and key in pairs:  # identities fine, scheme not allowed
                checks[key] = _CHECKS[True, True, True]
        return checks

    def _thread(self) -> concurrent.futures.ThreadPoolExecutor:
        """The one thread that waits for the disk: whole group commits (busy database)
        or the WAL's fdatasync after a commit on the loop (`_commit_then_sync`)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="hss-sqlite"
            )
        return self._executor

    async def _commit_then_sync(
        self, batch: list[_MarJob | _WriteJob], durable: bool
    ) -> list[Any] | None:
        """The group commit's SQL and COMMIT on the loop's connection (synchronous=NORMAL:
        no fsync inside), then, if it hands out SQNs, the WAL fdatasynced on the thread
        before any result is given (TS 33.102 Annex C: what synchronous=FULL does at
        COMMIT, with the loop free while the disk works). None, with nothing written,
        when the database is busy: the writer thread then takes the whole batch.

        Why not the writer thread's own connection: a commit by one connection makes
        the other drop its whole page cache, so every write there cost the loop's next
        reads a refetch of each page, besides the thread running SQL against the
        loop for the GIL; the loop's connection keeps its cache over its own commits."""
        db = self._loop_reader()
        if db is None:
            return None
        start = time.perf_counter()
        try:
            self._begin(db, batch, fsync=False)
            results = self._batch_begun(db, batch)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            return None  # rolled back: nothing of the batch is committed
        if durable:
            fd = self._wal_fd()
            await asyncio.get_running_loop().run_in_executor(self._thread(), os.fdatasync, fd)
            self.wal_syncs += 1
        self._note_commit(start, durable)
        self._maybe_checkpoint()
        return results  # only after the WAL holding the COMMIT is on disk

    def _wal_fd(self) -> int:
        """A descriptor of the database's WAL file (``<database>-wal``), to fdatasync it.
        Checked against the path each time: should the WAL ever be deleted and made anew
        (SQLite does so only when its last connection closes; the loop's stays open), the
        descriptor follows it rather than syncing a file nobody writes."""
        assert self._path is not None
        path = self._path + "-wal"
        now = os.stat(path)
        fd = self._wal
        if fd is not None:
            then = os.fstat(fd)
            if (then.st_dev, then.st_ino) == (now.st_dev, now.st_ino):
                return fd
            os.close(fd)
            self._wal = None
        self._wal = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return self._wal

    def _batch_in_thread(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        db = self._writer_db
        if db is None:
            assert self._path is not None
            db = self._writer_db = _connect_sqlite(self._path, timeout=30.0)
        self._begin(db, batch)
        return self._batch_begun(db, batch)

    def _begin(
        self, db: sqlite3.Connection, batch: list[_MarJob | _WriteJob], *, fsync: bool = True
    ) -> None:
        """BEGIN IMMEDIATE (the write lock at once, as _sqlite_begin), fsynced at COMMIT
        only if the batch hands out SQNs (or `fsync_every_commit`): an SQN must be on
        disk before its vector leaves (TS 33.102 Annex C); an assignment need not be.
        ``fsync`` False: never at COMMIT, the caller syncs the WAL (`_commit_then_sync`)."""
        durable = fsync and self._durable(batch)
        mode = _SYNC_FULL if durable else _SYNC_NORMAL
        if self._sync_mode.get(db, _SYNC_FULL) != mode:
            db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._sync_mode[db] = mode
        db.execute("BEGIN IMMEDIATE")

    def _durable(self, batch: list[_MarJob | _WriteJob]) -> bool:
        """Whether the batch's commit is fsynced (`_begin`): it hands out SQNs."""
        return self.fsync_every_commit or any(type(job) is _MarJob for job in batch)

    def _average(self, durable: bool) -> float:
        return self._commit_seconds if durable else self._commit_seconds_nosync

    def _commit_inline(self, batch: list[_MarJob | _WriteJob]) -> list[Any] | None:
        """`_batch_inline`, timed into the moving average of a commit's wall time."""
        start = time.perf_counter()
        results = self._batch_inline(batch)
        if results is not None:
            self.commits_inline += 1
            self._note_commit(start, self._durable(batch))
            self._maybe_checkpoint()
        return results

    def _maybe_checkpoint(self) -> None:
        """Every `CHECK_EVERY` commits on the loop's connection: once the WAL holds more
        than `wal_checkpoint_bytes`, a PASSIVE checkpoint on the thread's connection
        (what SQLite's autocheckpoint would have done in the committing one, on the
        loop). PASSIVE waits for no one; the loop's next write restarts the WAL."""
        self._since_check += 1
        if self._since_check < _CHECK_EVERY or self._checkpointing:
            return
        self._since_check = 0
        if os.fstat(self._wal_fd()).st_size < self.wal_checkpoint_bytes:
            return
        self._checkpointing = True
        future = self._thread().submit(self._checkpoint_in_thread)
        future.add_done_callback(self._checkpoint_done)

    def _checkpoint_in_thread(self) -> None:
        db = self._writer_db
        if db is None:
            assert self._path is not None
            db = self._writer_db = _connect_sqlite(self._path, timeout=30.0)
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint_done(self, future: concurrent.futures.Future) -> None:
        self._checkpointing = False
        if not future.cancelled() and future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", type(future.exception()).__name__)
        else:
            self.checkpoints += 1

    def _note_commit(self, start: float, durable: bool) -> None:
        took = time.perf_counter() - start
        if durable:
            self._commit_seconds += (took - self._commit_seconds) / 8
        else:
            self._commit_seconds_nosync += (took - self._commit_seconds_nosync) / 8

    def _batch_inline(self, batch: list[_MarJob | _WriteJob]) -> list[Any] | None:
        """The group commit on the calling (loop) thread; None, with nothing written, if
        the database is busy (another process writing, a checkpoint): it must not wait."""
        db = self._loop_reader()
        if db is None:  # not on the loop's thread: the writer thread takes the batch
            return None
        try:
            self._begin(db, batch)
            return self._batch_begun(db, batch)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            # _batch_begun rolled back: nothing of the batch is committed.
            return None

    def _batch_begun(self, db: sqlite3.Connection, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        try:
            results = self._run_jobs(
                batch, functools.partial(run_sqlite, db), functools.partial(self._batch_sqlite, db)
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results  # only after COMMIT (and its fsync) returned

    def _batch_sqlite(self, db: sqlite3.Connection, batch: list[_MarJob]) -> tuple[Any, ...]:
        """SQLite, plain SQL on the writer's sqlite3 connection (no expression building)."""
        if len(batch) == 1 and batch[0].resync_to is None:
            lone = self._lone_mar_sqlite(db, batch[0])
            if lone is not None:
                return lone
        impis = sorted({j.impi for j in batch})
        impus = sorted({j.impu for j in batch})
        rows = db.execute(
            "SELECT impi.identity, impi.auth_schemes, impu.identity FROM impi"
            " LEFT OUTER JOIN impu ON impu.subscription_id = impi.subscription_id"
            f" AND impu.identity IN ({','.join('?' * len(impus))})"
            f" WHERE impi.identity IN ({','.join('?' * len(impis))})",
            (*impus, *impis),
        ).fetchall()
        ok, pairs, steps, groups = self._plan(batch, rows)
        resync_to = batch[0].resync_to  # a resync is always a segment of its own
        granted: dict[str, Any] = {}
        for (n, name), members in groups.items():
            new = _sqn_sql(n, resync_to)
            # The same ceiling as imsaka.aka.sqn.next_sqn, on the value the row would
            # get: no row updated → SQN_EXHAUSTED, SQN unchanged.
            for row in db.execute(
                f"UPDATE impi SET sqn = {new}, pending_scscf = ?"
                f" WHERE identity IN ({','.join('?' * len(members))})"
                f" AND ({new}) >> {IND_BITS} <= {MAX_SEQ}"
                " RETURNING identity, sqn, k, opc, amf, auth_schemes, digest_password",
                (name, *members),
            ).fetchall():
                granted[row[0]] = _GrantRow(*row[1:])
        found = {key: run_sqlite(db, _identities(*key)) for key in self._misses(batch, ok, pairs)}
        return ok, steps, granted, self._checks(batch, ok, pairs, found)

    @staticmethod
    def _lone_mar_sqlite(db: sqlite3.Connection, job: _MarJob) -> tuple[Any, ...] | None:
        """A MAR alone in its segment (the usual case), in one statement: the UPDATE …
        RETURNING of `_batch_sqlite` that also checks what its SELECT would (the IMPU
        belongs to the IMPI's subscription, the scheme is one the IMPI allows). None when
        no row was updated, with nothing written: the general way then tells why."""
        new = _sqn_sql(job.n)
        scheme = ""
        params: tuple[Any, ...] = (job.server_name, job.impi, job.impu)
        if job.scheme is not None:
            if "," in job.scheme:  # no scheme name has one: the general way refuses it
                return None
            # auth_schemes is a comma-joined list of scheme names: one matched whole.
            scheme = " AND instr(',' || auth_schemes || ',', ',' || ? || ',') > 0"
            params += (job.scheme,)
        row = db.execute(
            f"UPDATE impi SET sqn = {new}, pending_scscf = ? WHERE identity = ?"
            f" AND ({new}) >> {IND_BITS} <= {MAX_SEQ}"
            " AND EXISTS (SELECT 1 FROM impu WHERE impu.identity = ?"
            " AND impu.subscription_id = impi.subscription_id)"
            f"{scheme} RETURNING sqn, k, opc, amf, auth_schemes, digest_password",
            params,
        ).fetchone()
        if row is None:
            return None
        return [True], {job.impi: job.n}, {job.impi: _GrantRow(*row)}, {}

    async def _batch_pg(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        """PostgreSQL: the whole batch on the asyncpg connection in one transaction."""
        async with (await self._pg()).acquire() as pg:
            results: list[Any] = []
            async with pg.transaction():
                for part in _segments(batch):
                    if isinstance(part, _WriteJob):
                        try:
                            results.append(await run_pg(pg, part.plan()))
                        except _EXPECTED as exc:
                            results.append(_Failed(exc))
                    else:
                        results.extend(self._hand_out(part, *await self._mar_pg(pg, part)))
            # the transaction committed when the block above ended
        return results

    async def _mar_pg(self, pg: Any, batch: list[_MarJob]) -> tuple[Any, ...]:
        """PostgreSQL, plain SQL on asyncpg. The SELECT locks the IMPI rows FOR UPDATE
        in id order, so two HSS processes lock in the same order and never deadlock on
        them; each UPDATE computes the new SQN from the locked row."""
        impis = sorted({j.impi for j in batch})
        impus = sorted({j.impu for j in batch})
        rows = await pg.fetch(
            "SELECT i.identity, i.auth_schemes, u.identity FROM impi i"
            " LEFT OUTER JOIN impu u ON u.subscription_id = i.subscription_id"
            " AND u.identity = ANY($1::text[])"
            " WHERE i.identity = ANY($2::text[]) ORDER BY i.id FOR UPDATE OF i",
            impus,
            impis,
        )
        ok, pairs, steps, groups = self._plan(batch, [tuple(r) for r in rows])
        resync_to = batch[0].resync_to  # a resync is always a segment of its own
        granted: dict[str, Any] = {}
        for (n, name), members in groups.items():
            new = _sqn_sql(n, resync_to)
            for row in await pg.fetch(
                f"UPDATE impi SET sqn = {new}, pending_scscf = $1"
                " WHERE identity = ANY($2::text[])"
                f" AND ({new}) >> {IND_BITS} <= {MAX_SEQ}"
                " RETURNING identity, sqn, k, opc, amf, auth_schemes, digest_password",
                name,
                members,
            ):
                granted[row[0]] = _GrantRow(*tuple(row)[1:])
        found = {key: await run_pg(pg, _identities(*key)) for key in self._misses(batch, ok, pairs)}
        return ok, steps, granted, self._checks(batch, ok, pairs, found)

    def _batch_sync(self, conn: sa.Connection, batch: list[_MarJob]) -> tuple[Any, ...]:
        """Any backend through SQLAlchemy (used for resync: SQN_HE from SQN_MS)."""
        impis = sorted({j.impi for j in batch})
        impus = sorted({j.impu for j in batch})
        q = (
            sa.select(m.impi.c.identity, m.impi.c.auth_schemes, m.impu.c.identity.label("impu"))
            .select_from(m.impi)
            .outerjoin(
                m.impu,
                sa.and_(
                    m.impu.c.subscription_id == m.impi.c.subscription_id,
                    m.impu.c.identity.in_(impus),
                ),
            )
            .where(m.impi.c.identity.in_(impis))
            .order_by(m.impi.c.id)
        )
        if self.dialect == "postgresql":
            q = q.with_for_update(of=m.impi)
        ok, pairs, steps, groups = self._plan(batch, [tuple(r) for r in conn.execute(q).all()])
        resync_to = batch[0].resync_to if len(batch) == 1 else None
        granted: dict[str, Any] = {}
        for (n, name), members in groups.items():
            new_value = sa.literal_column(_sqn_sql(n, resync_to))
            stmt = (
                sa.update(m.impi)
                .where(
                    m.impi.c.identity.in_(members),
                    # The same ceiling as imsaka.aka.sqn.next_sqn, on the value the
                    # row would get (a resync that keeps SQN_HE near the top can
                    # overflow it too): no row updated → SQN_EXHAUSTED, SQN unchanged.
                    new_value.op(">>")(sa.literal_column(str(IND_BITS)))
                    <= sa.literal_column(str(MAX_SEQ)),
                )
                .values(sqn=new_value, pending_scscf=name)
                .returning(
                    m.impi.c.identity,
                    m.impi.c.sqn,
                    m.impi.c.k,
                    m.impi.c.opc,
                    m.impi.c.amf,
                    m.impi.c.auth_schemes,
                    m.impi.c.digest_password,
                )
            )
            for row in conn.execute(stmt).all():
                granted[row[0]] = _GrantRow(*tuple(row)[1:])
        found = {key: run_sa(conn, _identities(*key)) for key in self._misses(batch, ok, pairs)}
        return ok, steps, granted, self._checks(batch, ok, pairs, found)

    @staticmethod
    def _hand_out(
        batch: list[_MarJob],
        ok: list[bool],
        steps: dict[str, int],
        granted: dict[str, Any],
        checks: dict[tuple[str, str], IdentityCheck],
    ) -> list[MarGrant | IdentityCheck]:
        # Committed: hand each IMPI's new SQN range out to its MARs in queue order.
        results: list[MarGrant | IdentityCheck] = []
        ranges = {i: sqn_sequence(int(granted[i].sqn), n) for i, n in steps.items() if i in granted}
        taken: dict[str, int] = {}
        for job, good in zip(batch, ok, strict=True):
            if not good:
                results.append(checks[(job.impi, job.impu)])
                continue
            if job.impi not in granted:
                results.append(SQN_EXHAUSTED)
                continue
            start = taken.get(job.impi, 0)
            taken[job.impi] = start + job.n
            row = granted[job.impi]
            results.append(
                MarGrant(
                    job.impi,
                    bytes(row.k),
                    bytes(row.opc),
                    bytes(row.amf),
                    tuple(ranges[job.impi][start : start + job.n]),
                    tuple(row.auth_schemes.split(",")),
                    row.digest_password,
                )
            )
        return results
