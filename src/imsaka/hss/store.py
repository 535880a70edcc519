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
- The UPDATE is committed before any vector leaves the HSS: a crash (kill -9)
  after the MAR can skip SQNs forward but never hand one out again.
- Group commit: every write a registration makes (MAR: SQNs and the pending
  S-CSCF; SIP Digest MAR: the pending S-CSCF; SAR: registration state and the
  assigned S-CSCF, or the pending one cleared) goes through one queue. Whatever
  queued up while the previous transaction was committing shares the next one, in
  arrival order: one BEGIN … COMMIT, one fsync. No caller gets its result (so no
  answer leaves) before that COMMIT returned. UAR and LIR only read.
- Reads (SQLite file): on reader threads in deferred transactions, i.e. WAL
  snapshots that never wait for the writer's lock; the writer keeps
  ``BEGIN IMMEDIATE`` and ``synchronous=FULL``.
- Resync (TS 33.102 §6.3.5, `imsaka.aka.sqn.resync_sqn_he`): SQN_HE stays when
  its next SEQ is above SEQ_MS by at most Δ, else it restarts from SQN_MS; the
  new vectors are taken in the same single statement. The caller verifies MAC-S
  before asking (`imsaka.aka.resync.recover_sqn_ms`); a bad MAC-S never reaches here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from imsaka.aka.sqn import DEFAULT_DELTA, SqnExhaustedError
from imsaka.hss import models as m
from imsaka.hss.models import RegState
from imsaka.hss.subscriber import FieldError, SubscriberSpec
from imsaka.hss.userdata import ProfileIdentities, build_user_data

