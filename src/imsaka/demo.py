"""``imsaka demo``: the seed's two-phase IMS AKA registration, end to end on loopback.

Provisions a temporary HSS (SQLite in a temporary directory), starts HSS, S-CSCF,
I-CSCF and P-CSCF in this process over real sockets (`imsaka.network`), registers one
UE (or N) through both phases (seed §3, Appendix 1 packets 1–13: phase 1 in the
clear, the 401 with RAND‖AUTN, AUTN checked by the UE, IPsec ESP SAs, phase 2 and
the 200 OK protected) and prints the ladder of every SIP and Diameter message, with
the UAR/MAR/SAR of TS 29.228 between the SIP packets. After packet 13 come the
reg-event subscriptions (RFC 3680) of the P-CSCF (TS 24.229 §5.2.3) and of the UE
(§5.1.1.3, over the new SA set) with their first NOTIFYs. Exit status 0 when every UE
registered.

``--lifecycle`` goes on with each registered UE: a re-registration over its SA set
(TS 24.229 §5.1.1.4, answered without a new AKA run, §5.4.1.2.2), then its
de-registration (§5.1.1.6, Expires 0 over the SAs; the SAs go after the 200 OK).
``--reauthenticate`` sets the S-CSCF's ``reauthenticate = "always"``: the
re-registration is challenged, runs AKA again and moves the UE to a new SA set (TS 33.203
§7.4).

``--pcap`` writes the traffic as a capture (imsaka.trace); ``--esp-keys`` writes the
Wireshark ``esp_sa`` file so the protected messages decrypt (see readme).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from imsaka.clierror import CliError

__all__ = ["register", "run_demo"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole core on loopback and register UEs with IMS AKA + IPsec (the seed's packets 1-13)",
        description=(
            "Start HSS, P-CSCF, I-CSCF and S-CSCF in one process on loopback, register "
            "UEs through both phases of IMS AKA and print every SIP and Diameter message."
        ),
    )
    p.add_argument(
        "--visited", action="store_true", help="the P-CSCF is in a visited network (seed Figure 3)"
    )
    p.add_argument(
        "--subscribers",
        type=int,
        default=1,
        metavar="N",
        help="number of UEs to register (default 1)",
    )
    p.add_argument("--pcap", metavar="FILE", help="write a pcap of the run")
    p.add_argument(
        "--pcap-esp",
        choices=("udp", "ip"),
        default="udp",
        help="ESP in the pcap as sent (ESP-in-UDP, default) or as bare IP protocol 50 (no decode-as needed)",
    )
    p.add_argument(
        "--esp-keys", metavar="FILE", help="write the Wireshark esp_sa key file (holds keys!)"
    )
    p.add_argument("--json", action="store_true", help="print the messages as JSON records")
    p.add_argument("--seed", type=int, help="deterministic subscriber keys")
    p.add_argument(
        "--show-keys",
        action="store_true",
        help="show CK/IK of the S-CSCF's 401 in the ladder (hidden by default)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each registration"
    )
    p.add_argument(
        "--concurrency", type=int, default=8, help="registrations in flight at once (default 8)"
    )
    p.add_argument(
        "--lifecycle",
        action="store_true",
        help="then re-register and de-register each UE over its SAs",
    )
    p.add_argument(
        "--reauthenticate",
        action="store_true",
        help="with --lifecycle: the S-CSCF challenges the re-registration (new AKA run, new SA set)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.subscribers < 1 or args.subscribers > 10000:
        raise CliError("--subscribers: must be 1..10000")
    if args.timeout <= 0:
        raise CliError("--timeout: must be positive")
    if args.concurrency < 1:
        raise CliError("--concurrency: must be at least 1")
    if args.reauthenticate and not args.lifecycle:
        raise CliError("--reauthenticate: needs --lifecycle (it changes the re-registration)")
    for name in ("pcap", "esp_keys"):
        path = getattr(args, name)
        if path:
            try:
                with open(path, "ab"):
                    pass
            except OSError as exc:
                raise CliError(
                    f"--{name.replace('_', '-')}: cannot write {path}: {exc.strerror}"
                ) from None
    return asyncio.run(
        run_demo(
            visited=args.visited,
            subscribers=args.subscribers,
            pcap=args.pcap,
            pcap_esp=args.pcap_esp,
            esp_keys=args.esp_keys,
            as_json=args.json,
            seed=args.seed,
            timeout=args.timeout,
            concurrency=args.concurrency,
            show_keys=args.show_keys,
            lifecycle=args.lifecycle,
            reauthenticate=args.reauthenticate,
        )
    )


async def run_demo(
    *,
    visited: bool = False,
    subscribers: int = 1,
    pcap: str | None = None,
    pcap_esp: str = "udp",
    esp_keys: str | None = None,
    as_json: bool = False,
    seed: int | None = None,
    timeout: float = 30.0,
    concurrency: int = 8,
    show_keys: bool = False,
    lifecycle: bool = False,
    reauthenticate: bool = False,
    out: Any = None,
) -> int:
    """Run the demo; returns the exit code. `out` is a text stream (default stdout).
    `lifecycle`: then re-register and de-register each registered UE; `reauthenticate`:
    the S-CSCF challenges that re-registration."""
    from imsaka.network import Network, NetworkOptions, make_subscribers
    from imsaka.trace import PcapWriter, Trace, print_ladder
    from imsaka.ue.client import UeClient

    out = out or sys.stdout
    subs = make_subscribers(subscribers, seed=seed)
    trace = Trace(pcap=PcapWriter(pcap, esp=pcap_esp) if pcap else None, show_keys=show_keys)
    extra = {"scscf": {"reauthenticate": "always"}} if reauthenticate else {}
    options = NetworkOptions(visited=visited, key_file=esp_keys, extra=extra)
    net = Network(subs, options, trace=trace)
    results = []
    later: list[tuple[str, bool]] = []  # per UE: what failed ("": none), new SA set
    hint: dict[str, int] = {}
    ues: list[UeClient] = []
    try:
        await net.start()
        assert net.config is not None and net.config.pcscf is not None
        hint = {
            "diameter": int(net.raw["hss"]["diameter_port"]),
            "port_c": net.config.pcscf.port_c,
            "port_s": net.config.pcscf.port_s,
        }
        for sub in subs:
            ue = UeClient(
                net.ue_config(sub, encryption=("aes-cbc", "null")),
                observers=[net.trace],
                name="ue",
            )
            await ue.start()
            ues.append(ue)
        # Registrations in flight at once: a bounded window, as a load generator would
        # offer them (the HSS store serialises SQN updates per subscriber row anyway).
        window = asyncio.Semaphore(concurrency)

        async def one(ue: UeClient):
            async with window:
                return await ue.register(timeout=timeout)

        results = await asyncio.gather(*(one(ue) for ue in ues))
        # The UEs' reg-event SUBSCRIBE and first NOTIFY follow the 200 OK (§5.1.1.3).
        await asyncio.gather(
            *(
                ue.wait_subscribed(min(timeout, 5.0))
                for ue, res in zip(ues, results, strict=True)
                if res.ok and ue.config.subscribe_reg_event
            )
        )
        if lifecycle:
            later = await asyncio.gather(
                *(
                    _refresh_then_end(ue, timeout, window)
                    for ue, res in zip(ues, results, strict=True)
                    if res.ok
                )
            )
        await asyncio.sleep(0.05)  # let the last datagrams reach their observers
    finally:
        for ue in ues:
            await ue.close()
        await net.stop()
        trace.close()
    records = net.trace.messages()
    ok = sum(1 for r in results if r.ok)
    if as_json:
        json.dump(
            {
                "registered": ok,
                "subscribers": len(subs),
                "visited": visited,
                "messages": [r.to_json() for r in records],
            },
            out,
            indent=1,
        )
        out.write("\n")
    else:
        from rich.console import Console

        console = Console(file=out, highlight=False, soft_wrap=True)
        shown = records if subscribers <= 3 else records[: _first_ue_span(records)]
        print_ladder(shown, console=console, headers=subscribers == 1)
        if len(shown) < len(records):
            console.print(f"... {len(records) - len(shown)} more messages (use --json for all)")
        for sub, res in zip(subs, results, strict=True):
            if not res.ok:
                console.print(
                    f"[red]{sub.impi}: registration failed: {res.status} {res.reason}[/red]"
                )
        for problem, _ in later:
            if problem:
                console.print(f"[red]{problem}[/red]")
        console.print(
            f"{ok}/{len(subs)} UEs registered"
            + (" (IPsec ESP protected)" if ok and all(r.protected for r in results if r.ok) else "")
            + (_lifecycle_summary(later) if lifecycle else "")
            + (f"; pcap written to {pcap}" if pcap else "")
            + (f"; ESP keys in {esp_keys}" if esp_keys else "")
        )
        if pcap:
            console.print(_tshark_hint(pcap, esp_keys, pcap_esp, hint))
    return 0 if ok == len(subs) and not any(p for p, _ in later) else 1


async def _refresh_then_end(ue: Any, timeout: float, window: asyncio.Semaphore) -> tuple[str, bool]:
    """Re-register `ue` over its SA set, then de-register it: ("" when both went well,
    else what failed; whether the re-registration moved it to a new SA set)."""
    async with window:
        before = ue.core.sa
        res = await ue.reregister(timeout=timeout)
        if not res.ok:
            return f"{ue.config.impi}: re-registration failed: {res.status} {res.reason}", False
        new_set = ue.core.sa is not before
        res = await ue.deregister(timeout=timeout)
        if not res.ok:
            return f"{ue.config.impi}: de-registration failed: {res.status} {res.reason}", new_set
        return "", new_set


def _lifecycle_summary(later: list[tuple[str, bool]]) -> str:
    done = sum(1 for problem, _ in later if not problem)
    new_sets = sum(1 for problem, new_set in later if not problem and new_set)
    return f", {done} re-registered ({new_sets} with a new SA set) and de-registered"


def _tshark_hint(pcap: str, esp_keys: str | None, pcap_esp: str, ports: dict[str, int]) -> str:
    """How to read the capture: the key file as the profile's ESP SA table, and
    decode-as rules for the ports tshark cannot guess."""
    steps = []
    if esp_keys:
        steps.append(f"cp {esp_keys} ~/.config/wireshark/esp_sa")
    args = [f"tshark -r {pcap}", f"-d tcp.port=={ports['diameter']},diameter"]
    if esp_keys:
        # (the SIP inside ESP is found by its heuristic: a protected port can be one
        # tshark gives another protocol)
        args.append("-o esp.enable_encryption_decode:TRUE -o udp.try_heuristic_first:TRUE")
    if pcap_esp == "udp":
        args += [
            f"-d udp.port=={ports['port_c']},udpencap",
            f"-d udp.port=={ports['port_s']},udpencap",
        ]
    steps.append(" ".join(args))
    return "read it with: " + "; ".join(steps)


def _first_ue_span(records: list) -> int:
    """How many leading records belong to the first registration (up to its 200 OK to the UE)."""
    for i, r in enumerate(records):
        if r.protocol == "sip" and r.dst_name == "UE" and r.summary.startswith("200"):
            return i + 1
    return min(len(records), 40)
