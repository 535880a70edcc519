"""The whole IMS core in one process on loopback: HSS, S-CSCF, I-CSCF, P-CSCF.

Used by `imsaka demo`, `imsaka lab` and the end-to-end tests. Every function keeps its
own sockets (SIP over UDP/TCP, Diameter Cx over TCP, ESP-in-UDP at the P-CSCF's
protected ports), so what they exchange is a real trace (DESIGN.md: "even then they
talk over real sockets"). The functions meet only on the wire; this module is the one
place that imports all of them (it sits above the network-function layer).

The configuration is the same whole-network TOML document `imsaka run` reads
(`imsaka.config`), built here with free loopback ports:

- *home* (default): the P-CSCF is in the home network (TS 24.228 §6.1); its
  P-Visited-Network-ID names the home domain, so the HSS sees no roaming;
- *visited*: the P-CSCF is in `visited1.net` (seed Figure 3, packets 1–13); its
  P-Visited-Network-ID "Visited Network Number 1" must be an allowed visited network
  of the subscriber at the HSS (TS 29.228 §6.1.1), or the UAR is refused (403).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imsaka.config import ImsConfig, parse_config
from imsaka.ports import free_port
from imsaka.trace import PcapWriter, Trace

log = logging.getLogger(__name__)

__all__ = [
    "Network",
    "NetworkOptions",
    "TestSubscriber",
    "dump_toml",
    "make_subscribers",
]

HOME_DOMAIN = "home1.net"
# Metrics ports of the processes mode, from NetworkOptions.metrics_port upwards.
METRICS_ORDER = ("pcscf", "icscf", "scscf", "hss")
VISITED_NETWORK_ID = "Visited Network Number 1"


@dataclass(frozen=True, slots=True)
class TestSubscriber:
    """A subscriber as the UE and the HSS both know it (secrets out of repr)."""

    __test__ = False  # not a pytest test class, despite the name

    impi: str
    impus: tuple[str, ...]
    k: bytes = field(repr=False)
    opc: bytes | None = field(default=None, repr=False)
    op: bytes | None = field(default=None, repr=False)
    sqn: int = 0
    amf: bytes = b"\x80\x00"
    visited_networks: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()


def make_subscribers(
    n: int, *, domain: str = HOME_DOMAIN, seed: int | None = None
) -> list[TestSubscriber]:
    """`n` subscribers with random K/OPc (user1 is the seed's user1_private@home1.net)."""
    import random

    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    out = []
    for i in range(1, n + 1):
        k = rng.getrandbits(128).to_bytes(16, "big")
        opc = rng.getrandbits(128).to_bytes(16, "big")
        impus = (f"sip:user{i}_public1@{domain}",)
        if i == 1:
            impus = (
                f"sip:user1_public1@{domain}",
                f"sip:user1_public2@{domain}",
                f"sip:user1_public3@{domain}",
            )
        out.append(
            TestSubscriber(
                impi=f"user{i}_private@{domain}",
                impus=impus,
                k=k,
                opc=opc,
                visited_networks=(VISITED_NETWORK_ID,),
            )
        )
    return out


@dataclass(slots=True)
class NetworkOptions:
    """How to build the core."""

    visited: bool = False
    """P-CSCF in a visited network (seed packets 1–13) instead of the home network."""
    sec_agree: str = "required"
    """P-CSCF policy: ``required`` or ``optional`` (RFC 3329)."""
    host: str = "127.0.0.1"
    """Loopback address every function binds."""
    pcscf_port: int = 0
    """Unprotected P-CSCF port (0: a free one)."""
    pcscf_port_c: int = 0
    pcscf_port_s: int = 0
    pcscf_to_scscf: bool = False
    """Home case only: route REGISTERs straight to the S-CSCF (no I-CSCF hop)."""
    visited_network_id: str | None = None
    """Override the P-Visited-Network-ID (to provoke 'roaming not allowed')."""
    database: str | None = None
    """HSS store URL; default a SQLite file in a temporary directory."""
    realm: str = "registrar.home1.net"
    """Digest realm of the S-CSCF (the seed's); empty: the first home domain."""
    home_domains: tuple[str, ...] = (HOME_DOMAIN,)
    """Home domains served (one P-CSCF route each)."""
    key_file: str | None = None
    """Write the Wireshark esp_sa key file here."""
    pcap: str | None = None
    """Write a pcap of every message here."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Overrides merged into the generated TOML document (tables key by key)."""
    hss_process: bool = False
    """Run the HSS as its own ``imsaka run hss -c FILE`` process (the generated document
    written to a file) instead of in this process, so a test can kill it for real
    (`kill_hss`, `start_hss_process`). `Network.hss` is then None; provisioning goes
    straight to its database before the process starts."""
    processes: bool = False
    """Run all four functions as ``imsaka run FUNCTION -c FILE`` processes (uvloop where
    installed), each serving Prometheus metrics on a free port of `host`, so they use
    every core; the UEs stay in the caller's process. `Network.hss/scscf/icscf/pcscf`
    are then None: read their state with `census` / `scrape` (the metrics endpoint),
    end them with `stop` (or `kill_processes` from synchronous code)."""
    metrics_port: int = 0
    """Processes mode: the first of four consecutive metrics ports (P-CSCF, I-CSCF,
    S-CSCF, HSS in that order); 0: a free port each."""
    metrics_host: str = ""
    """Processes mode: the address the metrics listen on (empty: `host`)."""
    scscf_instances: int = 1
    """In process only: the S-CSCF as this many instances behind one Server-Name
    (``[[scscf.instances]]``, each listed in ``[[icscf.scscfs]]``); from 2 the document
    needs a Redis ``binding_store`` (give it in `extra`). `Network.scscf` is instance 1,
    `Network.scscf_others` the rest."""


class Network:
    """Start/stop HSS, S-CSCF, I-CSCF and P-CSCF in this process."""

    def __init__(
        self,
        subscribers: Sequence[TestSubscriber] = (),
        options: NetworkOptions | None = None,
        *,
        trace: Trace | None = None,
        observers: Iterable[Any] = (),
        specs: Sequence[Any] = (),
    ) -> None:
        self.options = options or NetworkOptions()
        self.subscribers = list(subscribers)
        self.specs = list(specs)
        """Already validated `imsaka.hss.subscriber.SubscriberSpec`s (a CSV import),
        provisioned on `start` like `subscribers`; `provisioned` counts both."""
        self.provisioned = 0
        self.pcap = PcapWriter(self.options.pcap) if self.options.pcap else None
        self.trace = trace if trace is not None else Trace(pcap=self.pcap)
        if trace is not None and self.pcap is not None and trace.pcap is None:
            trace.pcap = self.pcap
        self._observers = [self.trace, *observers]
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.config: ImsConfig | None = None
        self.raw: dict[str, Any] = {}
        self.hss: Any = None
        self.scscf: Any = None
        self.scscf_others: list[Any] = []  # instances 2, 3, … (`scscf_instances`)
        # what the S-CSCFs stopped by `restart_scscf` had counted (`scscf_counters`)
        self._scscf_counted: Counter[str] = Counter()
        self._pcscf_counted: Counter[str] = Counter()  # likewise for `restart_pcscf`
        self.icscf: Any = None
        self.pcscf: Any = None
        self.hss_proc: Any = None  # subprocess.Popen with NetworkOptions.hss_process
        # NetworkOptions.processes: function -> subprocess.Popen, and its metrics URL.
        self.procs: dict[str, Any] = {}
        self.metrics_urls: dict[str, str] = {}
        self.exit_codes: dict[str, int] = {}

    # ---------------------------------------------------------------- config

    def build_config(self) -> dict[str, Any]:
        o = self.options
        h = o.host
        pcscf_name = "pcscf1.visited1.net" if o.visited else "pcscf1.home1.net"
        visited_id = o.visited_network_id or (VISITED_NETWORK_ID if o.visited else HOME_DOMAIN)
        hss_port = free_port(h, udp=False, tcp=True)
        # The CSCFs listen on UDP and TCP alike.
        icscf_port = free_port(h, tcp=True)
        scscf_port = free_port(h, tcp=True)
        pcscf_port = o.pcscf_port or free_port(h, tcp=True)
        port_c = o.pcscf_port_c or free_port(h)
        port_s = o.pcscf_port_s or free_port(h)
        while port_s in (port_c, pcscf_port):
            port_s = free_port(h)
        if self.options.database:
            database = self.options.database
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="imsaka-")
            database = f"sqlite+aiosqlite:///{Path(self._tmp.name) / 'hss.db'}"
        domains = [d.lower() for d in o.home_domains] or [HOME_DOMAIN]
        routes = []
        for domain in domains:
            route: dict[str, Any] = {
                "domain": domain,
                "icscf": f"sip:icscf1_p.home1.net:{icscf_port}",
            }
            if o.pcscf_to_scscf and not o.visited:
                route["scscf"] = f"sip:scscf1.home1.net:{scscf_port}"
            routes.append(route)
        if visited_id == HOME_DOMAIN:
            visited_id = domains[0]
        diameter_peer = {
            "host": "hss.home1.net",
            "realm": HOME_DOMAIN,
            "address": h,
            "port": hss_port,
        }
        doc: dict[str, Any] = {
            "network": {
                "name": "imsaka in-process core",
                "home_domains": domains,
                "hosts": {
                    pcscf_name: h,
                    "icscf1_p.home1.net": h,
                    "scscf1.home1.net": h,
                    "hss.home1.net": h,
                    "registrar.home1.net": h,
                },
            },
            "hss": {
                "database": database,
                "diameter_host": "hss.home1.net",
                "diameter_realm": HOME_DOMAIN,
                "diameter_address": h,
                "diameter_port": hss_port,
                "api_port": 0,
            },
            "pcscf": {
                "name": pcscf_name,
                "address": h,
                "port": pcscf_port,
                "transports": ["udp", "tcp"],
                "port_c": port_c,
                "port_s": port_s,
                "visited_network_id": visited_id,
                "home": not o.visited,
                "sec_agree": o.sec_agree,
                "routes": routes,
            },
            "icscf": {
                "name": "icscf1_p.home1.net",
                "address": h,
                "port": icscf_port,
                "transports": ["udp"],
                "diameter": {
                    "host": "icscf1.home1.net",
                    "realm": HOME_DOMAIN,
                    "peers": [diameter_peer],
                },
                "scscfs": [
                    {"name": f"sip:scscf1.home1.net:{scscf_port}", "address": h, "port": scscf_port}
                ],
            },
            "scscf": {
                "name": "scscf1.home1.net",
                "address": h,
                "port": scscf_port,
                "transports": ["udp"],
                "realm": o.realm or domains[0],
                "diameter": {
                    "host": "scscf1.home1.net",
                    "realm": HOME_DOMAIN,
                    "peers": [diameter_peer],
                },
            },
        }
        if o.scscf_instances > 1:
            instances = []
            for n in range(2, o.scscf_instances + 1):
                port = free_port(h, tcp=True)
                instances.append(
                    {"address": h, "port": port, "diameter_host": f"scscf1-{n}.home1.net"}
                )
                doc["icscf"]["scscfs"].append(
                    {"name": f"sip:scscf1.home1.net:{scscf_port}", "address": h, "port": port}
                )
            doc["scscf"]["instances"] = instances
        _merge(doc, o.extra)
        return doc

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from imsaka.cscf.icscf import IcscfServer
        from imsaka.cscf.pcscf_server import PcscfServer
        from imsaka.cscf.scscf import ScscfServer
        from imsaka.hss.config import parse_hss_config
        from imsaka.hss.server import HssServer

        self.raw = self.build_config()
        if self.options.processes:
            first = self.options.metrics_port
            where = _uri_host(self.options.metrics_host or self.options.host)
            self.raw["metrics"] = {
                name: f"{where}:{first + i if first else 0}" for i, name in enumerate(METRICS_ORDER)
            }
        self.config = parse_config(self.raw)
        cfg = self.config
        assert cfg.pcscf and cfg.icscf and cfg.scscf
        obs = tuple(self._observers)
        if self.options.processes:
            try:
                await self._provision_offline(self.subscribers, self.specs)
                await self._start_processes()
            except BaseException:
                await self.stop()
                raise
            return
        try:
            if self.options.hss_process:
                await self._provision_offline(self.subscribers, self.specs)
                await self.start_hss_process()
            else:
                self.hss = HssServer(parse_hss_config(self.raw), observers=obs)
                await self.hss.start()
                if self.subscribers:
                    self.provisioned += await self.provision(self.subscribers)
                if self.specs:
                    self.provisioned += await self.provision_specs(self.specs)
            self.scscf = ScscfServer(cfg.scscf, observers=obs, network=cfg.network)
            await self.scscf.start()
            for n in range(2, len(cfg.scscf.instances) + 2):
                other = ScscfServer(cfg.scscf.instance(n), observers=obs, network=cfg.network)
                self.scscf_others.append(other)
                await other.start()
            self.icscf = IcscfServer(cfg.icscf, cfg.network, observers=obs)
            await self.icscf.start()
            self.pcscf = PcscfServer(
                cfg.pcscf, cfg.network, observers=obs, key_file=self.options.key_file
            )
            await self.pcscf.start()
        except BaseException:
            await self.stop()
            raise
        self.trace.names.update(self.names())

    # ---------------------------------------------------------------- HSS as a process

    def write_config(self, path: str | Path) -> Path:
        """The generated whole-network document as a TOML file (`imsaka run -c`)."""
        p = Path(path)
        p.write_text(dump_toml(self.raw), encoding="utf-8")
        return p

    async def _provision_offline(
        self, subscribers: Iterable[TestSubscriber], specs: Sequence[Any] = ()
    ) -> int:
        from imsaka.hss.store import HssStore

        everything = [*_specs(subscribers), *specs]
        if not everything:
            return 0
        store = await HssStore.open(self.raw["hss"]["database"])
        try:
            count = await store.import_subscribers(everything)
        finally:
            await store.close()
        self.provisioned += count
        return count

    # ---------------------------------------------------------------- every function a process

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="imsaka-")
        return Path(self._tmp.name)

    async def _start_processes(self, timeout: float = 30.0) -> None:
        """``imsaka run`` for each function (HSS first: the CSCFs connect to it), each
        with stdout/stderr in files of the work directory; returns once all listen."""
        import asyncio

        path = self.write_config(self._workdir() / "imsaka.toml")
        await self._spawn("hss", path, "hss: Diameter", timeout)
        await asyncio.gather(
            *(self._spawn(name, path, "listening", timeout) for name in ("scscf", "icscf", "pcscf"))
        )

    async def _spawn(self, name: str, config: Path, word: str, timeout: float) -> None:
        import asyncio
        import subprocess
        import sys
        import time

        work = self._workdir()
        out_path, err_path = work / f"{name}.out", work / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imsaka", "run", name, "-c", str(config)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                # Its own session: a terminal's Ctrl-C reaches the parent only, which
                # then reads the final counts and stops the functions in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs[name] = proc
        deadline = time.monotonic() + timeout
        while True:
            text = out_path.read_text(errors="replace")
            if word in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                why = err_path.read_text(errors="replace").strip()[-800:] or text.strip()
                raise RuntimeError(f"{name} process did not start: {why}")
            await asyncio.sleep(0.05)
        marker = f"{name} metrics on "
        for line in text.splitlines():
            if line.startswith(marker):
                self.metrics_urls[name] = line[len(marker) :].strip()

    def process_errors(self, name: str) -> str:
        """What function `name`'s process wrote to stderr (processes mode)."""
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / f"{name}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    async def scrape(self, name: str, timeout: float = 10.0) -> str:
        """One scrape of function `name`'s metrics endpoint (processes mode)."""
        from imsaka.metrics import scrape

        return await scrape(self.metrics_urls[name], timeout=timeout)

    async def census(self, name: str) -> dict[str, int]:
        """Function `name`'s ``census()``: from its server in this process, or from
        ``imsaka_state`` of its metrics endpoint when it runs as a process."""
        from imsaka.metrics import parse_metrics

        if name in self.procs:
            samples = parse_metrics(await self.scrape(name))
            return {
                dict(labels)["kind"]: int(value)
                for (metric, labels), value in samples.items()
                if metric == "imsaka_state"
            }
        return dict(getattr(self, name).census())

    async def events(self, name: str) -> dict[tuple[str, str], int]:
        """Function `name`'s counters as (source, event) -> count (processes mode)."""
        from imsaka.metrics import parse_metrics

        samples = parse_metrics(await self.scrape(name))
        out = {}
        for (metric, labels), value in samples.items():
            if metric == "imsaka_events_total":
                d = dict(labels)
                out[(d["source"], d["event"])] = int(value)
        return out

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    async def restart_process(self, name: str, timeout: float = 30.0, *, kill: bool = False) -> int:
        """Stop function `name`'s process as an operator would (SIGTERM: a clean stop),
        or with `kill` as a crash would (SIGKILL), and start it again from the same
        configuration (processes mode); returns the old process's exit code."""
        import asyncio
        import signal

        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, proc.wait, timeout)
        await self._spawn(name, self._workdir() / "imsaka.toml", "listening", timeout)
        return code

    def kill_processes(self, timeout: float = 10.0) -> dict[str, int]:
        """End every function process this network started, by PID: SIGTERM (a clean
        stop), SIGKILL after `timeout` seconds; returns the exit codes."""
        import signal
        import subprocess

        codes: dict[str, int] = {}
        procs = self.procs
        self.procs = {}
        for name in ("pcscf", "icscf", "scscf", "hss"):
            proc = procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    async def start_hss_process(self, timeout: float = 30.0) -> None:
        """Start ``imsaka run hss`` on the generated file; return once it listens."""
        import asyncio
        import subprocess
        import sys

        if self.hss_proc is not None and self.hss_proc.poll() is None:
            raise RuntimeError("hss process: already running")
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="imsaka-")
        path = self.write_config(Path(self._tmp.name) / "imsaka.toml")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "imsaka", "run", "hss", "-c", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.hss_proc = proc
        loop = asyncio.get_running_loop()
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout)
        except TimeoutError:
            line = ""
        if "hss: Diameter" not in line:
            self.kill_hss()
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise RuntimeError(f"hss process did not start: {line.strip()} {err.strip()[-500:]}")

    def kill_hss(self) -> int | None:
        """SIGKILL the HSS process (no clean shutdown: sockets reset, nothing flushed)
        and reap it; returns its exit status."""
        proc, self.hss_proc = self.hss_proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            code = proc.wait(10)
        finally:
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        return code

    async def restart_scscf(
        self, store: Any = None, *, crash: bool = False, instance: int = 1, down: float = 0.0
    ) -> None:
        """Stop the S-CSCF, once what is under way ended (`ScscfServer.drain`, as on
        SIGTERM), and start a new one from the same configuration (its binding store
        decides what survives: `redis://` keeps registrations, their reg-event
        subscriptions and the open challenges). `store`: a `imsaka.cscf.registrar`
        binding store to use instead of the configured one. `crash`: stopped at once
        instead (no drain: what was under way goes, and no list of open challenges is
        written at the stop; on Redis each was written when made). `instance`: which
        instance of the S-CSCF (`NetworkOptions.scscf_instances`); `down`: seconds it
        stays stopped."""
        from imsaka.cscf.scscf import ScscfServer

        assert self.config is not None and self.config.scscf is not None
        import asyncio

        old = self.scscf if instance == 1 else self.scscf_others[instance - 2]
        if old is not None:
            if not crash:
                await old.drain()  # as `imsaka run scscf` stops on SIGTERM
            await old.stop()
            if old.scscf is not None:
                self._scscf_counted.update(old.scscf.core.counters)
            if instance == 1:
                self.scscf = None
            else:
                self.scscf_others[instance - 2] = None
        if down > 0:
            await asyncio.sleep(down)
        server = ScscfServer(
            self.config.scscf.instance(instance),
            store=store,
            observers=tuple(self._observers),
            network=self.config.network,
        )
        await server.start()
        if instance == 1:
            self.scscf = server
        else:
            self.scscf_others[instance - 2] = server

    def scscf_counters(self) -> Counter[str]:
        """The S-CSCF's counters (`RegistrarCore.counters`) summed over its instances and
        over those `restart_scscf` stopped."""
        total = Counter(self._scscf_counted)
        for server in (self.scscf, *self.scscf_others):
            if server is not None and server.scscf is not None:
                total.update(server.scscf.core.counters)
        return total

    def pcscf_counters(self) -> Counter[str]:
        """The P-CSCF's counters (`PcscfCore.counters`), summed over those
        `restart_pcscf` stopped and the one running."""
        total = Counter(self._pcscf_counted)
        if self.pcscf is not None and self.pcscf.core is not None:
            total.update(self.pcscf.core.counters)
        return total

    async def restart_icscf(self, down: float = 0.0) -> None:
        """Stop the I-CSCF at once (what it had under way goes with it, as in a crash)
        and, after `down` seconds, start a new one from the same configuration on the
        same ports. The P-CSCF's and the S-CSCF's retransmissions meet the new one."""
        from imsaka.cscf.icscf import IcscfServer

        assert self.config is not None and self.config.icscf is not None
        cfg = self.config
        await self._crash_and_start(
            "icscf",
            down,
            lambda: IcscfServer(cfg.icscf, cfg.network, observers=tuple(self._observers)),
        )

    async def restart_pcscf(self, down: float = 0.0, *, planned: bool = False) -> None:
        """Stop the P-CSCF at once, as in a crash: its SAs, registrations and
        transactions (all in memory) go with it. After `down` seconds a new one starts
        from the same configuration on the same ports; what the UEs send over their old
        SAs is then ESP with SPIs it does not know, and they must register anew (with
        ``[pcscf].state_store``: those registered before its last write do not).
        `planned`: stopped as SIGTERM stops ``imsaka run pcscf`` (`PcscfServer.drain`),
        so with ``[pcscf].state_file`` set the new one takes back what it held."""
        from imsaka.cscf.pcscf_server import PcscfServer

        assert self.config is not None and self.config.pcscf is not None
        cfg, key_file = self.config, self.options.key_file
        if planned and self.pcscf is not None:
            await self.pcscf.drain()
        if self.pcscf is not None and self.pcscf.core is not None:
            self._pcscf_counted.update(self.pcscf.core.counters)
        await self._crash_and_start(
            "pcscf",
            down,
            lambda: PcscfServer(
                cfg.pcscf, cfg.network, observers=tuple(self._observers), key_file=key_file
            ),
        )

    async def _crash_and_start(self, name: str, down: float, make: Any) -> None:
        """Stop the function `name` (no drain), wait `down` s, start `make()` in its place."""
        import asyncio

        server = getattr(self, name)
        if server is not None:
            await server.stop()
            setattr(self, name, None)
        if down > 0:
            await asyncio.sleep(down)
        server = make()
        await server.start()
        setattr(self, name, server)

    async def provision_specs(self, specs: Sequence[Any]) -> int:
        """Write already validated `imsaka.hss.subscriber.SubscriberSpec`s (CSV import)."""
        return await self.hss.store.import_subscribers(list(specs))

    async def provision(self, subscribers: Iterable[TestSubscriber]) -> int:
        if self.hss is None and (self.options.hss_process or self.options.processes):
            return await self._provision_offline(subscribers)
        return await self.hss.store.import_subscribers(_specs(subscribers))

    async def stop(self) -> None:
        self.kill_hss()
        if self.procs:
            import asyncio

            self.exit_codes = await asyncio.get_running_loop().run_in_executor(
                None, self.kill_processes
            )
        for other in self.scscf_others:
            if other is not None:
                try:
                    await other.stop()
                except Exception:
                    log.exception("stopping an S-CSCF instance failed")
        self.scscf_others = []
        for name in ("pcscf", "icscf", "scscf", "hss"):
            server = getattr(self, name)
            if server is None:
                continue
            try:
                stop = getattr(server, "stop", None) or server.close
                await stop()
            except Exception:
                log.exception("stopping %s failed", name)
            setattr(self, name, None)
        if self.pcap is not None:
            self.pcap.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Network:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- helpers

    @property
    def pcscf_address(self) -> tuple[str, int]:
        if self.pcscf is None and self.config is not None and self.config.pcscf is not None:
            return (self.config.pcscf.address, self.config.pcscf.port)  # processes mode
        assert self.pcscf is not None
        return self.pcscf.address

    def names(self) -> dict[tuple[str, int], str]:
        """Socket address → function name, for the ladder."""
        cfg = self.config
        assert cfg is not None and cfg.pcscf and cfg.icscf and cfg.scscf
        out = {
            (cfg.pcscf.address, cfg.pcscf.port): "P-CSCF",
            (cfg.pcscf.address, cfg.pcscf.port_c): "P-CSCF",
            (cfg.pcscf.address, cfg.pcscf.port_s): "P-CSCF",
            (cfg.icscf.address, cfg.icscf.port): "I-CSCF",
            (cfg.scscf.address, cfg.scscf.port): "S-CSCF",
        }
        for n, instance in enumerate(cfg.scscf.instances, start=2):
            out[(instance.address, instance.port)] = f"S-CSCF#{n}"
        hss = self.raw.get("hss", {})
        out[(hss.get("diameter_address", "127.0.0.1"), int(hss.get("diameter_port", 3868)))] = "HSS"
        return out

    def ue_config(self, sub: TestSubscriber, **overrides: Any):
        """A UeConfig for `sub` towards this network's P-CSCF."""
        from imsaka.ue.config import UeConfig

        kwargs: dict[str, Any] = {
            "impi": sub.impi,
            "impus": list(sub.impus),
            "home_domain": sub.impi.rsplit("@", 1)[-1],
            "registrar": "registrar.home1.net" if sub.impi.endswith("@" + HOME_DOMAIN) else "",
            "k": sub.k,
            "op": sub.op,
            "opc": sub.opc,
            "pcscf": self.pcscf_address,
            "local_host": self.options.host,
        }
        kwargs.update(overrides)
        return UeConfig(**kwargs)