__all__ = [
    "IND_BITS",
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


def _sqn_advance_expr(col: Any, n: int) -> Any:
    # Pure SQL arithmetic on the locked row, the same as sqn_step(); n is an int we
    # built (never user text), rendered inline so PostgreSQL types it as bigint.
    steps = sa.literal_column(str(int(n)))
    ind_bits = sa.literal_column(str(IND_BITS))
    mask = sa.literal_column(str(IND_MASK))
    seq = col.op(">>")(ind_bits) + steps
    ind = (col.op("&")(mask) + steps).op("&")(mask)
    return seq.op("<<")(ind_bits).op("|")(ind)


def _sqn_resync_expr(col: Any, sqn_ms: int, n: int, delta: int = DEFAULT_DELTA) -> Any:
    # imsaka.aka.sqn.resync_sqn_he in SQL, on the locked row: SQN_HE stays when its
    # next SEQ is above SEQ_MS by at most Δ, else it restarts from SQN_MS; then the n
    # vectors of this MAR are taken. One statement, so no concurrent MAR slips between.
    ind_bits = sa.literal_column(str(IND_BITS))
    seq_ms = sa.literal_column(str(int(sqn_ms) >> IND_BITS))
    seq_he_next = col.op(">>")(ind_bits) + sa.literal_column("1")
    keep = sa.and_(seq_ms < seq_he_next, seq_he_next <= seq_ms + sa.literal_column(str(int(delta))))
    return sa.case(
        (keep, _sqn_advance_expr(col, n)), else_=sa.literal_column(str(sqn_step(sqn_ms, n)))
    )


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


def _sqlite_events(engine: sa.Engine, *, immediate: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _rec: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a committed SQN survives
        # a power cut as well as a kill -9.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # Writers: IMMEDIATE takes the write lock at BEGIN, so a transaction that
        # reads then writes can never fail half-way with SQLITE_BUSY on lock upgrade.
        # Readers: a deferred BEGIN takes a WAL snapshot at the first SELECT and never
        # waits for the writer (an IMMEDIATE read would queue behind every commit).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


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
    return tuple(int(x) for x in text.split(",") if x.strip())


# --------------------------------------------------------------------------- group commit


@dataclass(slots=True)
class _MarJob:
    impi: str
    impu: str
    n: int
    server_name: str | None
    resync_to: int | None
    scheme: str | None
    future: asyncio.Future


@dataclass(slots=True)
class _WriteJob:
    """A registration-state write (SAR assignment, pending S-CSCF) for the group commit.

    ``fn`` runs on a synchronous Connection inside the batch's transaction; it raises
    `NotFound` only before it has written anything, so the batch can go on."""

    fn: Callable[[sa.Connection], Any]
    future: asyncio.Future


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


# --------------------------------------------------------------------------- store


class HssStore:
    """Async access to the HSS database. Create with `await HssStore.open(url)`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sync_engine: sa.Engine | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        database = engine.url.database
        if self.dialect == "sqlite" and database and database != ":memory:":
            self._sync_engine = sa.create_engine(
                engine.url.set(drivername="sqlite"), connect_args={"timeout": 30}
            )
            _sqlite_events(self._sync_engine)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="hss-sqlite"
            )
        # Cx reads: on a SQLite file they run on reader threads with deferred
        # transactions (WAL snapshots) that never wait for the writer's lock.
        self._reader = engine
        self._read_sync: sa.Engine | None = None
        self._read_executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self._sync_engine is not None:
            self._read_sync = sa.create_engine(
                engine.url.set(drivername="sqlite"), connect_args={"timeout": 30}
            )
            _sqlite_events(self._read_sync, immediate=False)
            self._read_executor = concurrent.futures.ThreadPoolExecutor(
                2, thread_name_prefix="hss-sqlite-read"
            )
        self._queue: list[_MarJob | _WriteJob] = []
        self._inflight: list[_MarJob | _WriteJob] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.max_batch = 256
        self.batches = 0  # number of group commits (for benchmarks and tests)

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
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self._read_executor is not None:
            self._read_executor.shutdown(wait=True)
            self._read_executor = None
        if self._read_sync is not None:
            self._read_sync.dispose()
            self._read_sync = None
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
        return await self._read(self._view, impi)

    def _view(self, conn: sa.Connection, impi: str) -> SubscriberView:
        row = (
            conn.execute(
                sa.select(
                    m.impi.c.identity,
                    m.impi.c.op_kind,
                    m.impi.c.amf,
                    m.impi.c.sqn,
                    m.impi.c.algorithm,
                    m.impi.c.auth_schemes,
                    m.impi.c.digest_password.isnot(None),
                    m.impi.c.pending_scscf,
                    m.impi.c.subscription_id,
                    m.subscription.c.scscf_name,
                    m.subscription.c.scscf_host,
                    m.subscription.c.mandatory_caps,
                    m.subscription.c.optional_caps,
                )
                .join(m.subscription, m.subscription.c.id == m.impi.c.subscription_id)
                .where(m.impi.c.identity == impi)
            )
        ).first()
        if row is None:
            raise NotFound(impi)
        sid = row.subscription_id
        impus = (
            conn.execute(
                sa.select(m.impu).where(m.impu.c.subscription_id == sid).order_by(m.impu.c.id)
            )
        ).all()
        nets = _of_subscription(conn, m.visited_network.c.network, sid)
        ifc = (
            conn.execute(
                sa.select(m.service_profile.c.ifc_xml)
                .where(m.service_profile.c.subscription_id == sid)
                .order_by(m.service_profile.c.id)
                .limit(1)
            )
        ).scalar()
        return SubscriberView(
            impi=row.identity,
            op_kind=row.op_kind,
            amf=row.amf.hex(),
            sqn=row.sqn,
            algorithm=row.algorithm,
            schemes=tuple(row.auth_schemes.split(",")),
            has_digest_password=bool(row[6]),
            impus=tuple(
                ImpuView(
                    u.identity,
                    bool(u.barred),
                    RegState(u.reg_state),
                    u.implicit_set_id,
                    u.service_profile_id,
                )
                for u in impus
            ),
            scscf_name=row.scscf_name,
            scscf_host=row.scscf_host,
            pending_scscf=row.pending_scscf,
            visited_networks=tuple(nets),
            ifc_xml=ifc,
            mandatory_capabilities=_caps(row.mandatory_caps),
            optional_capabilities=_caps(row.optional_caps),
        )

    async def delete_subscriber(self, impi: str) -> ServingInfo:
        """Delete the IMPI; its subscription (IMPUs, profiles) goes with its last IMPI.

        Returns where the subscriber was served, so the caller can send an RTR.
        """
        async with self.engine.begin() as conn:
            info = await conn.run_sync(self._serving_by_impi, impi)
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

    def _serving_by_impi(self, conn: sa.Connection, impi: str) -> ServingInfo:
        row = (
            conn.execute(sa.select(m.impi.c.subscription_id).where(m.impi.c.identity == impi))
        ).first()
        if row is None:
            raise NotFound(impi)
        return self._serving(conn, row[0])

    def _serving(self, conn: sa.Connection, sid: int) -> ServingInfo:
        sub = (conn.execute(sa.select(m.subscription).where(m.subscription.c.id == sid))).one()
        impis = _of_subscription(conn, m.impi.c.identity, sid)
        impus = _of_subscription(conn, m.impu.c.identity, sid)
        return ServingInfo(
            sid, tuple(impis), tuple(impus), sub.scscf_name, sub.scscf_host, sub.scscf_realm
        )

    async def serving_for_impu(self, impu: str) -> ServingInfo:
        return await self._read(self._serving_by_impu, impu)

    def _serving_by_impu(self, conn: sa.Connection, impu: str) -> ServingInfo:
        row = conn.execute(
            sa.select(m.impu.c.subscription_id).where(m.impu.c.identity == impu)
        ).first()
        if row is None:
            raise NotFound(impu)
        return self._serving(conn, row[0])

    async def serving_for_impi(self, impi: str) -> ServingInfo:
        return await self._read(self._serving_by_impi, impi)

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
            info = await conn.run_sync(self._serving_by_impi, impi)
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
            info = await conn.run_sync(self._serving_by_impi, impi)
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
                info = await conn.run_sync(self._serving_by_impi, existing_impi)
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
        return await self._read(self._scscf_pool)

    @staticmethod
    def _scscf_pool(conn: sa.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(sa.select(m.scscf).order_by(m.scscf.c.id)).all()
        return [
            {
                "name": r.name,
                "diameter_host": r.diameter_host,
                "mandatory_capabilities": _caps(r.mandatory_caps),
                "optional_capabilities": _caps(r.optional_caps),
            }
            for r in rows
        ]

    async def scscf_host_for(self, server_name: str) -> str | None:
        def host(conn: sa.Connection) -> str | None:
            return conn.execute(
                sa.select(m.scscf.c.diameter_host).where(m.scscf.c.name == server_name)
            ).scalar()

        return await self._read(host)

    async def count_subscribers(self) -> int:
        def count(conn: sa.Connection) -> int:
            return conn.execute(sa.select(sa.func.count()).select_from(m.impi)).scalar_one()

        return await self._read(count)

    # ------------------------------------------------------------------ Cx reads

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the synchronous read ``fn(conn, *args)`` in one read-only transaction.

        SQLite file: on a reader thread with a deferred BEGIN (a WAL snapshot, never
        waiting for the writer), one thread hop for the whole read instead of one per
        statement. Otherwise on the async engine through ``run_sync``."""
        if self._read_sync is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_executor, self._read_in_thread, fn, args)
        async with self._reader.connect() as conn:
            return await conn.run_sync(fn, *args)

    def _read_in_thread(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        assert self._read_sync is not None
        with self._read_sync.connect() as conn:
            return fn(conn, *args)

    async def check_identities(self, impi: str | None, impu: str) -> IdentityCheck:
        return await self._read(self._check_identities_sync, impi, impu)

    @staticmethod
    def _check_identities_sync(conn: sa.Connection, impi: str | None, impu: str) -> IdentityCheck:
        u = conn.execute(
            sa.select(m.impu.c.subscription_id).where(m.impu.c.identity == impu)
        ).first()
        i = None
        if impi is not None:
            i = conn.execute(
                sa.select(m.impi.c.subscription_id).where(m.impi.c.identity == impi)
            ).first()
        return IdentityCheck(
            i is not None, u is not None, i is not None and u is not None and i[0] == u[0]
        )

    async def user_state(self, impu: str, impi: str | None = None) -> UserState:
        """State of ``impu``; with ``impi`` also that IMPI's pending S-CSCF (from MAR)."""
        return await self._read(self._user_state, impu, impi)

    async def checked_state(
        self, impi: str | None, impu: str, *, with_pending: bool = False
    ) -> tuple[IdentityCheck, UserState | None]:
        """UAR/SAR in one read: the identity check and, when ``impu`` exists, its state
        (with ``with_pending`` also the pending S-CSCF of ``impi``)."""
        return await self._read(self._checked_state, impi, impu, with_pending)

    def _checked_state(
        self, conn: sa.Connection, impi: str | None, impu: str, with_pending: bool
    ) -> tuple[IdentityCheck, UserState | None]:
        # One joined SELECT (IMPU, its subscription, the IMPI) instead of five: every
        # UAR and SAR runs it, so its statements are most of the HSS's read work.
        row = conn.execute(
            sa.select(
                m.impu.c.subscription_id,
                m.impu.c.identity,
                m.impu.c.barred,
                m.impu.c.reg_state,
                m.impu.c.implicit_set_id,
                m.subscription.c.scscf_name,
                m.subscription.c.scscf_host,
                m.subscription.c.mandatory_caps,
                m.subscription.c.optional_caps,
                m.impi.c.subscription_id.label("impi_subscription_id"),
                m.impi.c.pending_scscf,
            )
            .select_from(
                m.impu.join(m.subscription, m.subscription.c.id == m.impu.c.subscription_id)
                # "" never names an IMPI (validated identities are never empty).
                .outerjoin(m.impi, m.impi.c.identity == (impi or ""))
            )
            .where(m.impu.c.identity == impu)
        ).first()
        if row is None:
            return self._check_identities_sync(conn, impi, impu), None
        impi_sid = row.impi_subscription_id
        check = IdentityCheck(
            impi_sid is not None, True, impi_sid is not None and impi_sid == row.subscription_id
        )
        nets = (
            conn.execute(
                sa.select(m.visited_network.c.network).where(
                    m.visited_network.c.subscription_id == row.subscription_id
                )
            )
            .scalars()
            .all()
        )
        return check, UserState(
            subscription_id=row.subscription_id,
            impu=row.identity,
            barred=bool(row.barred),
            reg_state=RegState(row.reg_state),
            implicit_set_id=row.implicit_set_id,
            scscf_name=row.scscf_name,
            scscf_host=row.scscf_host,
            pending_scscf=row.pending_scscf if with_pending and impi else None,
            mandatory_caps=_caps(row.mandatory_caps),
            optional_caps=_caps(row.optional_caps),
            visited_networks=tuple(nets),
        )

    def _user_state(self, conn: sa.Connection, impu: str, impi: str | None = None) -> UserState:
        row = (
            conn.execute(
                sa.select(
                    m.impu.c.subscription_id,
                    m.impu.c.identity,
                    m.impu.c.barred,
                    m.impu.c.reg_state,
                    m.impu.c.implicit_set_id,
                    m.subscription.c.scscf_name,
                    m.subscription.c.scscf_host,
                    m.subscription.c.mandatory_caps,
                    m.subscription.c.optional_caps,
                )
                .join(m.subscription, m.subscription.c.id == m.impu.c.subscription_id)
                .where(m.impu.c.identity == impu)
            )
        ).first()
        if row is None:
            raise NotFound(impu)
        nets = (
            (
                conn.execute(
                    sa.select(m.visited_network.c.network).where(
                        m.visited_network.c.subscription_id == row.subscription_id
                    )
                )
            )
            .scalars()
            .all()
        )
        pending = None
        if impi is not None:
            pending = (
                conn.execute(sa.select(m.impi.c.pending_scscf).where(m.impi.c.identity == impi))
            ).scalar()
        return UserState(
            subscription_id=row.subscription_id,
            impu=row.identity,
            barred=bool(row.barred),
            reg_state=RegState(row.reg_state),
            implicit_set_id=row.implicit_set_id,
            scscf_name=row.scscf_name,
            scscf_host=row.scscf_host,
            pending_scscf=pending,
            mandatory_caps=_caps(row.mandatory_caps),
            optional_caps=_caps(row.optional_caps),
            visited_networks=tuple(nets),
        )

    async def user_data(self, impi: str | None, impu: str) -> tuple[bytes, tuple[str, ...]]:
        """(User-Data XML, the implicit set of ``impu``) for an SAA (TS 29.228 §6.1.2, §6.5)."""
        return await self._read(self._user_data, impi, impu)

    def _user_data(
        self, conn: sa.Connection, impi: str | None, impu: str
    ) -> tuple[bytes, tuple[str, ...]]:
        row = (
            conn.execute(
                sa.select(m.impu.c.subscription_id, m.impu.c.implicit_set_id).where(
                    m.impu.c.identity == impu
                )
            )
        ).first()
        if row is None:
            raise NotFound(impu)
        sid, set_id = row
        if impi is None:
            impi = (
                conn.execute(
                    sa.select(m.impi.c.identity)
                    .where(m.impi.c.subscription_id == sid)
                    .order_by(m.impi.c.id)
                    .limit(1)
                )
            ).scalar()
        members = (
            conn.execute(
                sa.select(m.impu.c.identity, m.impu.c.barred, m.impu.c.service_profile_id)
                .where(m.impu.c.implicit_set_id == set_id)
                .order_by(m.impu.c.id)
            )
        ).all()
        profiles = (
            conn.execute(
                sa.select(m.service_profile.c.id, m.service_profile.c.ifc_xml)
                .where(m.service_profile.c.subscription_id == sid)
                .order_by(m.service_profile.c.id)
            )
        ).all()
        # The registering IMPU first: it must appear byte-exact (Kamailio looks it up).
        ordered = sorted(members, key=lambda r: r.identity != impu)
        docs = [
            ProfileIdentities(
                [(r.identity, bool(r.barred)) for r in ordered if r.service_profile_id == p.id],
                p.ifc_xml,
            )
            for p in profiles
        ]
        docs.sort(key=lambda d: not any(uri == impu for uri, _ in d.identities))
        return build_user_data(impi or "", docs), tuple(r.identity for r in ordered)

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
    ) -> tuple[str, ...]:
        """Set the registration state of the implicit set of ``impu`` and the serving S-CSCF.

        With ``keep_server`` False the stored S-CSCF name is cleared (de-registration
        types that do not keep the name, TS 29.228 §6.1.2.1). Returns the implicit set.
        Group-committed with concurrent writes; returns after the COMMIT.
        """
        return await self._write(
            self._assign_sync,
            impu,
            state=state,
            server_name=server_name,
            server_host=server_host,
            server_realm=server_realm,
            keep_server=keep_server,
            impi=impi,
        )

    @staticmethod
    def _assign_sync(
        conn: sa.Connection,
        impu: str,
        *,
        state: RegState,
        server_name: str | None,
        server_host: str | None,
        server_realm: str | None,
        keep_server: bool,
        impi: str | None,
    ) -> tuple[str, ...]:
        row = conn.execute(
            sa.select(m.impu.c.subscription_id, m.impu.c.implicit_set_id).where(
                m.impu.c.identity == impu
            )
        ).first()
        if row is None:
            raise NotFound(impu)  # nothing written yet: the batch goes on
        sid, set_id = row
        conn.execute(
            sa.update(m.impu).where(m.impu.c.implicit_set_id == set_id).values(reg_state=int(state))
        )
        if state == RegState.NOT_REGISTERED:
            # The S-CSCF stays assigned while any other implicit set of the
            # subscription is still registered or unregistered-served.
            others = conn.execute(
                sa.select(sa.func.count()).where(
                    m.impu.c.subscription_id == sid,
                    m.impu.c.reg_state != int(RegState.NOT_REGISTERED),
                )
            ).scalar_one()
            if not keep_server and others == 0:
                conn.execute(
                    sa.update(m.subscription)
                    .where(m.subscription.c.id == sid)
                    .values(scscf_name=None, scscf_host=None, scscf_realm=None)
                )
                conn.execute(
                    sa.update(m.impi)
                    .where(m.impi.c.subscription_id == sid)
                    .values(pending_scscf=None)
                )
        else:
            conn.execute(
                sa.update(m.subscription)
                .where(m.subscription.c.id == sid)
                .values(scscf_name=server_name, scscf_host=server_host, scscf_realm=server_realm)
            )
            if impi is not None:
                conn.execute(
                    sa.update(m.impi).where(m.impi.c.identity == impi).values(pending_scscf=None)
                )
        members = (
            conn.execute(
                sa.select(m.impu.c.identity)
                .where(m.impu.c.implicit_set_id == set_id)
                .order_by(m.impu.c.id)
            )
            .scalars()
            .all()
        )
        return tuple(members)

    async def clear_pending(self, impi: str) -> None:
        """Forget the pending S-CSCF of ``impi`` (group-committed)."""
        await self._write(self._clear_pending_sync, impi)

    @staticmethod
    def _clear_pending_sync(conn: sa.Connection, impi: str) -> None:
        conn.execute(sa.update(m.impi).where(m.impi.c.identity == impi).values(pending_scscf=None))

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
        return await self._write(self._digest_sync, impi, server_name)

    @staticmethod
    def _digest_sync(
        conn: sa.Connection, impi: str, server_name: str | None
    ) -> tuple[tuple[str, ...], str | None]:
        row = conn.execute(
            sa.update(m.impi)
            .where(m.impi.c.identity == impi)
            .values(pending_scscf=server_name)
            .returning(m.impi.c.auth_schemes, m.impi.c.digest_password)
        ).first()
        if row is None:
            raise NotFound(impi)  # no row matched: nothing written
        return tuple(row.auth_schemes.split(",")), row.digest_password

    async def sqn_of(self, impi: str) -> int:
        def sqn(conn: sa.Connection) -> int | None:
            return conn.execute(sa.select(m.impi.c.sqn).where(m.impi.c.identity == impi)).scalar()

        value = await self._read(sqn)
        if value is None:
            raise NotFound(impi)
        return int(value)

    async def credentials(self, impi: str) -> tuple[bytes, bytes, bytes]:
        """(K, OPc, AMF) for resync verification; never leaves the HSS."""

        def creds(conn: sa.Connection) -> Any:
            return conn.execute(
                sa.select(m.impi.c.k, m.impi.c.opc, m.impi.c.amf).where(m.impi.c.identity == impi)
            ).first()

        row = await self._read(creds)
        if row is None:
            raise NotFound(impi)
        return bytes(row.k), bytes(row.opc), bytes(row.amf)

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
                    .values(sqn=_sqn_advance_expr(m.impi.c.sqn, n))
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
        return await self._submit(job)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the synchronous write ``fn(conn, *args, **kwargs)`` in the next group commit."""

        def run(conn: sa.Connection) -> Any:
            return fn(conn, *args, **kwargs)

        job = _WriteJob(run, asyncio.get_running_loop().create_future())
        return await self._submit(job)

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
            except DBAPIError as exc:
                # PostgreSQL deadlock / serialization failure between two HSS
                # processes: nothing was committed, so simply run the batch again.
                orig = getattr(exc, "orig", None)
                code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
                if code in ("40P01", "40001") and attempt < 4:
                    continue
                raise
        raise RuntimeError("unreachable")

    async def _batch_once(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        self.batches += 1
        if self._sync_engine is not None:
            # SQLite file: the whole transaction (BEGIN IMMEDIATE … COMMIT with its
            # fsync) runs on one dedicated thread, one hop per batch instead of one
            # per statement; the event loop keeps decoding and answering meanwhile.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._batch_in_thread, batch)
        if self.dialect == "postgresql" and all(
            isinstance(j, _MarJob) and j.resync_to is None for j in batch
        ):
            return await self._batch_pg(batch)  # type: ignore[arg-type]
        async with self.engine.begin() as conn:
            return await conn.run_sync(self._run_jobs, batch, self._batch_sync)

    def _run_jobs(
        self,
        conn: sa.Connection,
        batch: list[_MarJob | _WriteJob],
        mar_segment: Callable[[sa.Connection, list[_MarJob]], tuple[Any, ...]],
    ) -> list[Any]:
        """Run a batch in arrival order inside the caller's transaction.

        Consecutive SQN allocations form one segment (one SELECT, one UPDATE per
        group); a resync is a segment of its own (SQN_HE from SQN_MS); every other
        write runs where it arrived, so a later write sees the earlier ones."""
        results: list[Any] = []
        i = 0
        while i < len(batch):
            job = batch[i]
            if isinstance(job, _WriteJob):
                try:
                    results.append(job.fn(conn))
                except _EXPECTED as exc:
                    results.append(_Failed(exc))
                i += 1
                continue
            j = i + 1
            if job.resync_to is None:
                while j < len(batch):
                    nxt = batch[j]
                    if not isinstance(nxt, _MarJob) or nxt.resync_to is not None:
                        break
                    j += 1
            segment: list[_MarJob] = batch[i:j]  # type: ignore[assignment]
            run = self._batch_sync if job.resync_to is not None else mar_segment
            results.extend(self._hand_out(segment, *run(conn, segment)))
            i = j
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
                checks[key] = IdentityCheck(True, True, True)
        return checks

    def _batch_in_thread(self, batch: list[_MarJob | _WriteJob]) -> list[Any]:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            results = self._run_jobs(conn, batch, self._batch_sqlite)
        return results  # only after COMMIT (and its fsync) returned

    def _batch_sqlite(self, conn: sa.Connection, batch: list[_MarJob]) -> tuple[Any, ...]:
        """SQLite, plain SQL on the driver cursor (no expression building per batch)."""
        impis = sorted({j.impi for j in batch})
        impus = sorted({j.impu for j in batch})
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(
                "SELECT impi.identity, impi.auth_schemes, impu.identity FROM impi"
                " LEFT OUTER JOIN impu ON impu.subscription_id = impi.subscription_id"
                f" AND impu.identity IN ({','.join('?' * len(impus))})"
                f" WHERE impi.identity IN ({','.join('?' * len(impis))})",
                (*impus, *impis),
            )
            ok, pairs, steps, groups = self._plan(batch, cur.fetchall())
            granted: dict[str, Any] = {}
            for (n, name), members in groups.items():
                cur.execute(
                    f"UPDATE impi SET sqn = (((sqn >> {IND_BITS}) + ?) << {IND_BITS})"
                    f" | (((sqn & {IND_MASK}) + ?) & {IND_MASK}), pending_scscf = ?"
                    f" WHERE identity IN ({','.join('?' * len(members))})"
                    f" AND (sqn >> {IND_BITS}) + ? <= {MAX_SEQ}"
                    " RETURNING identity, sqn, k, opc, amf, auth_schemes, digest_password",
                    (int(n), int(n), name, *members, int(n)),
                )
                for row in cur.fetchall():
                    granted[row[0]] = _GrantRow(*row[1:])
            found = {
                key: self._check_identities_sync(conn, *key)
                for key in self._misses(batch, ok, pairs)
            }
        finally:
            cur.close()
        return ok, steps, granted, self._checks(batch, ok, pairs, found)

    async def _batch_pg(self, batch: list[_MarJob]) -> list[MarGrant | IdentityCheck]:
        """PostgreSQL, plain SQL on the asyncpg connection in one explicit transaction.

        The SELECT locks the IMPI rows FOR UPDATE in id order, so two HSS processes
        lock in the same order and never deadlock; each UPDATE computes the new SQN
        from the locked row.
        """
        impis = sorted({j.impi for j in batch})
        impus = sorted({j.impu for j in batch})
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            async with pg.transaction():
                rows = await pg.fetch(
                    "SELECT i.identity, i.auth_schemes, u.identity FROM impi i"
                    " LEFT OUTER JOIN impu u ON u.subscription_id = i.subscription_id"
                    " AND u.identity = ANY($1::text[])"
                    " WHERE i.identity = ANY($2::text[]) ORDER BY i.id FOR UPDATE OF i",
                    impus,
                    impis,
                )
                ok, pairs, steps, groups = self._plan(batch, [tuple(r) for r in rows])
                granted: dict[str, Any] = {}
                for (n, name), members in groups.items():
                    for row in await pg.fetch(
                        f"UPDATE impi SET sqn = (((sqn >> {IND_BITS}) + $1::bigint) << {IND_BITS})"
                        f" | (((sqn & {IND_MASK}) + $1::bigint) & {IND_MASK}), pending_scscf = $2"
                        " WHERE identity = ANY($3::text[])"
                        f" AND (sqn >> {IND_BITS}) + $1::bigint <= {MAX_SEQ}"
                        " RETURNING identity, sqn, k, opc, amf, auth_schemes, digest_password",
                        int(n),
                        name,
                        members,
                    ):
                        granted[row[0]] = _GrantRow(*tuple(row)[1:])
                found: dict[tuple[str, str], IdentityCheck] = {}
                for impi, impu in self._misses(batch, ok, pairs):
                    u = await pg.fetchval(
                        "SELECT subscription_id FROM impu WHERE identity = $1", impu
                    )
                    i = await pg.fetchval(
                        "SELECT subscription_id FROM impi WHERE identity = $1", impi
                    )
                    found[(impi, impu)] = IdentityCheck(
                        i is not None, u is not None, i is not None and i == u
                    )
            # the transaction committed when the block above ended
        return self._hand_out(batch, ok, steps, granted, self._checks(batch, ok, pairs, found))

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
            if resync_to is not None:
                new_value = _sqn_resync_expr(m.impi.c.sqn, resync_to, n)
            else:
                new_value = _sqn_advance_expr(m.impi.c.sqn, n)
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
        found = {
            key: self._check_identities_sync(conn, *key) for key in self._misses(batch, ok, pairs)
        }
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


def _of_subscription(conn: sa.Connection, column: sa.Column, sid: int) -> list[Any]:
    """`column` of every row of its table that belongs to subscription `sid`, oldest first."""
    t = column.table
    query = sa.select(column).where(t.c.subscription_id == sid).order_by(t.c.id)
    return list(conn.execute(query).scalars())
