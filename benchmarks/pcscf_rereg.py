"""CPU of the P-CSCF per protected re-registration without AKA, one process, loopback.

A re-registration (TS 24.229 §5.1.1.4 / §5.2.2; TS 33.203 §7.4: over the established
SA set, no new challenge): the UE sends its re-REGISTER over ESP (userspace backend,
ESP-in-UDP, RFC 4303 + RFC 3948) to the P-CSCF's protected port; the P-CSCF unprotects
it, checks Security-Verify, forwards it over UDP upstream; the 200 OK comes back and
leaves over the outbound SA. Everything is real: `imsaka.cscf.pcscf_server.PcscfServer`
(as `imsaka run pcscf` builds it, userspace backend) and `imsaka.ue.client.UeClient`s
on loopback sockets, upstream a stand-in registrar (a 401 with Milenage vectors for an
unprotected REGISTER, 200 for a protected one, 200 for the reg-event SUBSCRIBE).

`--ues` UEs register once and re-register once, untimed; then `--n` re-registrations
(the UEs in turn) are timed. The clock is the loop's, simulated: it moves 1/rate s per
re-registration, and after the last one past Timer F, so each forwarded context's end
is counted too. Counters are checked: every re-registration answered 200 over the SAs,
no challenge, no drop.

The P-CSCF's share: its entry points (its protected sockets' reader, its UDP socket's
`datagram_received`, its timers) are wrapped. Without callgrind they add up
`time.process_time`; under callgrind they toggle collection (a client request from a
tiny C shim built with gcc and valgrind/callgrind.h), so a run started with
`--collect-atstart=no` counts the P-CSCF's instructions only. CPython 3.11 frames are
invisible to callgrind (its functions are the interpreter's C functions), hence the shim.

    python benchmarks/pcscf_rereg.py [--ues 100] [--n 1000] [--rate 100]
    python benchmarks/pcscf_rereg.py --callgrind [--callgrind-n 200 400]
    python benchmarks/pcscf_rereg.py --profile   # cProfile(process_time) of the P-CSCF, top 30

`--callgrind` runs this script under valgrind four times (A and B re-registrations, the
P-CSCF only and the whole process) and prints instructions per re-registration as
(I_B - I_A) / (B - A): start-up and the untimed registrations cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from random import Random
from typing import Any

from imsaka.aka import digest
from imsaka.aka.milenage import Milenage
from imsaka.aka.vectors import generate_vector
from imsaka.config import NetworkConfig, PcscfConfig, PcscfRoute
from imsaka.cscf.pcscf import TRANSACTION_LIFETIME
from imsaka.cscf.pcscf_server import PcscfServer
from imsaka.ports import free_port
from imsaka.sip import Request, make_response, parse_message
from imsaka.sip.transport import UdpTransport
from imsaka.ue.client import UeClient
from imsaka.ue.config import UeConfig

K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
HOST = "127.0.0.1"
SERVICE_ROUTE = "<sip:orig@scscf1.home1.net:{port};lr>"

_SHIM = r"""
#include <valgrind/callgrind.h>
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


class _Loop(asyncio.SelectorEventLoop):
    """The default loop on a simulated clock (sockets stay real)."""

    now = 1000.0

    def time(self) -> float:
        return self.now


class _Registrar:
    """Upstream of the P-CSCF (I-CSCF + S-CSCF in one): 401 with a Milenage vector to an
    unprotected REGISTER, 200 (Path, Service-Route, Contact, Date, P-Associated-URI, as
    the S-CSCF's) to an integrity-protected one, 200 to a SUBSCRIBE."""

    def __init__(self) -> None:
        self.m = Milenage(K, opc=OPC)
        self.sqn = 32
        self.vectors: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.udp: UdpTransport | None = None

    async def start(self) -> tuple[str, int]:
        self.udp = await UdpTransport.create(HOST, 0, owner="registrar")
        self.udp.set_receiver(self._rx)
        return self.udp.local_address

    def _rx(self, data: bytes, source, transport) -> None:
        msg = parse_message(data)
        if not isinstance(msg, Request):
            return
        if msg.method == "SUBSCRIBE":
            self.counts["subscribe"] += 1
            resp = make_response(msg, 200, to_tag="n1", headers=[("Expires", "600000")])
        else:
            resp = self._register(msg)
        via = msg.top_via
        assert self.udp is not None
        self.udp.send(resp.to_bytes(), (HOST, via.port or 5060))

    def _register(self, req: Request):
        auth = req.authorization
        impi = auth.username
        if 'integrity-protected="yes"' not in (req.get("Authorization") or ""):
            self.counts["challenged"] += 1
            self.sqn += 32
            vec = self.vectors[impi] = generate_vector(self.m, self.sqn, b"\x80\x00")
            nonce = digest.make_nonce(vec.rand, vec.autn)
            challenge = (
                f'Digest realm="home1.net", nonce="{nonce}", algorithm=AKAv1-MD5, '
                f'ik="{vec.ik.hex()}", ck="{vec.ck.hex()}"'
            )
            return make_response(req, 401, to_tag="s1", headers=[("WWW-Authenticate", challenge)])
        # (the challenge response is not checked: the S-CSCF's work, not the P-CSCF's;
        # the UE computed it from the vector all the same)
        if self.vectors.pop(impi, None) is not None:
            self.counts["registered"] += 1
        else:
            self.counts["reregistered"] += 1
        contact = req.get("Contact") or ""
        binding = contact.split(";expires")[0]
        expires = req.contacts[0].expires or 600000
        assert self.udp is not None
        return make_response(
            req,
            200,
            to_tag="s1",
            headers=[
                *[("Path", p) for p in req.get_all("Path")],
                ("Service-Route", SERVICE_ROUTE.format(port=self.udp.local_address[1])),
                ("Contact", f"{binding};expires={expires}"),
                ("Date", "Thu, 26 Nov 2026 10:00:00 GMT"),
                ("P-Associated-URI", f"<{req.get('To').strip('<>')}>"),
            ],
        )


