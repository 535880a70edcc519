"""asyncio edge of the Diameter peer: RFC 6733 §2.1 (TCP, port 3868), §5.6 Tc reconnect.

`DiameterNode` is both a server (listens, accepts configured peers only) and a client
(connects to configured peers, reconnecting every Tc). Each TCP connection is one
`asyncio.Protocol` driving one sans-I/O `PeerConnection` (imsaka.diameter.peer): bytes
in with `loop.time()`, messages out, events drained, one `call_at` timer re-armed only
when the core's next deadline moves earlier.

Application side:
- server: `node.set_request_handler(async fn(request, peer) -> answer)`, or a plain
  function returning the answer (sent at once, without a Task). For Cx
  requests (application 16777216) `request` is the imsaka.diameter.cx dataclass and the
  answer a Cx answer dataclass; other applications get and return `codec.Message`.
  A Cx request missing a mandatory AVP is answered 5005 with Failed-AVP without calling
  the handler. `peer` is the `RemotePeer` (its Origin-Host, realm, addresses).
  An awaitable a handler returns runs in its own Task, so it may await pools, locks
  and timeouts like any asyncio code.
- client: `answer = await node.request(request, peer=None, timeout=5.0)`; raises
  `DiameterRequestError` (reason "disconnected", "no-connection", ...) or
  `DiameterTimeoutError` (also a `TimeoutError`). Without a coroutine:
  `node.request_callback(cx_request, callback)` calls `callback(answer, None)` or
  `callback(None, exc)` (the same answers and exceptions) from the connection's event
  handling, so a caller answering many requests needs no Task per request.
- `start()` / `stop()` (DPR to every open peer, then close); observers (imsaka.wire)
  see every framed message in and out; `counters` counts drops by trigger.

RFC 3539 §3.4.1 REOPEN: when a peer's connection ends after a watchdog failure (its
watchdog SUSPECT, DOWN or still REOPEN), the node remembers the host; the next connection
to or from it opens in REOPEN and is not open for requests (`is_open`, `open_peers`,
`wait_open`, `request`) until `reopen_dwas` DWR/DWA exchanges in a row succeed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from imsaka.diameter import codec, cx
from imsaka.diameter.codec import Message
from imsaka.diameter.errors import (
    DiameterRequestError,
    DiameterTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestRefused,
)
from imsaka.diameter.peer import (
    AnswerReceived,
    ConnectionTerminated,
    DuplicateCache,
    IdGenerator,
    MessageDropped,
    PeerConfig,
    PeerConnection,
    PeerOpened,
    RemotePeer,
    RequestFailed,
    RequestReceived,
    WatchdogChanged,
    WatchdogState,
)
from imsaka.wire import Observable, WireEvent

log = logging.getLogger("imsaka.diameter.node")

DEFAULT_PORT = 3868

RequestHandler = Callable[[Any, RemotePeer], Awaitable[Any] | Any]
#: ``callback(answer, None)`` or ``callback(None, exception)`` (`request_callback`).
AnswerCallback = Callable[[Any, BaseException | None], None]
_COROUTINE = types.CoroutineType


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One configured peer."""

    host: str
    """Its Diameter identity (the Origin-Host it must present in CER/CEA)."""
    address: str | None = None
    """Where to connect to it; None: we only accept its connections."""
    port: int = DEFAULT_PORT
    """Its TCP port when we connect."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("peers.host: a Diameter identity is required")
        if not 0 < self.port < 65536:
            raise ValueError(f"peers.port: {self.port} is not a TCP port")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a `DiameterNode` needs; validated when built."""

    origin_host: str
    """Our Diameter identity, e.g. "hss.ims.mnc001.mcc001.3gppnetwork.org"."""
    origin_realm: str
    """Our realm."""
    peers: tuple[PeerSpec, ...] = ()
    """The only peers we talk to (a CER from any other host gets 3010 and is closed)."""
    listen_address: str | None = None
    """Address to accept connections on; None: no server (client only)."""
    listen_port: int = DEFAULT_PORT
    """TCP port of the server (0: let the kernel pick; see `DiameterNode.port`)."""
    tc: float = 30.0
    """Tc (RFC 6733 §2.1): seconds between connection attempts to a peer."""
    watchdog_interval: float = 30.0
    """Tw (RFC 3539): idle seconds before a DWR."""
    reopen_dwas: int = 3
    """DWR/DWA exchanges in a row before a peer reconnected after a watchdog failure is
    used again (RFC 3539 §3.4.1 REOPEN)."""
    request_timeout: float = 5.0
    """Default timeout of `request()`."""
    max_inflight: int = 4096
    """Requests of one peer being handled at once; more are answered 3004 TOO_BUSY."""
    cer_timeout: float = 10.0
    """Seconds a new connection has for its CER / CEA."""
    dpa_timeout: float = 2.0
    """Seconds `stop()` waits for the DPA."""
    host_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    """Host-IP-Address values of our CER/CEA."""
    product_name: str = "imsaka"
    """Product-Name in CER/CEA."""
    auth_application_ids: tuple[int, ...] = (cx.CX_APPLICATION_ID,)
    """Applications we serve and advertise (Vendor-Specific-Application-Id, vendor 10415)."""
    max_message_length: int = codec.DEFAULT_MAX_MESSAGE_LENGTH
    """Cap on one message."""
    owner: str = ""
    """Name of the function owning the sockets ("hss", "scscf", ...) in WireEvents."""

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"listen_port: {self.listen_port} is not a TCP port")
        if not self.tc > 0:
            raise ValueError("tc: must be positive")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout: must be positive")
        if self.max_inflight < 1:
            raise ValueError("max_inflight: must be at least 1")
        hosts = [p.host for p in self.peers]
        if len(set(hosts)) != len(hosts):
            raise ValueError("peers: a host is listed twice")
        self.peer_config()  # validates the rest

    def peer_config(self) -> PeerConfig:
        return PeerConfig(
            origin_host=self.origin_host,
            origin_realm=self.origin_realm,
            host_ip_addresses=self.host_ip_addresses,
            product_name=self.product_name,
            auth_application_ids=self.auth_application_ids,
            watchdog_interval=self.watchdog_interval,
            reopen_dwas=self.reopen_dwas,
            cer_timeout=self.cer_timeout,
            dpa_timeout=self.dpa_timeout,
            max_message_length=self.max_message_length,
            origin_state_id=int(time.time()) & 0xFFFFFFFF,
        )


