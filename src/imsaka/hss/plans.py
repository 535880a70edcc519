"""Query plans: the SQL of a store operation written once, run by one of three drivers.

A plan is a generator that yields ``(kind, sql, params)`` steps and receives each
step's result: for `ONE` the first row (or None), for `ALL` the list of rows, for
`RUN` None. It returns the operation's result. The SQL uses ``:name`` parameters and
plain SQL that SQLite and PostgreSQL both accept; rows are read by position only.

- `run_sqlite` drives it on a DB-API ``sqlite3.Connection``: the SQL goes straight to
  the driver's statement cache (no SQLAlchemy compilation, no thread hand-off).
- `run_sa` drives it on a synchronous SQLAlchemy ``Connection`` (PostgreSQL batches,
  SQLite in memory, provisioning transactions).
- `run_pg` drives it on an asyncpg connection (``:name`` becomes ``$n`` once per SQL).

The caller owns the transaction; a plan never commits.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable, Generator
from typing import Any

import sqlalchemy as sa

__all__ = ["ALL", "ONE", "RUN", "Plan", "run_pg", "run_sa", "run_sqlite", "run_sqlite_alone"]

ONE, ALL, RUN = 0, 1, 2
Plan = Generator[tuple[int, str, dict[str, Any]], Any, Any]

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def _drive(plan: Plan, step: Callable[[int, str, dict[str, Any]], Any]) -> Any:
    result: Any = None
    try:
        while True:
            result = step(*plan.send(result))
    except StopIteration as stop:
        return stop.value


def _sqlite_step(db: sqlite3.Connection, kind: int, sql: str, params: dict[str, Any]) -> Any:
    # The cursor goes when this returns (its statement is reset then).
    cur = db.execute(sql, params)
    return cur.fetchone() if kind == ONE else cur.fetchall() if kind == ALL else None


def run_sqlite(db: sqlite3.Connection, plan: Plan) -> Any:
    return _drive(plan, functools.partial(_sqlite_step, db))


def run_sqlite_alone(db: sqlite3.Connection, plan: Plan) -> tuple[bool, Any]:
    """The plan's first statement on its own (outside any transaction SQLite reads it
    from one snapshot): ``(True, result)`` if the plan ends there, else ``(False,
    None)`` with the plan closed, and the caller runs it again in one transaction."""
    kind, sql, params = next(plan)
    try:
        plan.send(_sqlite_step(db, kind, sql, params))
    except StopIteration as stop:
        return True, stop.value
    plan.close()
    return False, None


@functools.lru_cache(maxsize=512)
def _text(sql: str) -> sa.TextClause:
    return sa.text(sql)


def _sa_step(conn: sa.Connection, kind: int, sql: str, params: dict[str, Any]) -> Any:
    res = conn.execute(_text(sql), params)
    return res.first() if kind == ONE else res.all() if kind == ALL else None


def run_sa(conn: sa.Connection, plan: Plan) -> Any:
    return _drive(plan, functools.partial(_sa_step, conn))


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters → asyncpg's ``$n`` (a repeated name keeps its number)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, sql), tuple(names)


async def run_pg(pg: Any, plan: Plan) -> Any:
    result: Any = None
    try:
        while True:
            kind, sql, params = plan.send(result)
            text, names = _numbered(sql)
            args = [params[n] for n in names]
            if kind == ONE:
                result = await pg.fetchrow(text, *args)
            elif kind == ALL:
                result = await pg.fetch(text, *args)
            else:
                await pg.execute(text, *args)
                result = None
    except StopIteration as stop:
        return stop.value