def bench_config(registrar: tuple[str, int], **settings: Any) -> tuple[PcscfConfig, NetworkConfig]:
    """A P-CSCF on free loopback ports with the stand-in registrar as its next hop."""
    cfg = PcscfConfig(
        name="pcscf1.visited1.net",
        port=free_port(HOST),
        port_c=free_port(HOST),
        port_s=free_port(HOST),
        routes=(PcscfRoute(domain="home1.net", icscf=f"sip:{HOST}:{registrar[1]}"),),
        **settings,
    )
    net = NetworkConfig(
        home_domains=("home1.net",),
        hosts={"pcscf1.visited1.net": HOST, "scscf1.home1.net": HOST},
    )
    return cfg, net


async def bench_close(ues: list[UeClient], server: PcscfServer, registrar: _Registrar) -> None:
    for ue in ues:
        await ue.close()
    await server.close()
    if registrar.udp is not None:
        await registrar.udp.close()


def bench_ue(i: int, pcscf: tuple[str, int], ealg: str, **settings: Any) -> UeClient:
    """UE number `i` of the stand-in registrar's subscribers (K, OPc above)."""
    return UeClient(
        UeConfig(
            impi=f"bench{i}_private@home1.net",
            impus=[f"sip:bench{i}_public1@home1.net"],
            home_domain="home1.net",
            registrar="registrar.home1.net",
            k=K,
            opc=OPC,
            pcscf=pcscf,
            encryption=(ealg,),
            **settings,
        ),
        rng=Random(i),
        name=f"ue{i}",
    )


class _Share:
    """The P-CSCF's entry points, wrapped: process_time added up, or callgrind's
    collection toggled on for their span (nesting counted)."""

    def __init__(self, toggle: Any) -> None:
        self.toggle = toggle
        self.depth = 0
        self.cpu = 0.0
        self.calls = 0

    def wrap(self, fn):
        toggle = self.toggle
        clock = time.process_time

        if toggle is not None:

            def entered(*args):
                self.depth += 1
                if self.depth == 1:
                    toggle()
                try:
                    return fn(*args)
                finally:
                    self.depth -= 1
                    if self.depth == 0:
                        toggle()

            return entered

        def timed(*args):
            self.depth += 1
            start = clock() if self.depth == 1 else 0.0
            try:
                return fn(*args)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.cpu += clock() - start
                    self.calls += 1

        return timed