class _Connection(asyncio.Protocol):
    """One TCP connection: feeds the core, writes its output, dispatches its events."""

    __slots__ = (
        "closed",
        "core",
        "futures",
        "inflight",
        "local",
        "loop",
        "node",
        "remote_addr",
        "timer",
        "timer_at",
        "transport",
    )

    def __init__(self, node: DiameterNode, core: PeerConnection) -> None:
        self.node = node
        self.core = core
        self.loop = node._loop
        self.transport: asyncio.Transport | None = None
        self.futures: dict[int, asyncio.Future[Message]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.inflight = 0  # requests from this peer handed to the handler, not yet answered
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.remote_addr: tuple[str, int] = ("0.0.0.0", 0)

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        self.local = tuple(transport.get_extra_info("sockname")[:2])  # type: ignore[assignment]
        self.remote_addr = tuple(transport.get_extra_info("peername")[:2])  # type: ignore[assignment]
        self.node._connections.add(self)
        self.core.record_frames = bool(self.node._observers)
        self.core.connection_made(self.loop.time())
        self.process()

    def data_received(self, data: bytes) -> None:
        core = self.core
        core.record_frames = bool(self.node._observers)
        core.receive_data(data, self.loop.time())
        if core.received_frames:
            self.node._report(self, "in", core.received_frames)
            core.received_frames = []
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.core.connection_lost(self.loop.time())
        self.process()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.node._connections.discard(self)
        for fut in self.futures.values():
            if not fut.done():
                fut.set_exception(DiameterRequestError("connection lost", reason="disconnected"))
        self.futures.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests until it does.
        self.node.counters["backpressure"] += 1
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # driving the core -----------------------------------------------------------------------

    def process(self) -> None:
        core = self.core
        self.write_out()
        if core.events:
            events = core.pop_events()
            node = self.node
            behind = len(events)
            for event in events:
                # Requests framed behind this one (`DiameterNode.requests_in_hand`).
                behind -= 1
                node._behind = behind
                self.handle_event(event)
            node._behind = 0
        deadline = core.next_deadline()
        if deadline is not None and deadline < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self.on_timer)

    def write_out(self) -> None:
        out = self.core.messages_to_send()
        transport = self.transport
        if out and transport is not None:
            # Written at once. Deferring writes to the end of the event-loop iteration, to
            # coalesce the answers of several handlers, saved write() calls but cost a third
            # of benchmarks/diameter_peer.py's throughput: the two peers took turns instead
            # of working at the same time.
            if self.node._observers:
                self.node._report(self, "out", out)
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def on_timer(self) -> None:
        self.timer = None
        self.timer_at = float("inf")
        self.core.handle_timer(self.loop.time())
        self.process()

    def handle_event(self, event: Any) -> None:
        kind = type(event)
        if kind is RequestReceived:
            self.node._dispatch_request(self, event.message)
        elif kind is AnswerReceived:
            fut = self.futures.pop(event.message.hop_by_hop, None)
            if fut is not None and not fut.done():
                fut.set_result(event.message)
        elif kind is RequestFailed:
            fut = self.futures.pop(event.hop_by_hop, None)
            if fut is not None and not fut.done():
                if event.reason == "timeout":
                    fut.set_exception(DiameterTimeoutError("no answer in time", reason="timeout"))
                else:
                    fut.set_exception(
                        DiameterRequestError(f"request failed: {event.reason}", reason=event.reason)
                    )
        elif kind is PeerOpened:
            self.node._peer_opened(self)
        elif kind is ConnectionTerminated:
            self.node._peer_closed(self, event)
            transport = self.transport
            if transport is not None:
                # Queued output (a CEA 3010, a DPA) goes out before the close.
                out = self.core.messages_to_send()
                if out:
                    if self.node._observers:
                        self.node._report(self, "out", out)
                    transport.write(b"".join(out))
                transport.close()
        elif kind is MessageDropped:
            pass  # counted and logged by the core
        elif kind is WatchdogChanged:
            log.info("diameter watchdog %s -> %s", event.old.value, event.new.value)
            if event.old is WatchdogState.REOPEN and event.new is WatchdogState.OKAY:
                self.node._peer_reopened(self)

    def send_answer(self, request: Message, answer: Any) -> None:
        self.inflight -= 1
        if isinstance(answer, Message):
            data = answer.with_ids(request.hop_by_hop, request.end_to_end).encode()
        elif answer is None:
            self.node.counters["handler-no-answer"] += 1
            data = self._error(request, codec.DIAMETER_UNABLE_TO_COMPLY).encode()
        else:
            try:
                data = answer.encode(request.hop_by_hop, request.end_to_end)
            except (LocalProtocolError, AttributeError, TypeError):
                self.node.counters["handler-bad-answer"] += 1
                log.exception("diameter request handler returned an answer that cannot be sent")
                data = self._error(request, codec.DIAMETER_UNABLE_TO_COMPLY).encode()
        core = self.core
        core.send_encoded_answer(data, self.loop.time(), request.end_to_end)
        if core.events:
            self.process()
        else:
            # An answer queues its octets only (no event, no deadline): just written.
            self.write_out()

    def _error(self, request: Message, code: int, failed: codec.Avp | None = None) -> Message:
        cfg = self.core.config
        return codec.error_answer(
            request, code, cfg.origin_host, cfg.origin_realm, failed_avp=failed
        )


