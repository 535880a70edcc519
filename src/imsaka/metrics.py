"""Prometheus metrics of one running network function (``imsaka run FUNCTION``).

Nothing is counted twice: at scrape time the collector reads what the function's server
already keeps, so a scrape costs nothing between scrapes and shows the live state:

- ``imsaka_state{function, kind}`` (gauge): the server's ``census()``: live per-UE and
  per-transaction state (P-CSCF SA sets and registration records, S-CSCF bindings and
  open challenges, SIP transactions waiting for a final response, Diameter requests
  unanswered and handlers running, ...). After every UE has de-registered and the
  network is quiet, every kind except ``cached_vectors`` and the P-CSCF's own
  ``subscribe_entries`` is 0: anything else is state left behind.
- ``imsaka_events_total{function, source, event}`` (counter): the counters the layers
  keep (``source``: the function's own core, ``sip_endpoint``, ``sip_transactions``,
  ``diameter``, ``hss_cx``, ``pcscf_drops``, ``esp_drops``): registrations accepted,
  challenges, drops by named trigger, retransmissions, Diameter errors, ...
- ``process_*``: CPU seconds, resident memory, open files of the process
  (prometheus_client's process collector), so CPU per registration is
  ``rate(process_cpu_seconds_total[1m]) / rate(imsaka_events_total{event="registered"}[1m])``.
- ``imsaka_info{function, version}``: always 1.

`MetricsServer` serves them over HTTP (``GET /metrics``, text or OpenMetrics format as
the scraper's Accept header asks) on the function's own event loop: the collector runs
between two callbacks of that loop, so it sees a consistent state and never races the
code that changes it (prometheus_client's own HTTP server would run it in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from imsaka import __version__

__all__ = [
    "FunctionCollector",
    "MetricsServer",
    "parse_metrics",
    "registry_for",
    "scrape",
    "serve_with_metrics",
]

log = logging.getLogger("imsaka.metrics")

# Counters kept by the layers a server holds, as (source label, attribute path). A path
# that does not exist on a server is skipped (each function holds only some layers).
_COUNTER_SOURCES: tuple[tuple[str, str], ...] = (
    ("icscf", "icscf.counters"),
    ("scscf", "scscf.core.counters"),
    ("hss_cx", "service.counters"),
    ("sip_endpoint", "endpoint.counters"),
    ("sip_transactions", "endpoint.layer.counters"),
    ("diameter", "node.counters"),
)
# PcscfServer.stats() mixes state (reported by census()) with counters: these are state.
_PCSCF_STATE = frozenset({"registrations", "pending", "sas", "sa_sets"})

# Bounds of the HTTP side: a scraper sends one small GET.
_MAX_HEAD = 8192
_READ_TIMEOUT = 10.0


def _path(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _numbers(values: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield str(key), float(value)


class FunctionCollector:
    """Reads one server's ``census()`` and counters when Prometheus scrapes.

    `server` is a PcscfServer, IcscfServer, ScscfServer or HssServer (anything with
    ``census() -> dict[str, int]``); `function` is its label value.
    """

    def __init__(self, function: str, server: Any) -> None:
        self.function = function
        self.server = server

    def describe(self) -> list[Metric]:
        return []  # labels come and go with the server's state: no fixed description

    def collect(self) -> Iterator[Metric]:
        f = self.function
        info = GaugeMetricFamily(
            "imsaka_info", "imsaka network function", labels=["function", "version"]
        )
        info.add_metric([f, __version__], 1)
        yield info
        state = GaugeMetricFamily(
            "imsaka_state",
            "Live per-UE and per-transaction state of the function (its census())",
            labels=["function", "kind"],
        )
        for kind, value in _numbers(self._census()):
            state.add_metric([f, kind], value)
        yield state
        events = CounterMetricFamily(
            "imsaka_events",
            "Events counted by the function's layers (drops by trigger, retransmissions, ...)",
            labels=["function", "source", "event"],
        )
        for source, counters in self._counter_sources():
            for event, value in _numbers(counters):
                events.add_metric([f, source, event], value)
        yield events

    def _census(self) -> Mapping[str, Any]:
        try:
            return self.server.census()
        except Exception:  # a scrape must never take the function down
            log.exception("%s: census() failed", self.function)
            return {}

    def _counter_sources(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        stats = getattr(self.server, "stats", None)
        if callable(stats):  # the P-CSCF: its core's counters, drops and ESP drops
            try:
                values = stats()
            except Exception:
                log.exception("%s: stats() failed", self.function)
                values = {}
            flat = {}
            for key, value in values.items():
                if isinstance(value, Mapping):
                    yield (f"{self.function}_{key}" if key == "drops" else key), value
                elif key not in _PCSCF_STATE:
                    flat[key] = value
            yield self.function, flat
        for source, dotted in _COUNTER_SOURCES:
            counters = _path(self.server, dotted)
            if isinstance(counters, Mapping):
                yield source, counters


def registry_for(function: str, server: Any, *, process: bool = True) -> CollectorRegistry:
    """A registry with the function's collector (and the process collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FunctionCollector(function, server))
    if process:
        ProcessCollector(registry=registry)
    return registry


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a scrape in the text format: ``(name, sorted labels) -> value``
    (for tests and tools: ``imsaka_state`` of a function as a dict)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(url: str, *, timeout: float = 10.0) -> str:
    """GET `url` (``http://HOST:PORT/metrics``) and return the body (text format);
    `OSError` when the endpoint does not answer 200 within `timeout` seconds."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"not an http://HOST:PORT/ URL: {url!r}")

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(
                f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(get(), timeout)
    except TimeoutError:
        raise OSError(f"{url}: no answer within {timeout} s") from None
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise OSError(f"{url}: {status.decode('latin-1', 'replace')!r}")
    return body.decode("utf-8")


class MetricsServer:
    """HTTP ``GET /metrics`` on the running event loop (`start`/`close`).

    Only what a scraper needs: one request per connection, ``GET``/``HEAD``, the head
    capped at 8 KiB and read within 10 s; ``/metrics`` (and ``/``) answered, anything
    else 404/405.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0: the kernel's choice)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=_MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.host, self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        try:
            status, ctype, body, head_only = self._answer(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            if not head_only:
                writer.write(body)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, bytes, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", text, b"bad request line\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"GET /metrics\n", False
        if target not in ("/metrics", "/"):
            return "404 Not Found", text, b"metrics are at /metrics\n", method == "HEAD"
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        self.scrapes += 1
        return "200 OK", content_type, encoder(self.registry), method == "HEAD"


async def serve_with_metrics(
    function: str,
    server: Any,
    listen: tuple[str, int] | None,
    serve: Callable[[], Any],
    *,
    announce: Callable[[str], None] = print,
    field: str = "",
) -> int:
    """Run ``await serve()`` (the function's own serve-until-signal coroutine) with a
    `MetricsServer` for `server` listening on `listen` (None: no metrics) meanwhile.
    Prints one line ``FUNCTION metrics on http://HOST:PORT/metrics`` once it listens;
    `field` names where `listen` came from in the error when it cannot listen."""
    from imsaka.clierror import CliError

    metrics = None
    if listen is not None:
        metrics = MetricsServer(registry_for(function, server), *listen)
        try:
            await metrics.start()
        except OSError as exc:
            raise CliError(
                f"{field or f'[metrics].{function}'}: cannot listen on {listen[0]}:{listen[1]}: "
                f"{exc.strerror or exc}"
            ) from None
        announce(f"{function} metrics on {metrics.url}")
    try:
        return int(await serve() or 0)
    finally:
        if metrics is not None:
            await metrics.close()