def _shim() -> Any:
    """cg_toggle() from a shared object built now (None without gcc or the header)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return None
    work = Path(tempfile.mkdtemp(prefix="pcscf_rereg."))
    (work / "cg.c").write_text(_SHIM)
    subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-o", str(work / "cg.so"), str(work / "cg.c")],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(work / "cg.so"))
    shutil.rmtree(work, ignore_errors=True)
    return lib.cg_toggle


def _instrument(server: PcscfServer, share: _Share) -> None:
    """Wrap the P-CSCF's entry points: the readers of its protected sockets, its UDP
    protocol's datagram_received, its and its backend's timer callbacks."""
    loop = asyncio.get_running_loop()
    backend = server.backend
    for port in backend._ports.values():
        fd = port.sock.fileno()
        loop.remove_reader(fd)
        loop.add_reader(fd, share.wrap(backend._readable), port)
    assert server.udp is not None
    protocol = server.udp._transport.get_protocol()  # type: ignore[union-attr]
    protocol.datagram_received = share.wrap(protocol.datagram_received)
    server._on_timer = share.wrap(server._on_timer)  # type: ignore[method-assign]
    backend._on_timer = share.wrap(backend._on_timer)


async def _bench(args: argparse.Namespace, share: _Share) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, _Loop)
    registrar = _Registrar()
    raddr = await registrar.start()
    cfg, net = bench_config(raddr)
    server = PcscfServer(cfg, net)  # as `imsaka run pcscf` builds it (SystemRandom)
    await server.start()
    ues: list[UeClient] = []
    try:
        for i in range(args.ues):
            ue = bench_ue(i, server.address, args.ealg)
            await ue.start()
            ues.append(ue)
        for ue in ues:  # untimed: full registration, then one re-registration
            for run in (ue.register, ue.reregister):
                res = await run(timeout=10)
                if not res.ok or not res.protected:
                    raise RuntimeError(f"pcscf_rereg: untimed registration failed: {res}")
                loop.now += 1.0 / args.rate
                await asyncio.sleep(0)
        _instrument(server, share)
        assert server.core is not None
        before = Counter(server.core.counters)
        challenged = registrar.counts["challenged"]
        sets = len(server.table.sets())
        start = time.process_time()
        for i in range(args.n):
            res = await ues[i % len(ues)].reregister(timeout=10)
            if not res.ok or not res.protected:
                raise RuntimeError(f"pcscf_rereg: re-registration {i} failed: {res}")
            loop.now += 1.0 / args.rate
            await asyncio.sleep(0)
        # past Timer F: each forwarded context ends (the timer's share per re-registration)
        end = loop.now + TRANSACTION_LIFETIME + 1.0
        while loop.now < end:
            loop.now += 0.1
            await asyncio.sleep(0)
        cpu = time.process_time() - start
        counted = server.core.counters["registered"] - before["registered"]
        if counted != args.n or registrar.counts["challenged"] != challenged:
            raise RuntimeError(f"pcscf_rereg: counters {dict(server.core.counters)}")
        if len(server.table.sets()) != sets or server.core.open_transactions():
            raise RuntimeError("pcscf_rereg: SA sets or contexts left over")
        drops = dict(server.backend.drops)
        if drops or server.core.drops or server.internal_errors:
            raise RuntimeError(f"pcscf_rereg: drops {drops} {dict(server.core.drops)}")
        return {
            "process_cpu_us_per_reregistration": round(cpu / args.n * 1e6, 1),
            "pcscf_cpu_us_per_reregistration": round(share.cpu / args.n * 1e6, 1),
            "pcscf_entries_per_reregistration": round(share.calls / args.n, 2),
        }
    finally:
        await bench_close(ues, server, registrar)


def _run(args: argparse.Namespace, share: _Share) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=_Loop) as runner:
        return runner.run(_bench(args, share))


def _instructions(args: list[str], pcscf_only: bool) -> int:
    valgrind = ["valgrind", "--tool=callgrind"]
    if pcscf_only:
        valgrind.append("--collect-atstart=no")
    with tempfile.NamedTemporaryFile(prefix="pcscf_rereg.cg.") as out:
        cmd = [*valgrind, f"--callgrind-out-file={out.name}", sys.executable, __file__, *args]
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        for line in Path(out.name).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def callgrind(args: argparse.Namespace) -> dict[str, Any]:
    small, large = args.callgrind_n
    common = ["--only", "--ues", str(args.ues), "--rate", str(args.rate), "--ealg", args.ealg]
    out: dict[str, Any] = {"callgrind_n": [small, large]}
    for key, pcscf_only in (("pcscf", True), ("process", False)):
        extra = ["--toggle"] if pcscf_only else []
        counts = [
            _instructions([*common, *extra, "--n", str(k)], pcscf_only) for k in args.callgrind_n
        ]
        out[f"{key}_instructions_per_reregistration"] = round(
            (counts[1] - counts[0]) / (large - small)
        )
    return out


def profile(args: argparse.Namespace, top: int = 30) -> str:
    prof = cProfile.Profile(time.process_time)
    share = _Share(None)
    wrap = share.wrap

    def profiled(fn):
        inner = wrap(fn)

        def run(*a):
            prof.enable()
            try:
                return inner(*a)
            finally:
                prof.disable()

        return run

    share.wrap = profiled  # type: ignore[method-assign]
    _run(args, share)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ues", type=int, default=100, help="UEs, registered untimed")
    ap.add_argument("--n", type=int, default=1000, help="timed re-registrations")
    ap.add_argument("--rate", type=float, default=100.0, help="re-registrations per simulated s")
    ap.add_argument("--ealg", default="null", help="the UEs' encryption offer")
    ap.add_argument("--callgrind", action="store_true", help="instruction counts (slow)")
    ap.add_argument("--callgrind-n", type=int, nargs=2, default=(200, 400), metavar=("A", "B"))
    ap.add_argument("--profile", action="store_true", help="cProfile of the P-CSCF's share")
    ap.add_argument("--only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--toggle", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile:
        print(profile(args))
        return 0
    toggle = _shim() if args.toggle else None
    if args.toggle and toggle is None:
        raise SystemExit("pcscf_rereg: --toggle needs gcc and valgrind/callgrind.h")
    result = _run(args, _Share(toggle))
    if args.only:
        return 0
    result = {"benchmark": "pcscf_rereg", "ues": args.ues, "reregistrations": args.n,
              "rate": args.rate, "ealg": args.ealg, **result}  # fmt: skip
    if args.callgrind:
        with contextlib.suppress(FileNotFoundError):
            result.update(callgrind(args))
    result["python"] = sys.version.split()[0]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