def _die_with_parent() -> None:
    """In a function process (Linux): SIGTERM when the process that started it dies, so
    a test runner killed outright leaves no function running."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Overrides into the generated document: tables merge key by key (so
    ``{"scscf": {"diameter": {"timeout": 1}}}`` keeps the generated peers), anything
    else replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _specs(subscribers: Iterable[TestSubscriber]) -> list[Any]:
    from imsaka.hss.subscriber import validate_subscriber

    specs = []
    for s in subscribers:
        kwargs: dict[str, Any] = {}
        if s.schemes:
            kwargs["schemes"] = list(s.schemes)
        specs.append(
            validate_subscriber(
                impi=s.impi,
                impus=list(s.impus),
                k=s.k.hex(),
                op=s.op.hex() if s.op else None,
                opc=s.opc.hex() if s.opc else None,
                amf=s.amf.hex(),
                sqn=s.sqn,
                visited_networks=list(s.visited_networks) or None,
                **kwargs,
            )
        )
    return specs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"toml: cannot write {type(value).__name__}")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def dump_toml(doc: dict[str, Any]) -> str:
    """The generated network document as TOML (tables, arrays of tables, scalars): what
    `imsaka.config.load_config` reads back."""
    lines: list[str] = []

    def table(prefix: str, t: dict[str, Any]) -> None:
        subtables = []
        for k, v in t.items():
            if isinstance(v, dict):
                subtables.append((k, v, False))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                subtables.append((k, v, True))
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v, is_array in subtables:
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            if is_array:
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(name, item)
            else:
                lines.append(f"\n[{name}]")
                table(name, v)

    table("", doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def default_key_file() -> str:
    return os.path.join(tempfile.gettempdir(), "imsaka-esp_sa")
