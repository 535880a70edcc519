"""The P-CSCF edge's part in keeping its UEs across a restart: the file a stop asked
for writes (``[pcscf].state_file``) and the Redis store it writes as it runs
(``[pcscf].state_store``), both read back at the next start.

What is written and how it is read is `imsaka.cscf.pcscf_state` (sans-I/O); Redis is
`imsaka.cscf.pcscf_store`. Here: when to write, where from (the core's registrations,
the server's SA sets), and how a record taken back is put in place (the SA table's
sets, the reply index, `PcscfCore.adopt`). A mixin of `PcscfServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from imsaka.cscf import pcscf_state
from imsaka.cscf.pcscf import HELD, TRANSACTION_LIFETIME
from imsaka.ipsec.errors import LocalProtocolError

log = logging.getLogger("imsaka.cscf.pcscf_server")

__all__ = ["KeepsState"]


def _age(doc: object, wall: float) -> float:
    """Seconds since the state document `doc` was written (0 when it does not say)."""
    saved_at = doc.get("saved_at") if isinstance(doc, dict) else None
    return wall - saved_at if isinstance(saved_at, (int, float)) else 0.0


@contextlib.contextmanager
def _bulk():
    """No cyclic collection while a whole document is built or read: its many young
    objects (a few hundred thousand for 10,000 UEs) would set off collections that each
    walk the heap of every registration, for nothing (they are all kept)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class KeepsState:
    """`PcscfServer`'s restarts. Needs its `config`, `core`, `table`, `backend`, `udp`,
    `_sets`, `_index`, `_key_of` and `_execute`."""

    config: Any
    core: Any
    table: Any
    backend: Any
    udp: Any
    _sets: dict
    restored: int

    def _keep_init(self) -> None:
        # `drain()` was called: the stop is one asked for (the file gets written, the
        # store's last write is marked clean)
        self._handoff = False
        self.restored = 0  # registrations taken back at start
        self._store: Any = None
        self._store_task: asyncio.Task | None = None
        # the keys of the records the store holds (IMPIs, held sets' keys); the keys of
        # those that may have changed since the last pass (`PcscfCore.track_changes`)
        self._stored: set[str] = set()
        self._changed: set[str] = set()
        self._store_failing = False
        # the store could not be read at the start: what it holds is unknown, so the
        # first write replaces all of it
        self._store_unread = False

    def _own(self) -> dict[str, Any]:
        return {
            "address": self.config.address,
            "port": self.udp.local_address[1],
            "port_c": self.core.port_c,
            "port_s": self.core.port_s,
        }

    # ------------------------------------------------------------- the file

    def _hand_off(self, path: Path) -> None:
        """Write what the next P-CSCF takes back: readable by the owner only, whole or
        not at all (a temporary file renamed over it)."""
        now = asyncio.get_running_loop().time()
        with _bulk():
            doc = pcscf_state.dump(
                self.core, self._sets, own=self._own(), now=now, wall=time.time()
            )
            data = json.dumps(doc, separators=(",", ":")).encode()
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            log.error("pcscf: state not written to %s: %s", path, exc.strerror or exc)
            return
        log.info(
            "pcscf: %d registrations written to %s for the next start",
            len(doc["registrations"]),
            path,
        )

    def _take_back(self, path: Path) -> None:
        """Read the state a P-CSCF before this one wrote, and delete it (it is good
        once: its sequence numbers move from here on). One that cannot be used is
        kept beside it as ``….rejected`` and the P-CSCF starts without it."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("pcscf: state file %s not read: %s", path, exc.strerror or exc)
            return
        now = asyncio.get_running_loop().time()
        wall = time.time()
        try:
            with _bulk():
                doc = json.loads(data)
                restored = pcscf_state.load(doc, own=self._own(), now=now, wall=wall)
        except (ValueError, pcscf_state.StateError) as exc:
            log.error("pcscf: state file %s not used: %s", path, str(exc).splitlines()[0])
            try:
                os.replace(path, path.with_name(path.name + ".rejected"))
            except OSError:
                pass
            return
        try:
            path.unlink()
        except OSError as exc:
            log.error("pcscf: state file %s not deleted: %s", path, exc.strerror or exc)
        # Stopped longer than the S-CSCFs retransmit a NOTIFY: what they told
        # meanwhile was lost, and each registration's subscription is refreshed to
        # learn it (`PcscfCore.adopt`).
        with _bulk():
            self._adopt_all(restored, now, str(path), audit=_age(doc, wall) > TRANSACTION_LIFETIME)

    def _adopt_all(self, restored: list, now: float, source: str, audit: bool = False) -> None:
        """Put each registration taken back in place: its SA sets in the table and the
        reply index, the registration in the core (whose SUBSCRIBEs go out); and each
        set held for a REGISTER's retransmissions (its hold out of the reply index).
        `audit`: what was written may be out of date (a crash, a long stop): each
        registration's subscription is refreshed (`PcscfCore.adopt`)."""
        sets = 0
        actions: list = []
        for r in restored:
            if isinstance(r, pcscf_state.RestoredHold):
                rs = r.set
                try:
                    # a table contact of its own: it is no UE's current set, and none
                    # restored after it supersedes it
                    s = self._restore_set(
                        ("held", rs.sa.impi, rs.sa.spi_ps),
                        rs,
                        now,
                        established=True,
                        expires_at=max(rs.expires_at, r.release_at + 1.0),
                    )
                except (LocalProtocolError, ValueError) as exc:  # (an SPI out of range)
                    log.warning("pcscf: held set of %s not taken back: %s", rs.sa.impi, exc)
                    continue
                self._in_place(s)
                actions += self.core.adopt_held(rs.sa, r.branch, r.release_at, r.reason, r.final)
                self.core.counters["held-sets-taken-back"] += 1
                sets += 1
                continue
            reg = r.registration
            made: list = []
            try:
                for rs in r.sets:
                    made.append(
                        self._restore_set(
                            (reg.impi, reg.ue_host),
                            rs,
                            now,
                            established=rs.established,
                            expires_at=rs.expires_at,
                        )
                    )
            except (LocalProtocolError, ValueError) as exc:  # (an SPI out of range)
                log.warning("pcscf: registration of %s not taken back: %s", reg.impi, exc)
                for s in made:
                    self.table.remove(s, now=now, reason="not taken back")
                continue
            for s in made:
                self._in_place(s)
            actions += self.core.adopt(reg, r.subscription, now, audit)
            sets += len(made)
            self.restored += 1
            self.core.counters["registrations-taken-back"] += 1
        if self.backend is not None:
            self.backend.sync()
        self._execute(actions, now)  # type: ignore[attr-defined]
        log.info(
            "pcscf: %d registrations (%d SA sets) taken back from %s", self.restored, sets, source
        )

    def _restore_set(
        self, contact: object, rs: Any, now: float, *, established: bool, expires_at: float
    ) -> Any:
        """`rs` (a `pcscf_state.RestoredSet`) back in the SA table under `contact`."""
        return self.table.restore(
            contact,
            rs.sa,
            rs.keys,
            established=established,
            expires_at=expires_at,
            counters=rs.counters,
            now=now,
        )

    def _in_place(self, sa_set: Any) -> None:
        """A restored set where the server finds it: by our spi-s, in the reply index."""
        self._sets[self._key_of(sa_set)] = sa_set  # type: ignore[attr-defined]
        self._index(sa_set)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ the store

    def _head(self, clean: bool) -> dict[str, Any]:
        return {
            "format": pcscf_state.FORMAT,
            "version": pcscf_state.VERSION,
            "pcscf": self._own(),
            "saved_at": time.time(),
            "clean": clean,
        }

    async def _store_start(self, url: str) -> None:
        """Connect, take back what the store holds (as written before a crash unless
        its last write was a clean stop's), mark it running, start writing."""
        from imsaka.cscf.pcscf_store import PcscfStateStore

        own = self._own()
        self._store = PcscfStateStore(url, f"{self.config.name}@{own['address']}:{own['port']}")
        # a pass writes what changed: the core says which registrations, the SA table
        # which sets carried traffic
        self._changed = self.core.track_changes()
        self.table.track_use()
        now = asyncio.get_running_loop().time()
        try:
            raw_head, raw = await self._store.read()
            with _bulk():
                head = json.loads(raw_head) if raw_head is not None else None
                records = {impi: json.loads(text) for impi, text in raw.items()}
        except Exception as exc:  # Redis down, or not JSON: start without
            log.error("pcscf: state store %s not read: %s", url, str(exc).splitlines()[0])
            head, records = None, {}
            self._store_unread = True
        self._stored = set(records)
        if records:
            crashed = not (isinstance(head, dict) and head.get("clean") is True)
            doc = dict(head) if isinstance(head, dict) else {}
            doc.setdefault("saved_at", time.time())
            # (a held set's key starts with a NUL, which no IMPI holds)
            doc["registrations"] = [r for k, r in records.items() if not k.startswith(HELD)]
            doc["held"] = [r for k, r in records.items() if k.startswith(HELD)]
            try:
                with _bulk():
                    restored = pcscf_state.load(
                        doc,
                        own=self._own(),
                        now=now,
                        wall=time.time(),
                        crashed=crashed,
                        types=(self.core.registration_type, self.core.subscription_type),
                    )
            except pcscf_state.StateError as exc:
                log.error("pcscf: state store %s not used: %s", url, exc)
                restored = []
            what = "after a crash" if crashed else "after a stop"
            with _bulk():
                self._adopt_all(
                    restored,
                    now,
                    f"{url} ({what})",
                    audit=crashed or _age(doc, time.time()) > TRANSACTION_LIFETIME,
                )
        # records not taken back (run out, refused) go at the first pass
        self._changed.update(k for k in self._stored if not self._holds(k))
        # Running (`clean` false), and every record written now, before any packet
        # moves a counter (no await since the take-back): after a crash those written
        # went on SEQ_MARGIN past the last ones, so that a second crash before the
        # next write does not start again from those.
        await self._store_pass()
        self._store_task = asyncio.ensure_future(self._store_loop())

    def _holds(self, key: str) -> bool:
        """Whether the core holds what the store's record `key` is of."""
        if key.startswith(HELD):
            return self.core.held_set(key) is not None
        return key in self.core.registrations

    async def _store_loop(self) -> None:
        interval = float(self.config.state_interval)
        # (a flag, not only the cancel: redis-py 8.1's pipeline execute() was seen to
        # return normally from a cancel that landed inside it, the task left cancelling,
        # and the loop then went on for ever; the class of redis/redis-py#2028, #2551)
        while self._store_task is not None:
            await asyncio.sleep(interval)
            await self._store_pass()

    async def _store_pass(self, clean: bool = False) -> None:
        """Write the records that changed since the last pass (all of them for a
        `clean` stop, or over a store it could not read), remove those that went; on a
        failure, they are written at the next pass. O(changes): the records the core
        marked changed (registrations, and sets held for a REGISTER's retransmissions),
        and those whose SA sets carried traffic (their counters moved), are the only
        ones looked at."""
        now = asyncio.get_running_loop().time()
        wall = time.time()
        core, sets = self.core, self._sets
        replace = self._store_unread
        every = clean or replace
        marked = set(self._changed)
        self._changed.clear()
        moved: set[str] = set()
        for s in self.table.take_used():
            key = core.record_key(s.pcscf_spis[1])  # (our spi-s: its key in `_sets`)
            if key is not None:
                moved.add(key)
        if every:
            looked_at: set[str] = set(core.registrations) | self._stored
            looked_at.update(core.held_keys())
        else:
            looked_at = marked | moved
        changed: dict[str, str] = {}
        removed: list[str] = []
        with _bulk():  # (a full pass, at a start or a clean stop, builds them all)
            for key in looked_at:  # (an IMPI, or a held set's key)
                record = None
                if key.startswith(HELD):
                    hold = core.held_set(key)
                    if hold is not None:
                        record = pcscf_state.held_record(hold, sets, now, wall)
                else:
                    reg = core.registrations.get(key)
                    if reg is not None:
                        sub = core.subscription_of(key)
                        record = pcscf_state.record_of(reg, sub, sets, now, wall)
                if record is not None:
                    changed[key] = json.dumps(record, separators=(",", ":"))
                elif key in self._stored:
                    removed.append(key)  # (gone, or ending: not to be taken back)
        try:
            await self._store.write(self._head(clean), changed, removed, replace=replace)
        except Exception as exc:  # Redis away: the same records next time
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # (the stop's cancel, not Redis)
            self.core.counters["state-store-write-failed"] += 1
            if not self._store_failing:
                log.error("pcscf: state store not written: %s", str(exc).splitlines()[0])
            self._store_failing = True
            self._changed |= looked_at
            return
        if self._store_failing:
            log.info("pcscf: state store written again")
            self._store_failing = False
        counters = self.core.counters
        counters["state-store-records-written"] += len(changed)
        counters["state-store-records-removed"] += len(removed)
        if replace:
            self._stored.clear()
        self._stored.difference_update(removed)
        self._stored.update(changed)
        self._store_unread = False

    async def _store_stop(self) -> None:
        if self._store is None:
            return
        task, self._store_task = self._store_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._handoff:
            await self._store_pass(clean=True)
        await self._store.close()
        self._store = None
