"""P-CSCF, asyncio edge: the Gm sockets (clear and protected) and the Mw socket.

Feeds `imsaka.cscf.pcscf.PcscfCore` with what arrives (TS 24.229 §5.2.2) and carries
out its actions: clear SIP over UDP at the unprotected port (towards UEs and the
I-/S-CSCF), protected SIP over the IPsec backend at port-c/port-s (TS 33.203 §7.1),
the SA set lifecycle in `imsaka.ipsec.sa.SecurityAssociationTable`. A response to
the UE leaves over the SA its request came on; a request from the core to the UE
(TS 24.229 §5.2.6.4: the S-CSCF's reg-event NOTIFY) leaves from port-c to the UE's
port-s, and the UE's answer, back over that pair, goes on to the core. An SA set that
must go after a last message (the 200 OK to a de-REGISTER, the 4xx to a failed
challenge response) is marked so the table removes it only once that message has been
sent (PITFALLS). Over UDP the set such a last answer left over is then held (DRAINING,
with the answered REGISTER's server transaction open on it) outside the reply index
until the core releases it at the end of that transaction (Timer J, RFC 3261 §17.2.2):
a retransmitted REGISTER whose answer was lost still arrives over it and gets the
cached answer again over it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imsaka.config import ImsConfig, NetworkConfig, PcscfConfig
from imsaka.cscf.pcscf import (
    Action,
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    PcscfCore,
    PcscfSa,
    ReleaseSecurityAssociations,
    Reply,
    UpgradeSecurityAssociations,
)
from imsaka.cscf.pcscf_keep import KeepsState
from imsaka.ipsec.backend import ProtectedMessage, create_backend
from imsaka.ipsec.sa import SaSet, SaSetRemoved, SaState, SecurityAssociationTable
from imsaka.sip import Request, SipParseError, make_response, parse_message
from imsaka.sip.transaction import TimerConfig
from imsaka.sip.transport import TcpTransport, UdpTransport
from imsaka.wire import Observer

log = logging.getLogger(__name__)

__all__ = ["PcscfServer"]

_TIMERS = TimerConfig()
_TICK = _TIMERS.t1 / 10
_CR_LF = (13, 10)


class PcscfServer(KeepsState):
    """One P-CSCF process part: bind, serve, close."""

    def __init__(
        self,
        config: PcscfConfig,
        network: NetworkConfig | None = None,
        *,
        observers: Iterable[Observer] = (),
        key_file: str | Path | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self._observers = list(observers)
        self._key_file = key_file
        self._rng = rng
        self.table = SecurityAssociationTable(
            "pcscf", reg_await_auth=float(config.temporary_sa_lifetime)
        )
        self.backend: Any = None
        self.udp: UdpTransport | None = None
        self.tcp: TcpTransport | None = None
        self.core: PcscfCore | None = None
        self._sets: dict[int, SaSet] = {}  # by our inbound spi_ps
        # Outbound SPI (chosen by the UE, so unique per UE only) -> the set using it, or
        # a list of them when UEs happen to choose the same SPI (rare: one set is kept
        # without a list around it, per registered UE).
        self._by_outbound: dict[int, SaSet | list[SaSet]] = {}
        # Sets held for a REGISTER's retransmissions (HoldSecurityAssociations),
        # by our inbound spi_ps, and their outbound index (the same shape as
        # `_by_outbound`, looked in only when that one has no live set for an SPI).
        self._held: dict[int, SaSet] = {}
        self._held_outbound: dict[int, SaSet | list[SaSet]] = {}
        self._timer: asyncio.Handle | None = None
        # The deadline `_timer` was armed for: uvloop's call_at returns a plain Handle
        # without when() for a deadline already past.
        self._timer_at: float | None = None
        self.parse_errors = 0
        self.internal_errors = 0
        self.early_drops = 0  # datagrams that came before the core was up
        self.replies_not_sent = 0  # protected answers/requests whose SA set was gone
        self._keep_init()

    async def start(self) -> None:
        cfg = self.config
        self.udp = await UdpTransport.create(cfg.address, cfg.port, owner="pcscf")
        for obs in self._observers:
            self.udp.add_observer(obs)
        self.udp.set_receiver(self._clear_datagram)
        if "tcp" in cfg.transports:
            # Clear SIP over TCP at the same port (RFC 3261 §18.2.1); upstream stays UDP.
            try:
                self.tcp = await TcpTransport.create(
                    cfg.address, self.udp.local_address[1], owner="pcscf"
                )
            except OSError:
                await self.udp.close()
                raise
            for obs in self._observers:
                self.tcp.add_observer(obs)
            self.tcp.set_receiver(self._clear_stream)
        self.backend = create_backend(
            cfg.ipsec_backend,
            self.table,
            on_message=self._protected,
            owner="pcscf",
            key_file=self._key_file,
        )
        for obs in self._observers:
            self.backend.add_observer(obs)
        self.backend.on_table_event = self._table_event
        await self.backend.start()
        # The protected ports stay bound from start on, with or without SAs: stray ESP
        # is counted as a drop, not refused by the kernel, and no other socket can take
        # a port between start and the first 401 (configured 0: the kernel picks).
        try:
            port_c = self.backend.hold_port(cfg.address, cfg.port_c)
            port_s = self.backend.hold_port(cfg.address, cfg.port_s)
        except OSError:
            await self.close()
            raise
        self.core = PcscfCore(
            cfg,
            self.network,
            rng=self._rng,
            port=self.udp.local_address[1],
            port_c=port_c,
            port_s=port_s,
            spi_allocator=lambda: self.table.allocate_local()[0],
        )
        if cfg.state_file:
            self._take_back(Path(cfg.state_file))
        if cfg.state_store:
            await self._store_start(cfg.state_store)
        log.info(
            "pcscf listening on %s:%d (protected port-c %d, port-s %d)",
            cfg.address,
            self.udp.local_address[1],
            port_c,
            port_s,
        )

    @property
    def address(self) -> tuple[str, int]:
        assert self.udp is not None
        return self.udp.local_address

    @property
    def protected_ports(self) -> tuple[int, int]:
        """(port-c, port-s) as bound (the configured ones, or the kernel's for 0)."""
        assert self.core is not None
        return self.core.port_c, self.core.port_s

    async def drain(self) -> None:
        """Before a stop asked for (SIGTERM, SIGINT: `serve_forever`): the close that
        follows writes `[pcscf].state_file` (or the last, clean, write of
        `[pcscf].state_store`) once no socket can bring or send anything more (so no
        sequence number moves after it is written)."""
        self._handoff = True

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.backend is not None:
            await self.backend.close()
        if self.tcp is not None:
            await self.tcp.close()
        if self.udp is not None:
            await self.udp.close()
        if self._handoff and self.config.state_file and self.core is not None:
            self._hand_off(Path(self.config.state_file))
        await self._store_stop()
        self._handoff = False

    def stats(self) -> dict[str, Any]:
        out = self.core.stats() if self.core else {}
        out["esp_drops"] = dict(self.backend.drops) if self.backend else {}
        # serving sets: those held for a REGISTER's retransmissions are census()'s
        # `sa_sets_in_grace` (state, not a counter: not here, where metrics reads counters)
        out["sa_sets"] = len(self.table.sets()) - len(self._held)
        out["parse_errors"] = self.parse_errors
        out["internal_errors"] = self.internal_errors
        out["early_drops"] = self.early_drops
        out["replies_not_sent"] = self.replies_not_sent
        return out

    def census(self) -> dict[str, int]:
        """Live per-UE and per-transaction state, for leak checks and metrics."""
        core = self.core
        return {
            # a removed set leaves the table at once (SecurityAssociationTable._remove);
            # the sets kept until their answered REGISTER's Timer J
            # (`pcscf.DEREGISTER_GRACE`) are counted apart: the table's and the core's
            "sa_sets": len(self.table.sets()) - len(self._held),
            "sa_sets_in_grace": len(self._held),
            "registrations": len(core.registrations) if core else 0,
            "sas_in_records": core.stats()["sas"] if core else 0,
            "sas_in_grace_records": core.in_grace() if core else 0,
            "pending_forwarded": core.open_transactions() if core else 0,
            "subscribe_entries": (
                sum(1 for p in core.pending.values() if p.kind == "subscribe") if core else 0
            ),
            # requests from the core taken to a UE and not answered by it yet
            "pending_to_ue": core.pending_to_ue() if core else 0,
            # the P-CSCF's reg-event subscriptions (TS 24.229 §5.2.3), those of ended
            # registrations included until their terminated NOTIFY
            "reg_subscriptions": len(core.subscriptions) if core else 0,
        }

    # ---------------------------------------------------------------- inputs

    def _clear_datagram(self, data: bytes, source: tuple[str, int], transport: Any) -> None:
        self._incoming(data, Arrival(source, "udp", None))

    def _clear_stream(self, data: bytes, source: tuple[str, int], transport: Any) -> None:
        self._incoming(data, Arrival(source, "tcp", None))

    def _protected(self, msg: ProtectedMessage) -> None:
        self._incoming(msg.data, Arrival(msg.peer, "udp", msg.sa.spi))

    def _incoming(self, data: bytes, arrival: Arrival) -> None:
        if not data or (data[0] in _CR_LF and not data.strip(b"\r\n")):
            return  # keep-alive (RFC 5626 §4.4.1 CRLF); a message is not stripped (copied)
        if self.core is None:
            # bound, not started yet (its ports are known only once bound): dropped,
            # the sender's retransmission comes after
            self.early_drops += 1
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.parse_errors += 1
            log.info(
                "pcscf: unparsable message from %s:%d: %s",
                arrival.source[0],
                arrival.source[1],
                exc,
            )
            self._answer_unparsable(data, arrival, exc)
            return
        try:
            if isinstance(msg, Request):
                actions = self.core.receive_request(msg, arrival, now)
            else:
                # From upstream, or a UE's answer to a request we took to it (over its
                # SA pair at our port-c, TS 24.229 §5.2.6.4); the core tells them apart.
                actions = self.core.receive_response(msg, arrival.source, now, arrival.spi)
            self._execute(actions, now)
        except Exception:
            # A bug must cost one message, never the socket (counted, logged).
            self.internal_errors += 1
            log.exception("pcscf: internal error on a message from %s:%d", *arrival.source)

    def _answer_unparsable(self, data: bytes, arrival: Arrival, exc: SipParseError) -> None:
        """400/513 when the head is readable enough to answer (RFC 3261 §21.4.1)."""
        if data.startswith(b"SIP/2.0"):
            return
        try:
            head = data.split(b"\r\n\r\n", 1)[0] + b"\r\nContent-Length: 0\r\n\r\n"
            lines = [
                ln
                for ln in head.split(b"\r\n")
                if not ln.lower().startswith((b"content-length", b"l:"))
            ]
            req = parse_message(b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n")
        except SipParseError:
            return
        if isinstance(req, Request) and req.method != "ACK":
            resp = make_response(req, getattr(exc, "status", 400) or 400)
            self._execute([Reply(resp, arrival.source, arrival.transport, None)], 0.0)

    # ---------------------------------------------------------------- actions

    def _execute(self, actions: list[Action], now: float) -> None:
        assert self.udp is not None
        if len(actions) == 1:
            # most messages: one request forwarded, or one answer in the clear (nothing
            # released after it)
            only = actions[0]
            if type(only) is Forward:
                self.udp.send(only.message.to_bytes(), only.destination)
                self._arm()
                return
            if type(only) is Reply and only.spi is None:
                self.send_clear(only.message.to_bytes(), only.destination, only.transport)
                self._arm()
                return
        # A release listed after a reply over the same set: that reply is the last
        # message due over it (de-REGISTER 200 OK, failed-auth 4xx). (None: no release
        # among them, as for a re-registration's 200 OK and its upgrade)
        releasing: dict[int, ReleaseSecurityAssociations | HoldSecurityAssociations] | None
        releasing = None
        for a in actions:
            if type(a) is ReleaseSecurityAssociations or type(a) is HoldSecurityAssociations:
                if releasing is None:
                    releasing = {}
                releasing[a.sa.spi_ps] = a
        done: set[int] = set()
        for action in actions:
            kind = type(action)
            if kind is Forward:
                self.udp.send(action.message.to_bytes(), action.destination)
            elif kind is Reply:
                data = action.message.to_bytes()
                if action.spi is None:
                    self.send_clear(data, action.destination, action.transport)
                    continue
                sa_set, out_sa = self._outbound(action.spi, action.destination, action.over)
                if sa_set is None or out_sa is None:
                    self.replies_not_sent += 1
                    log.info(
                        "pcscf: %s to %s:%d not sent: no live SA with spi %d",
                        action.message.start_line(),
                        *action.destination,
                        action.spi,
                    )
                    continue
                key = self._key_of(sa_set)
                final = False
                if isinstance(action.message, Request):
                    pass  # a request to the UE (a NOTIFY) is never the set's last message
                elif releasing is not None and key in releasing and key not in done:
                    final = self._mark_last_message(sa_set, now)
                    if type(releasing[key]) is HoldSecurityAssociations:
                        # the answered REGISTER's transaction stays open on the set until
                        # the core releases it: sending this answer does not remove it
                        self.table.transaction_started(sa_set)
                    done.add(key)
                elif sa_set.state is SaState.DRAINING and sa_set.final_due > 0:
                    # The cached answer re-sent to a retransmitted request (its first
                    # copy was lost): it is the message the draining set waits for.
                    final = True
                self.send_protected(out_sa, data, final)
            elif kind is UpgradeSecurityAssociations:
                s = self._sets.get(action.sa.spi_ps)
                if s is not None:
                    expires = max(action.lifetime - 30.0, 0.0)
                    if s.state is SaState.TEMPORARY:
                        self.table.registered(s, expires=expires, now=now)
                    elif s.state is SaState.ESTABLISHED:
                        self.table.reregistered(s, expires=expires, now=now)
                    self.backend.sync()
            elif kind is InstallSecurityAssociations:
                self._install(action.sa, now)
            elif kind is HoldSecurityAssociations:
                self._hold(action, action.sa.spi_ps in done, now)
            elif kind is ReleaseSecurityAssociations:
                key = action.sa.spi_ps
                s = self._sets.pop(key, None)
                if s is not None and key in done and s.state is SaState.DRAINING:
                    # Draining until its last message went out: a retransmitted request
                    # over it still gets the cached answer over it (the index entry goes
                    # with the table's SaSetRemoved, `_table_event`).
                    continue
                if s is not None:
                    self._unindex(s)
                    if self._held.get(key) is s:
                        del self._held[key]  # its REGISTER's Timer J has run
                if s is None or s.state is SaState.REMOVED or key in done:
                    continue
                # Nothing more is due over it: it goes now.
                self.table.remove(s, now=now, reason=action.reason)
                self.backend.sync()
            elif kind is DropInput:
                pass
        self._arm()

    # Gm sends go through these two, so a test can inject loss on the Gm leg only.
    def send_clear(self, data: bytes, addr: tuple[str, int], transport: str = "udp") -> None:
        if transport == "tcp" and self.tcp is not None:
            self.tcp.send(data, addr)  # over the connection the request came on
            return
        assert self.udp is not None
        self.udp.send(data, addr)

    def send_protected(self, sa: Any, data: bytes, final: bool = False) -> bool:
        return self.backend.send(sa, data, final=final)

    def _mark_last_message(self, sa_set: SaSet, now: float, due: int = 1) -> bool:
        """The set goes once `due` messages (0 or 1) have gone out over it: DRAINING."""
        if sa_set.state is SaState.TEMPORARY:
            self.table.auth_failed(sa_set, now=now, response_due=due > 0)
            return True
        if sa_set.state in (SaState.ESTABLISHED, SaState.SUPERSEDED):
            self.table.deregistered(sa_set, now=now, final_messages=due)
            return True
        return False

    def _hold(self, action: HoldSecurityAssociations, replied: bool, now: float) -> None:
        """A set whose last answer went out, kept for the answered REGISTER's
        retransmissions until the core releases it (`action.until`): DRAINING with that
        transaction open
        (opened before the 200 OK was sent, when `replied`), out of the reply index
        (nothing new goes to the UE over it), in `_held` and its own index."""
        key = action.sa.spi_ps
        s = self._sets.get(key)
        if s is None or s.state is SaState.REMOVED:
            return
        if not replied:
            # (the 200 did not go over it: held all the same, the core decides)
            self._mark_last_message(s, now, due=0)
            self.table.transaction_started(s)
        # The table's own drain deadline (its backstop) must not come first: the SPIs
        # would be free for a new set while the core still holds them in grace.
        s.expires_at = max(s.expires_at, action.until + 1.0)
        self._unindex(s)
        self._held[key] = s
        self._index(s, self._held_outbound)
        self.backend.sync()

    def _key_of(self, sa_set: SaSet) -> int:
        return sa_set.pcscf_spis[1]

    def _outbound(
        self, spi: int, destination: tuple[str, int] | None = None, over: int | None = None
    ) -> tuple[SaSet | None, Any]:
        """The live set and its outbound SA with `spi`: of the set whose spi-s is `over`
        when given (none when that set is gone: another with the same SPI has other
        keys); else towards `destination`'s port when several, a serving set first,
        else one held for a REGISTER's retransmissions (a UE that registers again may
        have chosen the same SPI for its new set)."""
        if over is not None:
            s = self._sets.get(over)
            if s is not None and s.state is not SaState.REMOVED:
                for sa in s.outbound.values():
                    if sa.spi == spi:
                        return s, sa
            return None, None
        found = self._find_outbound(self._by_outbound, spi, destination)
        if found[0] is None and self._held_outbound:
            found = self._find_outbound(self._held_outbound, spi, destination)
        return found

    @staticmethod
    def _find_outbound(
        index: dict[int, SaSet | list[SaSet]], spi: int, destination: tuple[str, int] | None
    ) -> tuple[SaSet | None, Any]:
        found: tuple[SaSet | None, Any] = (None, None)
        entry = index.get(spi)
        for s in (entry,) if type(entry) is SaSet else entry or ():
            if s.state is SaState.REMOVED:
                continue
            for sa in s.outbound.values():
                if sa.spi == spi:
                    if destination is None or sa.dst[1] == destination[1]:
                        return s, sa
                    found = found if found[0] is not None else (s, sa)
        return found

    def _table_event(self, event: object) -> None:
        # A set the table removed (drained, expired): forget its reply index.
        if isinstance(event, SaSetRemoved):
            self._unindex(event.sa_set)
            key = self._key_of(event.sa_set)
            if self._sets.get(key) is event.sa_set:
                del self._sets[key]
            if self._held.get(key) is event.sa_set:
                del self._held[key]

    def _index(self, sa_set: SaSet, index: dict[int, SaSet | list[SaSet]] | None = None) -> None:
        if index is None:
            index = self._by_outbound
        for sa in sa_set.outbound.values():
            entry = index.get(sa.spi)
            if entry is None:
                index[sa.spi] = sa_set
            elif type(entry) is SaSet:
                index[sa.spi] = [entry, sa_set]
            else:
                entry.append(sa_set)

    def _unindex(self, sa_set: SaSet) -> None:
        """Out of the reply index and out of the held sets' index."""
        for index in (self._by_outbound, self._held_outbound):
            for sa in sa_set.outbound.values():
                entry = index.get(sa.spi)
                if entry is sa_set:
                    del index[sa.spi]
                elif type(entry) is list:
                    if sa_set in entry:
                        entry.remove(sa_set)
                    if len(entry) == 1:
                        index[sa.spi] = entry[0]
                    elif not entry:
                        del index[sa.spi]

    def _install(self, sa: PcscfSa, now: float) -> None:
        # One table contact per UE (IMPI, UE address): the table keeps its temporary,
        # established and superseded sets apart; the P-CSCF core still decides which set
        # replaces which (TS 33.203 §7.4) and says so with explicit releases.
        s = self.table.create_temporary_from((sa.impi, sa.ue_host), sa, now=now)
        replaced = self._sets.get(sa.spi_ps)
        if replaced is not None:
            self._unindex(replaced)
        self._sets[sa.spi_ps] = s
        self._index(s)
        self.backend.sync()

    # ---------------------------------------------------------------- timers

    def _arm(self) -> None:
        assert self.core is not None
        deadline = self.core.next_deadline()
        at = self._timer_at
        if self._timer is not None:
            if at is not None and (deadline is None or at <= deadline + _TICK):
                # The armed wake-up is on this deadline's grid step, or before it: kept.
                # Firing early costs one look at the core, which arms again; moving it
                # later on every change cost a cancel and a new timer per request once
                # Timer E (due at T1, gone with the answer) came and went with each one.
                return
            self._timer.cancel()
            self._timer = None
        if deadline is None:
            self._timer_at = None
            return
        # On the T1/10 grid (`TimerConfig.wake_up_at`): the core's earliest deadline is
        # the oldest forwarded request's end of life, one per request at load; the ends
        # due within one grid step share one wake-up.
        at = self._timer_at = _TIMERS.wake_up_at(deadline)
        self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        assert self.core is not None
        now = asyncio.get_running_loop().time()
        self._execute(self.core.handle_timer(now), now)


def run(config: ImsConfig) -> int:
    """``imsaka run pcscf``: serve until SIGINT/SIGTERM."""
    from imsaka.clierror import CliError
    from imsaka.cscf._serve import serve_forever

    assert config.pcscf is not None
    state_file = config.pcscf.state_file
    if state_file:
        folder = Path(state_file).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise CliError(f"[pcscf].state_file: cannot write in {folder}")
    return asyncio.run(serve_forever(PcscfServer(config.pcscf, config.network), "pcscf"))
