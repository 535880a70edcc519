"""The asyncio SIP endpoint: transports + the transaction layer (RFC 3261 §8, §17, §18).

The thin edge of STYLE rule 9: each received message is parsed and fed to the sans-I/O
`TransactionLayer` with `loop.time()`; its events are drained (sends go out through
the transport they belong to, responses resolve the caller's future, new requests
go to the request handler), and one `call_at` is re-armed for the layer's next
deadline.

For network functions:

    ep = SipEndpoint(owner="pcscf")
    ep.add_transport(await UdpTransport.create("127.0.0.1", 5060))
    ep.set_request_handler(handle)          # handle(request, tx) – sync or async
    resp = await ep.send_request(req, ("127.0.0.1", 5070))   # final response;
        # 408 made locally on Timer B/F, 503 on a transport error
    tx.respond(response) / tx.reply(401, headers=[...])       # server side
    ep.send_stateless(msg, addr)             # ACK for 2xx, stateless forwarding

A stateful proxy (P-CSCF, I-CSCF) forwards inside its handler: `fwd = req.copy()`,
edit it (imsaka.sip.proxy: preprocess_route, add_path, ...), then
`await ep.forward(tx, fwd, next_hop)`: Max-Forwards (483), our Via, 1xx relayed,
the final response relayed upstream with our Via popped, 408/503 on timeout /
transport error. (The same by hand: `check_max_forwards`, `push_via`,
`await ep.send_request(fwd, next_hop, on_provisional=...)`, `pop_via`, `tx.respond`.)
Responses that match no transaction (late 2xx to an INVITE) go to the
`stray_response_handler` (a proxy pops its Via and relays them statelessly).

Bad input: a message that does not parse is answered statelessly (400 with the
fault in the reason phrase, 513 when too large, 505 for another SIP version) when
it is a request with enough Via/Call-ID/CSeq to route the answer, otherwise
dropped; every drop is logged with a named reason and counted in `counters`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from functools import partial

from imsaka.sip.errors import LocalProtocolError, RemoteProtocolError, SipParseError
from imsaka.sip.message import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_SIZE,
    Message,
    Request,
    Response,
    make_response,
    parse_message,
)
from imsaka.sip.proxy import (
    Rng,
    check_max_forwards,
    detect_loop,
    error_phrase,
    error_response_bytes,
    is_request_bytes,
    loop_branch,
    pop_via,
    push_via,
    stamp_received,
    stateless_branch,
    timeout_response,
    unavailable_response,
)
from imsaka.sip.transaction import (
    AckReceived,
    Dropped,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    TransportError,
)
from imsaka.sip.transport import SipTransport
from imsaka.sip.uri import host_ip
from imsaka.wire import Address

log = logging.getLogger(__name__)

_DEST_CACHE = 4096
#: requests a server not yet ready holds for its handler (`SipEndpoint.hold_requests`)
MAX_HELD = 1000
_INF = float("inf")

RequestHandler = Callable[[Request, "ServerTx"], Awaitable[None] | None]
ResponseCallback = Callable[[Response], None]
StrayHandler = Callable[[Response, Address, SipTransport], None]
AckHandler = Callable[[Request, Address, SipTransport], None]
StatelessHandler = Callable[[Request, Address, SipTransport], bool]


class ServerTx:
    """The TU's handle on one server transaction."""

    __slots__ = ("_due", "_endpoint", "final_sent", "key", "request", "source", "transport")

    def __init__(
        self,
        endpoint: SipEndpoint,
        key: tuple,
        request: Request,
        source: Address,
        transport: SipTransport,
    ) -> None:
        self._endpoint = endpoint
        self.key = key
        self.request = request
        self.source = source
        self.transport = transport
        self.final_sent = False
        # when the endpoint answers 500 for an application that never answered (a
        # non-INVITE request); None while not waiting in the endpoint's answer queue
        self._due: float | None = None

    def respond(self, response: Response) -> None:
        """Send a response through the transaction (retransmitted as §17.2 says)."""
        ep = self._endpoint
        if response.status >= 200:
            self.final_sent = True
            if self._due is not None:
                # answered: out of the endpoint's table, so the request is not kept
                # alive for the answer timeout (its queue entry is skipped)
                self._due = None
                if ep._awaiting.get(self.key) is self:
                    del ep._awaiting[self.key]
        loop = ep._loop  # (ep._now() inline: one call less per request)
        now = (loop if loop is not None else ep._get_loop()).time()
        try:
            ep.layer.respond(self.key, response, now)
        finally:
            ep._drain()
        if (
            200 <= response.status < 300
            and self.request.method == "INVITE"
            and not self.transport.reliable
        ):
            ep._retransmit_2xx(self, response)

    def reply(
        self,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Build (make_response) and send a response; returns it."""
        resp = make_response(
            self.request, status, reason, to_tag=to_tag, headers=headers, body=body
        )
        self.respond(resp)
        return resp


class _Callback:
    """A `send_request_callback` call where `send_request`'s future stands in the
    endpoint's pending table (`done`, `set_result`, `cancel`): the final response leaves
    the table and goes to the callback at once."""

    __slots__ = ("callback", "endpoint", "finished", "key")

    def __init__(
        self, endpoint: SipEndpoint, key: tuple, callback: Callable[[Response], None]
    ) -> None:
        self.endpoint = endpoint
        self.key = key
        self.callback = callback
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def cancel(self) -> None:
        self.finished = True

    def set_result(self, response: Response) -> None:
        self.finished = True
        ep = self.endpoint
        ep._pending.pop(self.key, None)
        ep._refused.discard(self.key)
        try:
            self.callback(response)
        except Exception:  # the TU's callback must not break the event drain
            ep.counters["callback_errors"] += 1
            log.exception("sip %s: response callback failed", ep.owner)


class SipEndpoint:
    """Transports + transaction layer + handlers, on the running asyncio loop."""

    def __init__(
        self,
        *,
        owner: str = "",
        timers: TimerConfig | None = None,
        rng: Rng | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        auto_trying: bool = True,
        answer_timeout: float | None = None,
    ) -> None:
        if not isinstance(max_size, int) or max_size < 512:
            raise ValueError("max_size: must be an integer of at least 512 octets")
        if not isinstance(max_headers, int) or max_headers < 16:
            raise ValueError("max_headers: must be an integer of at least 16")
        if answer_timeout is not None and answer_timeout <= 0:
            raise ValueError("answer_timeout: must be a positive number of seconds")
        self.owner = owner
        self.rng = rng
        # a non-INVITE request the application never answers would keep its server
        # transaction (Trying has no timer, §17.2.2) for ever: answer 500 after this,
        # later than Timer F + T4 so that a proxy's own 408 (forward) always comes first
        t = timers or TimerConfig()
        self.answer_timeout = answer_timeout if answer_timeout is not None else 64 * t.t1 + t.t4
        self.max_size = max_size
        self.max_headers = max_headers
        self.layer = TransactionLayer(
            config=timers or TimerConfig(),
            reliable=lambda dest: dest[0].reliable,
            auto_trying=auto_trying,
        )
        self.counters: Counter = Counter()
        self.transports: list[SipTransport] = []
        self._handler: RequestHandler | None = None
        self._stray: StrayHandler | None = None
        self._ack: AckHandler | None = None
        self._stateless: StatelessHandler | None = None
        self._pending: dict[tuple, tuple[asyncio.Future, ResponseCallback | None, Request]] = {}
        self._unacked: dict[tuple, list] = {}  # 2xx to INVITE awaiting their ACK
        self._refused: set[tuple] = set()  # pending keys that ended in a transport error
        # One tuple object per (transport, address) a transaction sends to: a server
        # sees the same few peers over and over, and each transaction keeps its
        # destination until Timer J/K (bounded: cleared when it grows past _DEST_CACHE)
        self._destinations: dict[tuple, tuple] = {}
        # Non-INVITE requests the application has not answered yet, for the 500 after
        # `answer_timeout`: key -> ServerTx (out when answered), and (due, key) in
        # arrival order (the timeout is one constant, so the head is due first). The
        # endpoint's own timer serves them: no loop timer made and cancelled per request.
        self._awaiting: dict[tuple, ServerTx] = {}
        self._answer_due: deque[tuple[float, tuple]] = deque()
        # `hold_requests`: the requests that came before the handler (None: not holding)
        self._held: list[ServerTx] | None = None

        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # the earliest answer timeout queued since `_rearm` last looked (see there)
        self._due_min = _INF
        self._tick = t.t1 / 10
        # Timer wake-ups on a grid of T1/10 (`TimerConfig.wake_up_at`). A busy server
        # ends one transaction per request (Timer J/K, 5 s and 32 s after its final)
        # and woke up once for each before, ~35 us of loop and timer work each.
        self._timers = t
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- setup ------------------------------------------------------------------------

    def add_transport(self, transport: SipTransport) -> SipTransport:
        transport.set_receiver(self._on_message)
        transport.set_error_handler(
            lambda addr, exc, t=transport: self._on_send_error(t, addr, exc)
        )
        self.transports.append(transport)
        return transport

    def transport(self, name: str = "udp") -> SipTransport:
        for t in self.transports:
            if t.name == name:
                return t
        raise LocalProtocolError(f"transport: no {name} transport on this endpoint")

    def set_request_handler(self, handler: RequestHandler | None) -> None:
        self._handler = handler
        held, self._held = self._held, None
        if handler is not None and held:
            for tx in held:
                if not tx.final_sent:  # (not answered 500 by the timeout meanwhile)
                    self._hand_over(tx, handler)

    def hold_requests(self) -> None:
        """Until `set_request_handler` gives the handler, requests wait for it (at most
        `answer_timeout`, then 500; at most `MAX_HELD` of them) instead of getting 501.
        For a server that binds its sockets before it is ready to serve: a restarted
        one, whose peers' retransmissions arrive at once (and over TCP would not come
        again)."""
        if self._handler is None and self._held is None:
            self._held = []

    def set_stray_response_handler(self, handler: StrayHandler | None) -> None:
        self._stray = handler

    def set_ack_handler(self, handler: AckHandler | None) -> None:
        """ACKs outside any transaction (to a 2xx; §13.2.2.4, §17.2.3)."""
        self._ack = handler

    def set_stateless_handler(self, handler: StatelessHandler | None) -> None:
        """A hook run on every request before the transaction layer: returning True
        consumes it (a proxy forwarding statelessly, §16.11, with
        `forward_stateless`); False lets it go on to a server transaction."""
        self._stateless = handler

    def forward_stateless(
        self, request: Request, addr: Address, transport: SipTransport | None = None
    ) -> None:
        """§16.11: forward without a transaction. Max-Forwards checked (483 sent
        back statelessly), our Via pushed with a branch that is the same for every
        retransmission of the request, so the next hop's transaction matches them.
        Responses come back as stray responses: `relay_stray_responses()`."""
        too_many = check_max_forwards(request)
        if too_many is not None:
            if request.method != "ACK":
                via = request.top_via
                t = transport or self.transports[0]
                t.send(too_many.to_bytes(), via.response_address())
            return
        t = transport or self.transports[0]
        host, port = t.local_address
        push_via(request, t.name.upper(), host, port, branch=stateless_branch(request))
        t.send(request.to_bytes(), addr)
        self.counters["forwarded_stateless"] += 1

    def pending_count(self) -> int:
        """Requests sent by `send_request`/`forward` still awaiting their final response."""
        return len(self._pending)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._awaiting.clear()
        self._answer_due.clear()
        for task in list(self._tasks):
            task.cancel()
        for entry in self._unacked.values():
            if entry[2] is not None:
                entry[2].cancel()
        self._unacked.clear()
        for fut, _, _ in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        for t in self.transports:
            await t.close()

    # -- client side ------------------------------------------------------------------

    async def send_request(
        self,
        request: Request,
        addr: Address,
        *,
        transport: SipTransport | None = None,
        on_provisional: ResponseCallback | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send `request` in a client transaction and wait for its final response.
        A request without Via gets ours (with rport and a fresh branch). Timer B/F
        gives a local 408, a transport error a local 503; `timeout` (seconds) bounds
        the wait also when 1xx keep the transaction alive (a 408 is returned)."""
        t = transport or (self.transports[0] if self.transports else None)
        if t is None:
            raise LocalProtocolError("transport: the endpoint has none")
        if transport is None:
            stream = self.stream_for(request, t)
            if stream is not None:
                resp, refused = await self._send(request, addr, stream, on_provisional, timeout)
                if not refused:
                    return resp
                # the connection failed: §18.1.1 says retry over UDP
                self.counters["tcp_fallback_to_udp"] += 1
                request.pop_first("via")
        resp, _ = await self._send(request, addr, t, on_provisional, timeout)
        return resp

    def stream_for(self, request: Request, transport: SipTransport) -> SipTransport | None:
        """The stream transport `send_request` carries `request` over instead of the
        datagram `transport` (RFC 3261 §18.1.1: a request within 200 octets of a
        1500-octet MTU, over 1300 with ~120 for the Via we add, goes over a
        congestion-controlled transport), or None to send it as asked."""
        if transport.reliable or request.has("via") or len(request.to_bytes()) + 120 <= 1300:
            return None
        return next((x for x in self.transports if x.reliable), None)

    def send_request_callback(
        self,
        request: Request,
        addr: Address,
        transport: SipTransport,
        callback: Callable[[Response], None],
    ) -> tuple:
        """`send_request` without a coroutine: `callback(response)` gets the final
        response (the local 408 on Timer B/F, 503 on a transport error, as there) from
        the endpoint's event handling, so a proxy forwarding many requests needs no Task
        each. The caller names the transport (no §18.1.1 switch to a stream); no 1xx
        callback, no timeout of its own; `close()` drops the call. Returns the client
        transaction's key (`abandon_request`)."""
        if not request.has("via"):
            host, port = transport.local_address
            push_via(
                request,
                transport.name.upper(),
                host,
                port,
                rng=self.rng,
                rport=not transport.reliable,
            )
        loop = self._loop
        now = (loop if loop is not None else self._get_loop()).time()
        key = self.layer.send_request(request, self._dest((transport, addr)), now).key
        self._pending[key] = (_Callback(self, key, callback), None, request)  # type: ignore[assignment]
        self._drain()
        return key

    def abandon_request(self, key: tuple) -> None:
        """Client transaction `key` ends here, its callback never called: the request
        is sent no more (the caller takes it elsewhere, and may use the same branch)."""
        self.layer.abandon(key)
        self._pending.pop(key, None)
        self._rearm()

    @property
    def closed(self) -> bool:
        """`close()` was called: handlers' late work (an answer from elsewhere) is moot."""
        return self._closed

    def handler_failed(self, tx: ServerTx, exc: Exception) -> None:
        """A request handler's failure found after it returned (a callback of its): the
        answer an async handler's failure gets (400 for the peer's fault, else 500)."""
        if not self._closed:
            self._handler_failed(tx, exc)

    async def _send(
        self,
        request: Request,
        addr: Address,
        t: SipTransport,
        on_provisional: ResponseCallback | None,
        timeout: float | None,
    ) -> tuple[Response, bool]:
        """One client transaction; also says whether it ended in a transport error."""
        if not request.has("via"):
            host, port = t.local_address
            push_via(request, t.name.upper(), host, port, rng=self.rng, rport=not t.reliable)
        fut = self._get_loop().create_future()
        # the transaction's key, computed once (its sends wait in the layer's queue
        # until the drain below); a refused request (a branch in use) leaves the
        # pending entry of the transaction that has it alone
        key = self.layer.send_request(request, self._dest((t, addr)), self._now()).key
        self._pending[key] = (fut, on_provisional, request)
        self._drain()
        try:
            if timeout is None:
                resp = await fut
            else:
                try:
                    resp = await asyncio.wait_for(asyncio.shield(fut), timeout)
                except TimeoutError:
                    # like a proxy's Timer C (§16.6 step 11): give up waiting; the
                    # transaction itself still ends by its own timers
                    self.counters["timeout"] += 1
                    return timeout_response(request), False
            return resp, key in self._refused
        finally:
            self._pending.pop(key, None)
            self._refused.discard(key)

    async def forward(
        self,
        tx: ServerTx,
        request: Request,
        addr: Address,
        *,
        transport: SipTransport | None = None,
        relay_provisional: bool = True,
    ) -> Response:
        """Stateful forwarding (§16.6–§16.7) of `request` (the TU's already edited copy
        of tx.request: Route/Path/P-headers done) to `addr`: Max-Forwards checked and
        decremented (483 answered here), a loop answered 482 (§16.3 step 4; spirals
        pass), our Via pushed (its branch carries the loop hash), 1xx (but 100) relayed, the
        final response relayed with our Via popped. A timeout gives 408 upstream, a
        transport error 503. Returns the response sent upstream."""
        too_many = check_max_forwards(request)
        if too_many is None:
            too_many = detect_loop(request, self._is_our_via)
        if too_many is not None:
            tx.respond(too_many)
            return too_many
        t = transport or self.transports[0]
        host, port = t.local_address
        push_via(request, t.name.upper(), host, port, branch=loop_branch(request, self.rng))

        def provisional(resp: Response) -> None:
            if relay_provisional and resp.status > 100 and not tx.final_sent:
                up = resp.copy()
                pop_via(up)
                tx.respond(up)

        resp = await self.send_request(request, addr, transport=t, on_provisional=provisional)
        up = resp.copy()
        pop_via(up)
        if not tx.final_sent:
            tx.respond(up)
        return up

    def _is_our_via(self, via) -> bool:
        host = host_ip(via.host)
        return any(
            via.port == t.local_address[1]
            and (host == t.local_address[0] or t.local_address[0] in ("0.0.0.0", "::"))
            for t in self.transports
        )

    def relay_stray_responses(self) -> None:
        """Act as a proxy for responses that match no transaction (§16.7 step 3,
        §18.2.2): pop our Via and send the response on to the next Via."""
        self.set_stray_response_handler(self._relay_stray)

    def _relay_stray(self, response: Response, addr: Address, transport: SipTransport) -> None:
        up = response.copy()
        try:
            ours = pop_via(up)
            vias = up.via
        except SipParseError as exc:
            self._drop("stray response with a bad Via", addr, exc.reason)
            return
        local = {(t.local_address[1], t.name.upper()) for t in self.transports}
        if ours is None or (ours.port, ours.transport) not in local or not vias:
            self._drop("stray response not for us", addr)
            return
        nxt = vias[0]
        for t in self.transports:
            if t.name.upper() == nxt.transport:
                t.send(up.to_bytes(), nxt.response_address())
                self.counters["relayed_stray"] += 1
                return
        self._drop("no transport to relay a stray response", addr, nxt.transport)

    def send_stateless(
        self, msg: Message, addr: Address, transport: SipTransport | None = None
    ) -> None:
        """Send without a transaction (ACK to a 2xx, stateless forwarding §16.11)."""
        t = transport or self.transports[0]
        t.send(msg.to_bytes(), addr)

    # -- receive path -----------------------------------------------------------------

    def _on_message(self, data: bytes, source: Address, transport: SipTransport) -> None:
        if self._closed:
            return
        self.counters["received"] += 1
        try:
            msg = parse_message(data, max_size=self.max_size, max_headers=self.max_headers)
        except SipParseError as exc:
            self._bad_input(data, source, transport, exc)
            return
        loop = self._loop
        now = (loop if loop is not None else self._get_loop()).time()
        try:
            if isinstance(msg, Request):
                stamp_received(msg, source[0], source[1])
                if self._stateless is not None and self._stateless(msg, source, transport):
                    self._drain()
                    return
                # §18.2.2: over a stream the response uses the same connection; over
                # UDP it goes to received/rport/sent-by, unless the transport says
                # responses return to the packet's source (an IPsec transport whose
                # SA pairs fix the ports, TS 33.203 §7.1)
                if transport.reliable and hasattr(transport, "has_connection"):
                    # the same connection; if it is gone by then, a new one to
                    # received + sent-by port (§18.2.2)
                    via = msg.top_via
                    fallback = (via.received or host_ip(via.host), via.port or 5060)
                    reply_to = (transport, source, fallback)
                elif transport.reliable or getattr(transport, "respond_to_source", False):
                    reply_to = (transport, source)
                else:
                    reply_to = (transport, msg.top_via.response_address())
                self.layer.receive_request(msg, (transport, source), now, self._dest(reply_to))
            else:
                self.layer.receive_response(msg, (transport, source), now)
        except SipParseError as exc:  # a typed view used for matching (Via, CSeq, From)
            self._bad_input(data, source, transport, exc)
        except LocalProtocolError as exc:  # overload (max_transactions)
            self._drop("overload", source, str(exc))
            if isinstance(msg, Request) and msg.method != "ACK":
                transport.send(make_response(msg, 503).to_bytes(), source)
        self._drain()

    def _dest(self, destination: tuple) -> tuple:
        cache = self._destinations
        known = cache.get(destination)
        if known is not None:
            return known
        if len(cache) >= _DEST_CACHE:
            cache.clear()
        cache[destination] = destination
        return destination

    def _bad_input(
        self, data: bytes, source: Address, transport: SipTransport, exc: SipParseError
    ) -> None:
        self.counters["parse_errors"] += 1
        answer = None
        if is_request_bytes(data):
            answer = error_response_bytes(data[: self.max_size], exc.status, exc.reason)
        if answer is not None:
            self.counters["answered_errors"] += 1
            log.info("sip %s: %s from %s: answered %s", self.owner, exc.reason, source, exc.status)
            transport.send(answer, source)
        else:
            self._drop("unparseable", source, exc.reason)

    def _drop(self, trigger: str, source: Address | None = None, detail: str = "") -> None:
        """Count under a fixed trigger name (bounded set of counter keys, whatever the
        peer sends); the detail goes to the log only."""
        self.counters["dropped"] += 1
        self.counters[f"dropped: {trigger}"] += 1
        log.info(
            "sip %s: dropped (%s%s%s) from %s",
            self.owner,
            trigger,
            ": " if detail else "",
            detail,
            source,
        )

    def _on_send_error(self, transport: SipTransport, addr: Address, exc: Exception) -> None:
        now = self._now()
        for key in list(self._pending):
            tx = self.layer.client_transaction(key)
            if tx is not None and tx.destination == (transport, addr):
                self.layer.transport_error(key, now)
        self._drain()

    # -- event loop glue --------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _now(self) -> float:
        loop = self._loop
        return (loop if loop is not None else self._get_loop()).time()

    def _drain(self) -> None:
        layer = self.layer
        events = layer._events  # what next_event() pops, read here without a call each
        while events:
            ev = events.popleft()
            kind = type(ev)
            if kind is Transmit:
                dest = ev.destination
                transport, addr = dest[0], dest[1]
                if len(dest) > 2 and not transport.has_connection(addr):
                    addr = dest[2]
                transport.send(ev.data, addr)
            elif kind is ResponseReceived:
                self._deliver_response(ev.key, ev.response)
            elif kind is RequestReceived:
                self._deliver_request(ev)
            elif kind is TransactionTimeout:
                self._resolve(ev.key, lambda req: timeout_response(req), "timeout")
                if ev.timer == "H":
                    self._drop("Timer H: no ACK for the final response")
            elif kind is TransportError:
                if ev.key in self._pending:
                    self._refused.add(ev.key)
                self._resolve(ev.key, unavailable_response, "transport error")
            elif kind is StrayResponse:
                transport, addr = ev.source
                if self._stray is not None:
                    self._stray(ev.response, addr, transport)
                else:
                    self._drop("response matches no transaction", addr)
            elif kind is AckReceived:
                self._acked(ev.request)
                if self._ack is not None:
                    tx = layer.server_transaction(ev.key)
                    src = tx.destination if tx is not None else (None, None)
                    self._ack(ev.request, src[1], src[0])
            elif kind is Dropped:
                self.counters["dropped"] += 1
                self.counters[f"dropped: {ev.reason}"] += 1
                log.info("sip %s: dropped (%s %s)", self.owner, ev.reason, ev.detail)
            elif kind is TransactionTerminated:
                pass
        self._rearm()

    def _deliver_response(self, key: tuple, response: Response) -> None:
        entry = self._pending.get(key)
        if entry is None:
            # a 2xx retransmission of an INVITE after the caller got its answer
            if self._stray is not None:
                tx = self.layer.client_transaction(key)
                if tx is not None:
                    transport, addr = tx.destination
                    self._stray(response, addr, transport)
            return
        fut, on_provisional, _ = entry
        if response.status < 200:
            if on_provisional is not None:
                try:
                    on_provisional(response)
                except Exception:  # the TU's callback must not break the loop
                    log.exception("sip %s: provisional callback failed", self.owner)
            return
        if not fut.done():
            fut.set_result(response)

    def _resolve(self, key: tuple, build: Callable[[Request], Response], why: str) -> None:
        entry = self._pending.get(key)
        if entry is None:
            return
        fut, _, req = entry
        if not fut.done():
            self.counters[why] += 1
            fut.set_result(build(req))

    def _deliver_request(self, ev: RequestReceived) -> None:
        transport, addr = ev.source
        req = ev.request
        if ev.key is None:  # ACK without a transaction (the ACK to a 2xx)
            self._acked(req)
            if self._ack is not None:
                self._ack(req, addr, transport)
            return
        tx = ServerTx(self, ev.key, req, addr, transport)
        if req.method == "CANCEL":
            self._cancel(tx)
            return
        handler = self._handler
        if handler is None:
            held = self._held
            if held is not None and len(held) < MAX_HELD and req.method != "ACK":
                held.append(tx)
                if req.method != "INVITE":
                    self._await_answer(tx)
                return
            tx.reply(501 if req.method != "ACK" else 200)
            return
        self._hand_over(tx, handler)

    def _await_answer(self, tx: ServerTx) -> None:
        """`tx` is answered later (an async handler, a parked transaction): 500 after
        `answer_timeout` if never."""
        loop = self._loop
        due = (loop if loop is not None else self._get_loop()).time() + self.answer_timeout
        tx._due = due
        if due < self._due_min:
            self._due_min = due
        self._awaiting[tx.key] = tx
        self._answer_due.append((due, tx.key))

    def _hand_over(self, tx: ServerTx, handler: RequestHandler) -> None:
        req = tx.request
        try:
            result = handler(req, tx)
        except Exception as exc:
            self._handler_failed(tx, exc)
            return
        if not tx.final_sent and req.method != "INVITE" and tx._due is None:
            self._await_answer(tx)
        if result is not None and inspect.isawaitable(result):
            # the handler's coroutine is the task (no wrapper coroutine per request);
            # its failure is read in the done callback
            task = self._get_loop().create_task(
                result if inspect.iscoroutine(result) else self._await(result)
            )
            self._tasks.add(task)
            task.add_done_callback(partial(self._handler_done, tx))

    # -- §13.3.1.4: the UAS core retransmits its 2xx to an INVITE until the ACK ---------

    @staticmethod
    def _dialog_key(msg: Message) -> tuple | None:
        try:
            return (msg.call_id, msg.cseq.seq, msg.from_.tag)
        except SipParseError:
            return None

    def _retransmit_2xx(self, tx: ServerTx, response: Response) -> None:
        key = self._dialog_key(tx.request)
        stx = self.layer.server_transaction(tx.key)
        if key is None or key in self._unacked or stx is None:
            return
        t1 = self.layer.config.t1
        transport, addr = stx.destination[0], stx.destination[1]
        data = response.to_bytes()
        entry: list = [t1, self._now() + 64 * t1, None]
        self._unacked[key] = entry

        def fire() -> None:
            if self._unacked.get(key) is not entry or self._closed:
                return
            self.counters["2xx_retransmissions"] += 1
            transport.send(data, addr)
            entry[0] = min(2 * entry[0], self.layer.config.t2)
            arm()

        def arm() -> None:
            if self._now() + entry[0] > entry[1]:
                del self._unacked[key]
                self._drop("2xx to INVITE never acknowledged", addr, tx.request.call_id or "")
                return
            entry[2] = self._get_loop().call_later(entry[0], fire)

        arm()

    def _acked(self, ack: Request) -> None:
        key = self._dialog_key(ack)
        entry = self._unacked.pop(key, None) if key is not None else None
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    def _answer_head(self) -> float | None:
        """When the oldest unanswered request is due its 500; answered ones at the head
        of the queue leave it here."""
        queue = self._answer_due
        awaiting = self._awaiting
        while queue:
            due, key = queue[0]
            tx = awaiting.get(key)
            if tx is not None and tx._due == due:
                return due
            queue.popleft()  # answered (or the key now names a later request)
        return None

    def _answer_overdue(self, now: float) -> None:
        queue = self._answer_due
        awaiting = self._awaiting
        while queue and queue[0][0] <= now:
            due, key = queue.popleft()
            tx = awaiting.get(key)
            if tx is None or tx._due != due:
                continue
            del awaiting[key]
            tx._due = None
            self._check_answered(tx)

    def _check_answered(self, tx: ServerTx) -> None:
        if tx.final_sent or self._closed or self.layer.server_transaction(tx.key) is None:
            return
        self._drop("no answer from the application", tx.source, tx.request.method)
        try:
            tx.reply(500, "Server Internal Error (no answer)")
        except LocalProtocolError:
            pass

    @staticmethod
    async def _await(result: Awaitable[None]) -> None:
        await result

    def _handler_done(self, tx: ServerTx, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Exception) and not self._closed:
            self._handler_failed(tx, exc)

    def _handler_failed(self, tx: ServerTx, exc: Exception) -> None:
        if isinstance(exc, RemoteProtocolError):
            # the peer's fault found while handling (a typed view that does not
            # parse): the answer it carries, e.g. 400 naming the header
            self.counters["bad_requests"] += 1
            log.info("sip %s: %s in %s", self.owner, exc, tx.request)
            status, reason = exc.status, error_phrase(exc.status, exc.reason)
        else:
            self.counters["handler_errors"] += 1
            log.error(
                "sip %s: request handler failed on %s: %r",
                self.owner,
                tx.request,
                exc,
                exc_info=exc,
            )
            status, reason = 500, None
        if not tx.final_sent:
            try:
                tx.reply(status, reason)
            except LocalProtocolError:
                pass

    def _cancel(self, tx: ServerTx) -> None:
        """§9.2: 200 to the CANCEL and 487 to the INVITE if it is still pending."""
        target = self.layer.find_cancel_target(tx.request)
        if target is None or target.last_status >= 200:
            tx.reply(481)
            return
        tx.reply(200)
        self.layer.respond(
            target.key, make_response(target.request, 487, to_tag=_tag()), self._now()
        )
        self._drain()

    def _rearm(self) -> None:
        if self._closed:
            return
        layer = self.layer
        at = self._timer_at
        tick = self._tick
        if at is not None and at <= layer._armed_min + tick and at <= self._due_min + tick:
            # armed, and nothing armed since is due before this wake-up's grid step:
            # the older deadlines are not either (the last look armed for the earliest),
            # so the look below would keep it too; one difference: with nothing left
            # the wake-up stays (it finds nothing due and stops) instead of cancelled
            layer._armed_min = self._due_min = _INF
            return
        layer._armed_min = self._due_min = _INF
        deadline = layer.next_deadline()
        if self._answer_due:
            due = self._answer_head()
            if due is not None and (deadline is None or due < deadline):
                deadline = due
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if at is not None and at <= deadline + tick:
            # armed for this deadline's grid step, or before it: an earlier wake-up
            # finds nothing due and arms again. (A transaction that ends before its
            # retransmission timer, the usual case, leaves the wake-up for that timer
            # armed; moving it later on every message cost a loop timer each time.)
            return
        if self._timer is not None:
            self._timer.cancel()
        at = self._timers.wake_up_at(deadline)
        self._timer_at = at
        self._timer = self._get_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        if self._answer_due:
            self._answer_overdue(now)
        self.layer.handle_timer(now)
        self._drain()


def _tag() -> str:
    import os

    return os.urandom(4).hex()


__all__ = ["ServerTx", "SipEndpoint"]