class _Waiter:
    """A Cx request sent by `DiameterNode.request_callback`: it stands where the future
    of `request()` stands in `_Connection.futures` (the same `done`, `set_result` and
    `set_exception`), and calls back at once instead of waking a Task."""

    __slots__ = ("callback", "finished", "node", "request")

    def __init__(self, node: DiameterNode, request: Any, callback: AnswerCallback) -> None:
        self.node = node
        self.request = request
        self.callback = callback
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, message: Any) -> None:
        self.finished = True
        try:
            answer = self.node._cx_answer(self.request, message)
        except DiameterRequestError as exc:
            self._call(None, exc)
            return
        self._call(answer, None)

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        self._call(None, exc)

    def _call(self, answer: Any, exc: BaseException | None) -> None:
        try:
            self.callback(answer, exc)
        except Exception:  # the caller's fault must not stop the connection's events
            self.node.counters["callback-error"] += 1
            log.exception("diameter answer callback failed")


class DiameterNode(Observable):
    """A Diameter node speaking to its configured peers (see the module docstring)."""

    def __init__(
        self, config: NodeConfig | None = None, *, rng: random.Random | None = None, **kwargs: Any
    ) -> None:
        if config is None:
            if "peers" in kwargs:
                kwargs["peers"] = tuple(
                    p if isinstance(p, PeerSpec) else PeerSpec(**p) for p in kwargs["peers"]
                )
            config = NodeConfig(**kwargs)
        elif kwargs:
            raise TypeError("DiameterNode: pass either a NodeConfig or keyword fields")
        self.config = config
        self._observers: list[Any] = []
        self._rng = rng or random.Random()
        self._handler: RequestHandler | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._open: dict[str, _Connection] = {}
        # RFC 3539 REOPEN: hosts whose last connection failed its watchdog, and the
        # connections now proving themselves (open, not yet usable for requests).
        self._reopen_hosts: set[str] = set()
        self._reopening: dict[str, _Connection] = {}
        self._open_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._connect_tasks: list[asyncio.Task[None]] = []
        self._handler_tasks: set[asyncio.Task[None]] = set()
        # request_callback()'s requests waiting for a connection (cancelled by stop())
        self._request_tasks: set[asyncio.Task[Any]] = set()
        self._dispatching = 0  # 1 while a plain-function handler runs (requests_in_hand)
        self._behind = 0  # events of the same read still to dispatch (requests_in_hand)
        self._peer_config = config.peer_config()
        # Hosts are FQDNs, compared without regard to case: keys are lower-case, and
        # _names gives back the spelling of the configuration.
        self._names = {p.host.lower(): p.host for p in config.peers}
        self._allowed = frozenset(self._names)
        self._duplicates = DuplicateCache(self._peer_config.duplicate_window)
        self._ids: IdGenerator | None = None
        self._stopping = False
        self.counters: Counter[str] = Counter()
        self.port: int | None = None

    def pending_counts(self) -> dict[str, int]:
        """Outstanding work, for leak checks and metrics: requests sent and not answered
        (RFC 6733 §5.6 hop-by-hop ids), their waiting futures, answers owed to peers and
        request handlers still running."""
        sent = owed = futures = 0
        for conn in self._connections:
            sent += conn.core.pending_count
            futures += len(conn.futures)
            owed += conn.inflight
        return {
            "requests_unanswered": sent,
            "request_futures": futures,
            "answers_owed": owed,
            "handler_tasks": len(self._handler_tasks),
        }

    @property
    def handlers_running(self) -> int:
        """Request handlers started and not finished (cheap: for a per-request check)."""
        return len(self._handler_tasks)

    @property
    def requests_in_hand(self) -> int:
        """Requests being handled or about to be, the asking one included: handler Tasks
        not finished, the request whose plain-function handler is running, and those
        that came in the same read behind it. 1: the asker is the only one (a handler
        may then do at once what it would otherwise share with requests read together,
        e.g. the HSS's group commit). Cheap: for a per-request check."""
        return len(self._handler_tasks) + self._dispatching + self._behind

    # configuration -------------------------------------------------------------------------

    def set_request_handler(self, handler: RequestHandler | None) -> None:
        """`async handler(request, peer) -> answer` for every request a peer sends us; a
        plain function returning the answer (or an awaitable of it) works too."""
        self._handler = handler

    @property
    def open_peers(self) -> list[str]:
        return [self._names.get(k, k) for k in self._open]

    def is_open(self, host: str) -> bool:
        return host.lower() in self._open

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ids = IdGenerator(self._rng, time.time())
        self._stopping = False
        cfg = self.config
        if cfg.listen_address is not None:
            self._server = await self._loop.create_server(
                self._accept, cfg.listen_address, cfg.listen_port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]
        for spec in cfg.peers:
            if spec.address is not None:
                self._connect_tasks.append(self._loop.create_task(self._connect_loop(spec)))

    async def stop(self) -> None:
        """DPR to every open peer, wait (≤ dpa_timeout) for the connections to end, close."""
        self._stopping = True
        for task in self._connect_tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        now = self._loop.time() if self._loop else 0.0
        for conn in list(self._connections):
            conn.core.close(now)
            conn.process()
        waiting = [c.closed for c in self._connections if not c.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=self.config.dpa_timeout + 0.5)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in (*self._handler_tasks, *self._request_tasks):
            task.cancel()
        await asyncio.gather(
            *self._connect_tasks, *self._handler_tasks, *self._request_tasks, return_exceptions=True
        )
        self._connect_tasks.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for waiters in self._open_waiters.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(DiameterRequestError("node stopped", reason="stopped"))
        self._open_waiters.clear()

    async def __aenter__(self) -> DiameterNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_open(self, host: str | None = None, timeout: float | None = None) -> str:
        """Wait until `host` (or any peer) is open; return its host name."""
        if host is None and self._open:
            return self.open_peers[0]
        if host is not None and host.lower() in self._open:
            return host
        fut: asyncio.Future[None] = self._loop.create_future()
        key = host.lower() if host else ""
        self._open_waiters.setdefault(key, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DiameterRequestError(
                f"no open connection to {host or 'any peer'}", reason="no-connection"
            ) from None
        finally:
            waiters = self._open_waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
        return host if host is not None else self.open_peers[0]

    # client ------------------------------------------------------------------------------------

    async def request(
        self, request: Any, peer: str | None = None, timeout: float | None = None
    ) -> Any:
        """Send `request` (a Cx request dataclass or a `codec.Message`) and await its answer.

        `peer`: the host to send to; default the request's Destination-Host when that
        peer is open, else any open peer. Waits up to `timeout` for a connection when
        none is open yet. Returns the Cx answer dataclass (or a `codec.Message`).
        """
        if timeout is None:
            timeout = self.config.request_timeout
        conn = self._pick(request, peer)
        if conn is None:
            if self._stopping:
                raise DiameterRequestError("node stopped", reason="stopped")
            start = self._loop.time()
            await self.wait_open(
                peer or getattr(request, "destination_host", None) or None, timeout
            )
            timeout = max(0.001, timeout - (self._loop.time() - start))
            conn = self._pick(request, peer)
            if conn is None:
                raise DiameterRequestError("no open connection", reason="no-connection")
        is_cx = not isinstance(request, Message)
        core = conn.core
        now = self._loop.time()
        if is_cx:
            hbh = core.send_cx_request(request, now, timeout)
        else:
            hbh = core.send_request(request, now, timeout).hop_by_hop
        fut: asyncio.Future[Message] = self._loop.create_future()
        conn.futures[hbh] = fut
        conn.process()
        try:
            answer = await fut
        except asyncio.CancelledError:
            conn.futures.pop(hbh, None)
            core.cancel_request(hbh)
            raise
        if not is_cx:
            if type(answer) is not Message:  # a Cx answer to a raw request: a plain one
                answer = Message(
                    answer.code,
                    answer.flags,
                    answer.app_id,
                    answer.hop_by_hop,
                    answer.end_to_end,
                    answer.avps,
                )
            return answer
        return self._cx_answer(request, answer)

    def request_callback(
        self,
        request: Any,
        callback: AnswerCallback,
        peer: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """`request()` without a coroutine: `callback(answer, None)` with the Cx answer
        dataclass, or `callback(None, exc)` with the exception `request()` raises. With
        a connection open, no Task and no future: the answer's event calls back. Else
        (waiting for a connection) and for a `codec.Message`, `request()` runs in a Task."""
        conn = None
        if not isinstance(request, Message):
            try:
                conn = self._pick(request, peer)
            except DiameterRequestError as exc:
                callback(None, exc)
                return
        if conn is None:
            task = self._loop.create_task(self.request(request, peer, timeout))
            self._request_tasks.add(task)
            task.add_done_callback(partial(self._request_done, callback))
            return
        hbh = conn.core.send_cx_request(
            request,
            self._loop.time(),
            self.config.request_timeout if timeout is None else timeout,
        )
        conn.futures[hbh] = _Waiter(self, request, callback)  # type: ignore[assignment]
        conn.process()

    def _request_done(self, callback: AnswerCallback, task: asyncio.Task[Any]) -> None:
        self._request_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        try:
            callback(None, exc) if exc is not None else callback(task.result(), None)
        except Exception:
            self.counters["callback-error"] += 1
            log.exception("diameter answer callback failed")

    def _cx_answer(self, request: Any, answer: Message) -> Any:
        """The Cx answer dataclass of `answer` to `request` (or DiameterRequestError)."""
        if answer.code != request.CODE:
            self.counters["answer-wrong-command"] += 1
            raise DiameterRequestError(
                f"answer is command {answer.code}, request was {request.CODE}", reason="bad-answer"
            )
        try:
            return cx.decode(answer)
        except RemoteProtocolError as exc:
            self.counters[exc.reason] += 1
            raise DiameterRequestError(f"undecodable answer: {exc}", reason="bad-answer") from None

    def _pick(self, request: Any, peer: str | None) -> _Connection | None:
        if peer is not None:
            key = peer.lower()
            if key not in self._allowed:
                raise DiameterRequestError(
                    f"{peer} is not a configured peer", reason="no-connection"
                )
            return self._open.get(key)
        dest = getattr(request, "destination_host", None)
        if dest is None and isinstance(request, Message):
            avp = request.find(codec.AVP_DESTINATION_HOST)
            dest = avp.data.decode("utf-8", "replace") if avp is not None else None
        if dest is not None:
            dest = dest.lower()
        if dest is not None and dest in self._open:
            return self._open[dest]
        if dest is not None and dest in self._allowed:
            return None  # wait for that very peer
        for conn in self._open.values():
            return conn
        return None

    async def _connect_loop(self, spec: PeerSpec) -> None:
        loop = self._loop
        while not self._stopping:
            key = spec.host.lower()
            if key not in self._open and key not in self._reopening:
                core = self._new_core(initiator=True, expected_host=spec.host)
                try:
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(
                            lambda core=core: _Connection(self, core), spec.address, spec.port
                        ),
                        self.config.cer_timeout,
                    )
                except (TimeoutError, OSError) as exc:
                    self.counters["connect-failed"] += 1
                    if log.isEnabledFor(logging.INFO):
                        log.info("diameter connect to %s failed: %s", spec.host, exc)
                else:
                    await asyncio.shield(proto.closed)
            if self._stopping:
                break
            await asyncio.sleep(self.config.tc)

    # server -------------------------------------------------------------------------------------

    def _accept(self) -> _Connection:
        return _Connection(self, self._new_core(initiator=False))

    def _new_core(self, *, initiator: bool, expected_host: str | None = None) -> PeerConnection:
        return PeerConnection(
            self._peer_config,
            initiator=initiator,
            now=self._loop.time(),
            allowed_hosts=self._allowed,
            expected_host=expected_host,
            rng=self._rng,
            ids=self._ids,
            duplicates=self._duplicates,
            counters=self.counters,
            reopen_hosts=self._reopen_hosts,
            decode=cx.decode_frame,
        )

    def _dispatch_request(self, conn: _Connection, msg: Message) -> None:
        conn.inflight += 1  # send_answer() takes it back
        if conn.inflight > self.config.max_inflight:
            self.counters["too-busy"] += 1
            conn.send_answer(msg, conn._error(msg, codec.DIAMETER_TOO_BUSY))
            return
        handler = self._handler
        if handler is None:
            self.counters["no-handler"] += 1
            conn.send_answer(msg, conn._error(msg, codec.DIAMETER_UNABLE_TO_DELIVER))
            return
        if msg.app_id == cx.CX_APPLICATION_ID:
            try:
                request: Any = cx.decode(msg)
            except RemoteProtocolError as exc:
                self.counters[exc.reason] += 1
                conn.send_answer(msg, conn._error(msg, exc.result_code, exc.failed_avp))
                return
        else:
            request = msg
        remote = conn.core.remote
        assert remote is not None
        self._dispatching = 1
        try:
            answer = handler(request, remote)
        except RequestRefused as refused:
            self.counters["handler-refused"] += 1
            conn.send_answer(msg, conn._error(msg, refused.result_code))
            return
        except Exception:
            self.counters["handler-error"] += 1
            log.exception("diameter request handler failed")
            conn.send_answer(msg, conn._error(msg, codec.DIAMETER_UNABLE_TO_COMPLY))
            return
        finally:
            self._dispatching = 0
        if type(answer) is not _COROUTINE and not hasattr(answer, "__await__"):
            # A plain function's answer: sent at once, no Task.
            conn.send_answer(msg, answer)
            return
        # An awaitable always runs in a Task: handlers await database pools and locks that
        # need one (asyncio.timeout() refuses to run outside a task).
        task = self._loop.create_task(self._run_handler(conn, msg, answer))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _run_handler(self, conn: _Connection, msg: Message, pending: Awaitable[Any]) -> None:
        try:
            answer = await pending
        except asyncio.CancelledError:
            raise
        except RequestRefused as refused:
            self.counters["handler-refused"] += 1
            conn.send_answer(msg, conn._error(msg, refused.result_code))
            return
        except Exception:
            self.counters["handler-error"] += 1
            log.exception("diameter request handler failed")
            conn.send_answer(msg, conn._error(msg, codec.DIAMETER_UNABLE_TO_COMPLY))
            return
        conn.send_answer(msg, answer)

    # events from connections ----------------------------------------------------------------------

    def _peer_opened(self, conn: _Connection) -> None:
        remote = conn.core.remote
        assert remote is not None
        host = remote.origin_host.lower()
        old = self._open.get(host) or self._reopening.get(host)
        winner = conn
        if old is not None and old is not conn:
            if old.core.initiator != conn.core.initiator:
                # RFC 6733 §5.6.4 election: the higher Origin-Host keeps the connection
                # it initiated. Both ends reach the same verdict, whatever the order.
                we_win = self.config.origin_host.lower() > remote.origin_host.lower()
                winner = conn if conn.core.initiator == we_win else old
                self.counters["election"] += 1
            else:
                # Same direction twice: the peer reconnected while we still held its old
                # connection (half-open); the new one wins.
                self.counters["replaced-connection"] += 1
            loser = old if winner is conn else conn
            if loser.transport is not None:
                loser.transport.abort()
        if winner.core.watchdog is WatchdogState.REOPEN:
            # Not used for requests until its DWAs arrive (_peer_reopened).
            self._open.pop(host, None)
            self._reopening[host] = winner
            self.counters["reopen"] += 1
            return
        self._reopening.pop(host, None)
        self._make_open(host, winner)

    def _peer_reopened(self, conn: _Connection) -> None:
        remote = conn.core.remote
        assert remote is not None
        host = remote.origin_host.lower()
        self._reopen_hosts.discard(host)
        if self._reopening.get(host) is conn:
            del self._reopening[host]
            self._make_open(host, conn)

    def _make_open(self, host: str, conn: _Connection) -> None:
        self._open[host] = conn
        for key in (host, ""):
            for fut in self._open_waiters.pop(key, []):
                if not fut.done():
                    fut.set_result(None)

    def _peer_closed(self, conn: _Connection, event: ConnectionTerminated) -> None:
        remote = conn.core.remote
        if remote is not None:
            host = remote.origin_host.lower()
            if self._open.get(host) is conn:
                del self._open[host]
            if self._reopening.get(host) is conn:
                del self._reopening[host]
            if conn.core.watchdog is not WatchdogState.OKAY and not self._stopping:
                # RFC 3539: a watchdog failure; the next connection starts in REOPEN.
                self._reopen_hosts.add(host)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "diameter connection to %s closed: %s",
                remote.origin_host if remote else conn.remote_addr,
                event.reason,
            )

    def _report(self, conn: _Connection, direction: str, frames: Iterable[bytes]) -> None:
        now = time.time()
        if direction == "out":
            src, dst = conn.local, conn.remote_addr
        else:
            src, dst = conn.remote_addr, conn.local
        owner = self.config.owner
        for frame in frames:
            event = WireEvent(now, direction, "tcp", src, dst, frame, "diameter", owner)
            for observer in self._observers:
                try:
                    observer(event)
                except Exception:
                    log.exception("wire observer failed")


__all__ = [
    "DEFAULT_PORT",
    "DiameterNode",
    "DiameterRequestError",
    "DiameterTimeoutError",
    "LocalProtocolError",
    "NodeConfig",
    "PeerSpec",
    "RemotePeer",
]
