"""UDP echo through imsaka's asyncio SIP transport (UdpTransport + receiver callback)
against a bare asyncio DatagramProtocol echo, same client, same run; plus, for
information, a full SIP endpoint answering OPTIONS through a server transaction.
Loopback only. Prints one JSON object.

    python benchmarks/sip_udp_echo.py [--messages 20000] [--window 32] [--rounds 3]
    python benchmarks/sip_udp_echo.py --layer 6000   # the SIP layer behind the edge

`--layer N` runs the SIP layer of a stateful proxy without sockets or event loop, N
REGISTERs in steady state (a fake clock 1 ms apart, 20 forwarded ones waiting, timers
fired): parse, Via stamped (received), server transaction, Max-Forwards, copy + our
Via, client transaction and its octets, the 200 parsed, matched, our Via popped, the
final relayed and packed for Timer J. CPU (process_time) per request/response pair;
under callgrind, the difference of two sizes gives instructions per pair.
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


_LAYER_REGISTER = (
    "REGISTER sip:registrar.home1.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp{i:016d}\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKu{i:016d}\r\n"
    "Max-Forwards: 69\r\n"
    "Path: <sip:term@pcscf1.home1.net:5060;lr>\r\n"
    "Require: path\r\n"
    'P-Visited-Network-ID: "home1.net"\r\n'
    "From: <sip:user{i}_public1@home1.net>;tag={i:08x}\r\n"
    "To: <sip:user{i}_public1@home1.net>\r\n"
    "Contact: <sip:127.0.0.1:{port}>;expires=600000\r\n"
    "Call-ID: {i:024x}@127.0.0.1\r\n"
    'Authorization: Digest username="user{i}_private@home1.net", '
    'realm="registrar.home1.net", nonce="", uri="sip:registrar.home1.net", response=""\r\n'
    "CSeq: 1 REGISTER\r\n"
    "Supported: path\r\n"
    "Content-Length: 0\r\n\r\n"
)
_LAYER_200 = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP icscf1.home1.net:5070;branch={branch};received=127.0.0.1\r\n"
    "Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp{i:016d};received=127.0.0.1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKu{i:016d}\r\n"
    "From: <sip:user{i}_public1@home1.net>;tag={i:08x}\r\n"
    "To: <sip:user{i}_public1@home1.net>;tag=7f9dd6b2\r\n"
    "Call-ID: {i:024x}@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Path: <sip:term@pcscf1.home1.net:5060;lr>\r\n"
    "Service-Route: <sip:orig@scscf1.home1.net:5080;lr>\r\n"
    "Contact: <sip:127.0.0.1:{port}>;expires=600000\r\n"
    "Content-Length: 0\r\n\r\n"
)


def layer_bench(n: int, in_flight: int = 20) -> dict:
    """CPU per request/response pair through the SIP layer of a stateful proxy."""
    import random

    from imsaka.sip import parse_message
    from imsaka.sip.proxy import check_max_forwards, pop_via, push_via, stamp_received
    from imsaka.sip.transaction import TransactionLayer

    rng = random.Random(7)
    layer = TransactionLayer(reliable=lambda dest: False)
    up, down = ("udp", ("127.0.0.1", 5060)), ("udp", ("127.0.0.1", 5080))
    requests = [_LAYER_REGISTER.format(i=i, port=10000 + i % 50000).encode() for i in range(n)]
    waiting: list = []
    now = 1000.0

    def answered(tx, forwarded, i: int) -> None:
        branch = forwarded.key[1]
        text = _LAYER_200.format(i=i, port=10000 + i % 50000, branch=branch)
        response = parse_message(text.encode())
        layer.receive_response(response, down, now)
        relayed = response.copy()
        pop_via(relayed)
        layer.respond(tx.key, relayed, now)

    start = time.process_time()
    for i, data in enumerate(requests):
        now += 0.001
        request = parse_message(data)
        stamp_received(request, "127.0.0.1", 5060)
        tx = layer.receive_request(request, up, now, ("udp", request.top_via.response_address()))
        check_max_forwards(request)
        fwd = request.copy()
        push_via(fwd, "UDP", "icscf1.home1.net", 5070, rng=rng.randbytes)
        waiting.append((tx, layer.send_request(fwd, down, now), i))
        if len(waiting) > in_flight:
            answered(*waiting.pop(0))
        layer.next_deadline()
        layer.handle_timer(now)
        layer.next_deadline()
        layer.events()
    cpu = time.process_time() - start
    return {
        "benchmark": "sip_layer",
        "pairs": n,
        "in_flight": in_flight,
        "cpu_us_per_request_response_pair": round(cpu / n * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uvloop", action="store_true", help="uvloop, as `imsaka run` has it")
    ap.add_argument("--layer", type=int, metavar="N", help="N pairs through the SIP layer")
    args = ap.parse_args(argv)
    if args.layer:
        print(json.dumps(layer_bench(args.layer)))
        return 0
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
