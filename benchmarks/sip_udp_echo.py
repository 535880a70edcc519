"""UDP echo through imsaka's asyncio SIP transport (UdpTransport + receiver callback)
against a bare asyncio DatagramProtocol echo, same client, same run; plus, for
information, a full SIP endpoint answering OPTIONS through a server transaction.
Loopback only. Prints one JSON object.

    python benchmarks/sip_udp_echo.py [--messages 20000] [--window 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from imsaka.sip import Request, make_response
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transport import UdpTransport

PACKET8 = Path(__file__).resolve().parents[1] / "tests" / "data" / "sip" / "seed" / "packet08.sip"


class BareEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    """Keeps `window` datagrams in flight until `total` answers came back."""

    def __init__(self, payloads: list[bytes], total: int, window: int, target) -> None:
        self.payloads = payloads
        self.total = total
        self.window = window
        self.target = target
        self.sent = 0
        self.got = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def start(self) -> None:
        for _ in range(self.window):
            self._send()

    def _send(self) -> None:
        if self.sent < self.total:
            self.transport.sendto(self.payloads[self.sent % len(self.payloads)], self.target)
            self.sent += 1

    def datagram_received(self, data, addr) -> None:
        self.got += 1
        if self.got >= self.total:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._send()

    def error_received(self, exc) -> None:
        pass


async def run_client(target, payloads, total, window, cpu: list | None = None) -> float:
    """Messages echoed per second; appends the CPU seconds (process_time: the client,
    the server and the loop, all in this process) per echoed message to `cpu`."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        lambda: Client(payloads, total, window, target), local_addr=("127.0.0.1", 0)
    )
    try:
        start = time.perf_counter()
        cpu_start = time.process_time()
        client.start()
        # a lost datagram would stall the window: bound the wait and count what came back
        try:
            await asyncio.wait_for(client.done, timeout=30)
        except TimeoutError:
            pass
        if cpu is not None and client.got:
            cpu.append((time.process_time() - cpu_start) / client.got)
        return client.got / (time.perf_counter() - start)
    finally:
        transport.close()


async def bare_server():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(BareEcho, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[:2]


async def imsaka_server():
    t = await UdpTransport.create("127.0.0.1", 0, owner="bench")
    t.set_receiver(lambda data, source, transport: transport.send(data, source))
    return t, t.local_address


def options(n: int) -> bytes:
    return Request(
        "OPTIONS",
        "sip:bench@127.0.0.1",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bKbench{n}"),
            ("From", "<sip:client@127.0.0.1>;tag=c"),
            ("To", "<sip:bench@127.0.0.1>"),
            ("Call-ID", f"bench-{n}"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    ).to_bytes()


async def main_async(args) -> dict:
    payload = PACKET8.read_bytes()
    best = {"bare": 0.0, "imsaka": 0.0, "endpoint": 0.0}
    ratios = []
    cpu_bare: list[float] = []
    cpu_imsaka: list[float] = []
    for _ in range(args.rounds):
        bt, baddr = await bare_server()
        b = await run_client(baddr, [payload], args.messages, args.window, cpu_bare)
        bt.close()
        it, iaddr = await imsaka_server()
        i = await run_client(iaddr, [payload], args.messages, args.window, cpu_imsaka)
        await it.close()
        best["bare"] = max(best["bare"], b)
        best["imsaka"] = max(best["imsaka"], i)
        ratios.append(i / b)
    # full stack: parse, server transaction, make_response, serialize (each request new)
    ep = SipEndpoint(owner="bench")
    et = ep.add_transport(await UdpTransport.create("127.0.0.1", 0))
    ep.set_request_handler(lambda req, tx: tx.respond(make_response(req, 200, to_tag="b")))
    n = min(args.messages, 5000)
    best["endpoint"] = await run_client(
        et.local_address, [options(k) for k in range(n)], n, args.window
    )
    await ep.close()
    ratios.sort()
    return {
        "benchmark": "sip_udp_echo",
        "payload_octets": len(payload),
        "messages_per_round": args.messages,
        "window": args.window,
        "imsaka_transport_echo_msgs_per_s": round(best["imsaka"]),
        "bare_asyncio_echo_msgs_per_s": round(best["bare"]),
        "ratio_imsaka_over_bare_median": round(ratios[len(ratios) // 2], 3),
        # the transport's own CPU per datagram received and sent: the best round of
        # each, the bare echo's taken off (same client, same loop, same process)
        "transport_edge_cpu_us_per_echo": round((min(cpu_imsaka) - min(cpu_bare)) * 1e6, 2),
        "bare_echo_cpu_us_per_echo": round(min(cpu_bare) * 1e6, 2),
        "endpoint_options_200_msgs_per_s": round(best["endpoint"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uvloop", action="store_true", help="uvloop, as `imsaka run` has it")
    args = ap.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
