"""``imsaka lab``: the whole IMS core for real phones, SIPp or other UEs, in one command.

Imports the subscribers of a CSV file (the HSS's format, `imsaka.hss.csvimport`) into a
temporary HSS, serves the home domain(s) of their identities with HSS, S-CSCF, I-CSCF
and P-CSCF (`imsaka.network`), prints one line containing ``listening`` with the
P-CSCF's address once it accepts traffic, then one ladder line per SIP/Diameter
message, and runs until SIGINT/SIGTERM or for ``--duration`` seconds; then it stops
every function cleanly and prints what happened.

The P-CSCF's protected ports are port+2 (port-c) and port+3 (port-s) of the given
``--pcscf`` address (TS 33.203 §7.1; a fixed pair makes phone traces easy to read);
``--pcscf HOST:0`` takes free ports for everything (tests).

``--processes`` runs each function as its own ``imsaka run FUNCTION`` process (uvloop
where installed) from a generated whole-network TOML instead of all four on this
process's event loop, so a load uses every core. Each process serves Prometheus metrics
(`imsaka.metrics`) on loopback; one line per function gives its PID and metrics URL
before the ``listening`` line. The ladder, ``--pcap`` and ``--esp-keys`` need the
functions in one process and are not available then; the closing summary is read from
the P-CSCF's metrics.

``--metrics-port N`` puts the metrics on fixed loopback ports, the same in both modes:
P-CSCF on N, I-CSCF N+1, S-CSCF N+2, HSS N+3 (without it: free ports with
``--processes``, no metrics in one process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from imsaka.clierror import CliError

__all__ = ["register", "run_lab"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lab",
        help="run the whole core in one process for real phones / SIPp (subscribers from a CSV)",
        description="Run HSS, S-CSCF, I-CSCF and P-CSCF in one process for UEs to register against.",
    )
    p.add_argument(
        "--subscribers",
        required=True,
        metavar="FILE.csv",
        help="subscribers (impi,impu,k,op,opc,amf[,sqn])",
    )
    p.add_argument(
        "--sec-agree",
        choices=("required", "optional"),
        default="required",
        help="P-CSCF sec-agree policy",
    )
    p.add_argument(
        "--pcscf", default="127.0.0.1:5060", metavar="HOST:PORT", help="P-CSCF unprotected address"
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--pcap", metavar="FILE", help="write a pcap of all traffic")
    p.add_argument(
        "--pcap-esp",
        choices=("udp", "ip"),
        default="udp",
        help="ESP in the pcap: ESP-in-UDP or bare ESP",
    )
    p.add_argument(
        "--esp-keys", metavar="FILE", help="write the Wireshark esp_sa key file (holds keys!)"
    )
    p.add_argument("--quiet", action="store_true", help="no ladder lines, only the summary")
    p.add_argument(
        "--processes",
        action="store_true",
        help="each function its own process (uses every core; Prometheus metrics; no ladder)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="N",
        help="Prometheus metrics on loopback: P-CSCF on N, I-CSCF N+1, S-CSCF N+2, HSS N+3 "
        "(default: free ports with --processes, none otherwise)",
    )
    p.set_defaults(func=_cmd_lab)


def _cmd_lab(args: argparse.Namespace) -> int:
    from imsaka.hss.csvimport import CsvError, parse_csv
    from imsaka.ue.config import parse_hostport

    path = Path(args.subscribers)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"--subscribers: no such file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--subscribers: cannot read {path}: {exc}") from None
    try:
        specs = parse_csv(text)
    except CsvError as exc:
        raise CliError(f"--subscribers: {path}: {exc}") from None
    if not specs:
        raise CliError(f"--subscribers: {path}: no subscribers")
    host, port = parse_hostport(args.pcscf, "--pcscf", allow_zero=True)
    if args.duration is not None and args.duration <= 0:
        raise CliError("--duration: must be positive")
    if port and port + 3 > 65535:
        raise CliError("--pcscf: port too high (port+2 and port+3 are the protected ports)")
    if args.processes:
        for flag, value in (("--pcap", args.pcap), ("--esp-keys", args.esp_keys)):
            if value:
                raise CliError(
                    f"{flag}: not available with --processes (the functions run in separate "
                    "processes; capture the loopback interface instead)"
                )
    if not 0 <= args.metrics_port <= 65535 - 3:
        raise CliError("--metrics-port: must be 1-65532 (it uses N to N+3), or 0 for free ports")
    return asyncio.run(
        run_lab(
            specs,
            host=host,
            port=port,
            sec_agree=args.sec_agree,
            duration=args.duration,
            pcap=args.pcap,
            pcap_esp=args.pcap_esp,
            esp_keys=args.esp_keys,
            quiet=args.quiet,
            processes=args.processes,
            metrics_port=args.metrics_port,
        )
    )


def _domains(specs: list[Any]) -> tuple[str, ...]:
    """Home domains of the imported identities (IMPU host, else IMPI realm)."""
    out: list[str] = []
    for spec in specs:
        for impu in spec.impus:
            rest = impu.split(":", 1)[1] if ":" in impu else impu
            host = rest.split("@", 1)[1] if "@" in rest else ""
            host = host.split(";", 1)[0].split(":", 1)[0].lower()
            if host and host not in out:
                out.append(host)
        realm = spec.impi.rsplit("@", 1)[-1].lower()
        if realm not in out:
            out.append(realm)
    return tuple(out)


async def run_lab(
    specs: list[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 5060,
    sec_agree: str = "required",
    duration: float | None = None,
    pcap: str | None = None,
    pcap_esp: str = "udp",
    esp_keys: str | None = None,
    quiet: bool = False,
    out: Any = None,
    ready: asyncio.Event | None = None,
    processes: bool = False,
    metrics_port: int = 0,
) -> int:
    from imsaka.network import Network, NetworkOptions
    from imsaka.trace import PcapWriter, Trace

    out = out or sys.stdout

    def live(rec: Any) -> None:
        if quiet or (rec.protocol == "diameter" and rec.diameter.get("code") in (257, 280, 282)):
            return  # CER/DWR/DPR: peer upkeep, not the registration
        stamp = (
            time.strftime("%H:%M:%S", time.localtime(rec.time))
            + f".{int(rec.time * 1000) % 1000:03d}"
        )
        how = (
            ""
            if rec.protocol == "diameter"
            else (f" [ESP spi={rec.esp_spi}]" if rec.protected else " [clear]")
        )
        print(f"{stamp} {rec.src_name} -> {rec.dst_name}  {rec.summary}{how}", file=out, flush=True)

    domains = _domains(specs)
    loopback = "::1" if ":" in host else "127.0.0.1"
    trace = Trace(pcap=PcapWriter(pcap, esp=pcap_esp) if pcap else None, live=live, keep=False)
    options = NetworkOptions(
        sec_agree=sec_agree,
        host=host,
        pcscf_port=port,
        pcscf_port_c=port + 2 if port else 0,
        pcscf_port_s=port + 3 if port else 0,
        key_file=esp_keys,
        realm="",
        home_domains=domains,
        processes=processes,
        metrics_port=metrics_port,
        metrics_host=loopback,
    )
    net = Network((), options, trace=trace, specs=specs)
    metrics: list[Any] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        try:
            await net.start()
        except OSError as exc:
            raise CliError(
                f"--pcscf: cannot listen on {host}:{port} (or its protected ports): {exc.strerror or exc}"
            ) from None
        except RuntimeError as exc:  # --processes: a function process did not start
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise CliError(f"--processes: {last.replace('imsaka: error: ', '')}") from None
        count = net.provisioned
        if metrics_port and not processes:
            metrics = await _serve_metrics(net, loopback, metrics_port, out)
        for name, pid in net.pids.items():
            url = net.metrics_urls.get(name, "-")
            print(f"imsaka lab: {name} pid {pid}, metrics {url}", file=out, flush=True)
        if processes and not quiet:
            print(
                "imsaka lab: no ladder with --processes (each function is its own process); "
                "capture the loopback interface to see the messages",
                file=out,
                flush=True,
            )
        cfg = net.config
        assert cfg is not None and cfg.pcscf is not None
        addr = net.pcscf_address
        shown = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        print(
            f"imsaka lab listening on udp {shown} (P-CSCF; protected port-c {cfg.pcscf.port_c}, "
            f"port-s {cfg.pcscf.port_s}); sec-agree {sec_agree}; {count} subscribers; "
            f"home domains {', '.join(domains)}",
            file=out,
            flush=True,
        )
        if ready is not None:
            ready.set()
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        stats = net.pcscf.stats() if net.pcscf else await _pcscf_stats(net)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for server in metrics:
            await server.close()
        await net.stop()
        trace.close()
    print(
        f"imsaka lab stopped: {stats.get('registered', 0)} registrations accepted, "
        f"{stats.get('registrations', 0)} still registered, {stats.get('challenges', 0)} challenges",
        file=out,
        flush=True,
    )
    return 0


async def _pcscf_stats(net: Any) -> dict[str, int]:
    """The summary's counts from the P-CSCF process's metrics (--processes)."""
    try:
        events = await net.events("pcscf")
        census = await net.census("pcscf")
    except (OSError, KeyError, ValueError):
        return {}
    return {
        "registered": events.get(("pcscf", "registered"), 0),
        "challenges": events.get(("pcscf", "challenges"), 0),
        "registrations": census.get("registrations", 0),
    }


async def _serve_metrics(net: Any, host: str, first: int, out: Any) -> list[Any]:
    """One lab process: each function's metrics on its own port, as with --processes."""
    from imsaka.metrics import MetricsServer, registry_for
    from imsaka.network import METRICS_ORDER

    servers: list[Any] = []
    try:
        for i, name in enumerate(METRICS_ORDER):
            server = MetricsServer(registry_for(name, getattr(net, name)), host, first + i)
            await server.start()
            servers.append(server)
            print(f"imsaka lab: {name} metrics {server.url}", file=out, flush=True)
    except OSError as exc:
        for server in servers:
            await server.close()
        raise CliError(
            f"--metrics-port: cannot listen on {host} port {first + len(servers)}: "
            f"{exc.strerror or exc}"
        ) from None
    return servers
