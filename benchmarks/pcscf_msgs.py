"""CPU of the P-CSCF per registration of a SIPp UE, one process, no sockets.

The real P-CSCF edge (imsaka.cscf.pcscf_server.PcscfServer with its PcscfCore, as
`imsaka run pcscf` builds it, `sec_agree = "optional"`) on an in-memory UDP transport,
fed each message as the bytes a socket hands it (`_incoming`: parse_message, the core,
to_bytes of what goes out, the timer re-armed), a new UE per registration, REGISTERs in
the clear as SIPp sends them (benchmarks/sipp/register_aka.xml: one source address,
`rport`, its own Authorization spelling). What the P-CSCF handles per registration
(TS 24.229 §5.2.2, §5.2.3):

    REGISTER in → out, 401 in → out, REGISTER in → out, 200 in → out and its own reg-event
    SUBSCRIBE out, the SUBSCRIBE's 200 in, the NOTIFY (reginfo, three IMPUs) in → 200 out.

The next hop answers at once: the harness builds the 401 / 200 / SUBSCRIBE 200 / NOTIFY
from the bytes the P-CSCF sent (its Vias, From, To, Call-ID, CSeq copied, as the I-CSCF
and the S-CSCF do), outside the timed spans; only `_incoming` and the edge's timer
callback are timed (process_time). The clock is the loop's, simulated: it moves 1/rate
s per registration, and after the last one past Timer F so every context's expiry (the
timer's work per registration) is counted. Every answer is checked (the run raises
otherwise) and the core must count each registration and each reg-event subscription.

Baseline in the same run: parse_message + to_bytes of the eight messages the P-CSCF
receives per registration (a ratio holds on a loaded machine, an absolute time does not).

    python benchmarks/pcscf_msgs.py [--n 2000] [--rounds 3] [--rate 600] [--steady 33]
    python benchmarks/pcscf_msgs.py --callgrind [--callgrind-n 200 600] [--steady 33]
    python benchmarks/pcscf_msgs.py --profile   # cProfile(process_time), top 25

`--steady 33` first registers 33 simulated seconds of UEs untimed (20,000 at 600/s), so
the timed ones meet the table of forwarded contexts at its steady size (rate × 32 s × 2,
kept to Timer F to answer retransmissions) and the timer expires one registration's
worth of them per registration, as in a P-CSCF serving a steady load.

`--callgrind` runs the benchmark process under `valgrind --tool=callgrind` for two sizes
A and B and prints instructions per registration (I_B - I_A) / (B - A): start-up cancels
out, counts do not move with the machine's load (the harness's answers, built per UE,
and the loop are included, about a sixth of the process: compare counts, not parts).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from random import Random

from imsaka.config import parse_config
from imsaka.cscf.pcscf import TRANSACTION_LIFETIME, Arrival, PcscfCore
from imsaka.cscf.pcscf_server import PcscfServer
from imsaka.sip import parse_message

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "imsaka.toml"
UE = ("127.0.0.1", 5061)  # SIPp: every UE from one socket (-t u1)

# SIPp's REGISTERs (register_aka.xml) as they reach the P-CSCF.
_REGISTER = (
    "REGISTER sip:home1.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK-@N@-@CSEQ@\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:@USER@@home1.net>;tag=1234SIPpTag00@I@\r\n"
    "To: <sip:@USER@@home1.net>\r\n"
    "Call-ID: @I@-1234@127.0.0.1\r\n"
    "CSeq: @CSEQ@ REGISTER\r\n"
    "Contact: <sip:@USER@@127.0.0.1:5061>;expires=600000\r\n"
    "Authorization: @AUTH@\r\n"
    "Supported: path\r\n"
    "User-Agent: imsaka-bench SIPp\r\n"
    "Content-Length: 0\r\n\r\n"
)
_AUTH_1 = 'Digest username="@IMPI@", realm="home1.net", nonce="", uri="sip:home1.net", response=""'
# SIPp 3.6 (auth.cpp): no space after the commas, cnonce/nc/qop only with a qop
_AUTH_2 = (
    'Digest username="@IMPI@",realm="home1.net",uri="sip:home1.net",nonce="@NONCE@",'
    'response="@RESPONSE@",algorithm=AKAv1-MD5'
)
_CONTENT_TYPE = "application/reginfo+xml"
# what an answer copies from the request (RFC 3261 §8.2.6.2)
_COPIED = (b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:")


def _fill(template: str, fields: dict[str, str]) -> bytes:
    for k, v in fields.items():
        template = template.replace(k, v)
    return template.encode()


def _head(data: bytes) -> list[bytes]:
    return data[: data.index(b"\r\n\r\n")].split(b"\r\n")


def _answer(request: bytes, status: bytes, to_tag: bytes, extra: list[bytes]) -> bytes:
    """The next hop's response to `request` (its bytes as the P-CSCF sent them)."""
    out = [b"SIP/2.0 " + status]
    for line in _head(request)[1:]:
        if line.startswith(_COPIED):
            out.append(line + b";tag=" + to_tag if line.startswith(b"To:") else line)
    return b"\r\n".join([*out, *extra, b"Content-Length: 0", b"", b""])


def _header(data: bytes, name: bytes) -> bytes:
    for line in _head(data):
        if line.startswith(name + b": "):
            return line[len(name) + 2 :]
    raise RuntimeError(f"P-CSCF benchmark: no {name.decode()} in {data[:60]!r}")


def _reginfo(impus: list[str], contact: str) -> bytes:
    """The S-CSCF's first NOTIFY body (RFC 3680, imsaka.cscf.regevent.reginfo_body)."""
    lines = [
        '<?xml version="1.0"?>',
        '<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">',
    ]
    for n, aor in enumerate(impus):
        lines.append(f'  <registration aor="{aor}" id="r{n}" state="active">')
        lines.append(
            f'    <contact id="c{n}.0" state="active" event="registered" expires="600000">\n'
            f"      <uri>{contact}</uri>\n    </contact>"
        )
        lines.append("  </registration>")
    lines.append("</reginfo>\n")
    return "\n".join(lines).encode()


class _Udp:
    """The edge's UDP transport, in memory: what it sends is kept."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.local_address = address
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class _Backend:
    """No SAs in the clear: the edge only asks it to sync."""

    def sync(self) -> None:
        pass


class _Loop(asyncio.SelectorEventLoop):
    """An event loop on a simulated clock (the edge reads `loop.time()`)."""

    now = 1000.0

    def time(self) -> float:
        return self.now


def _config():
    cfg = parse_config(tomllib.loads(CONFIG.read_text()))
    assert cfg.pcscf is not None and cfg.scscf is not None
    return replace(cfg, pcscf=replace(cfg.pcscf, sec_agree="optional"))


class _Harness:
    def __init__(self, loop: _Loop) -> None:
        cfg = _config()
        p = cfg.pcscf
        assert p is not None and cfg.scscf is not None
        self.loop = loop
        self.server = PcscfServer(p, cfg.network, rng=Random(5))
        self.udp = _Udp((p.address, p.port))
        self.server.udp = self.udp  # type: ignore[assignment]
        self.server.backend = _Backend()
        spis = iter(range(0x1000, 1 << 32, 2))
        self.server.core = core = PcscfCore(
            p,
            cfg.network,
            rng=Random(5),
            port=p.port,
            port_c=p.port_c,
            port_s=p.port_s,
            spi_allocator=lambda: (next(spis), next(spis)),
        )
        self.core = core
        self.icscf = (cfg.network.resolve("icscf1_p.home1.net"), 5070)
        self.scscf_name = f"{cfg.scscf.name}:{cfg.scscf.port}"
        self.scscf = (cfg.network.resolve(cfg.scscf.name), cfg.scscf.port)
        self.cpu: dict[str, float] = dict.fromkeys(
            ("register_1", "401", "register_2", "200", "subscribe_200", "notify", "timer"), 0.0
        )
        self.received = 0
        self.sent = 0
        on_timer = self.server._on_timer

        def timed_timer() -> None:
            start = time.process_time()
            on_timer()
            self.cpu["timer"] += time.process_time() - start

        self.server._on_timer = timed_timer  # type: ignore[method-assign]

    def _in(self, data: bytes, source: tuple[str, int], kind: str, expect: int) -> list[bytes]:
        """Hand `data` to the edge as from `source`; the `expect` messages it sent."""
        udp = self.udp
        udp.sent.clear()
        arrival = Arrival(source, "udp", None)
        start = time.process_time()
        self.server._incoming(data, arrival)
        self.cpu[kind] += time.process_time() - start
        self.received += 1
        self.sent += len(udp.sent)
        if len(udp.sent) != expect:
            raise RuntimeError(
                f"P-CSCF benchmark: {kind}: {len(udp.sent)} messages out, {expect} expected"
            )
        return [d for d, _ in udp.sent]

    def register(self, i: int) -> None:
        user = f"sipp{i}"
        impi = f"{user}_private@home1.net"
        fields = {"@N@": f"{i:x}", "@I@": str(i), "@USER@": user}
        first = _fill(_REGISTER, dict(fields, **{"@CSEQ@": "1", "@AUTH@": _AUTH_1}))
        first = first.replace(b"@IMPI@", impi.encode())
        (fwd,) = self._in(first, UE, "register_1", 1)
        if not fwd.startswith(b"REGISTER ") or b"Path: <sip:term@" not in fwd:
            raise RuntimeError(f"P-CSCF benchmark: not forwarded: {fwd[:60]!r}")
        nonce = f"{i:032x}A=="
        ik = (i * 7919 % (1 << 64)).to_bytes(8, "big").hex() * 2
        challenge = _answer(
            fwd,
            b"401 Unauthorized",
            b"s1",
            [
                f'WWW-Authenticate: Digest realm="home1.net", nonce="{nonce}", '
                f'algorithm=AKAv1-MD5, ik="{ik}", ck="{ik[::-1]}"'.encode()
            ],
        )
        (to_ue,) = self._in(challenge, self.icscf, "401", 1)
        if not to_ue.startswith(b"SIP/2.0 401 ") or b" ck=" in to_ue or b"ik=" in to_ue:
            raise RuntimeError(f"P-CSCF benchmark: bad 401 to the UE: {to_ue!r}")
        auth = _AUTH_2.replace("@NONCE@", nonce).replace("@RESPONSE@", f"{i:032x}")
        second = _fill(_REGISTER, dict(fields, **{"@CSEQ@": "2", "@AUTH@": auth}))
        second = second.replace(b"@IMPI@", impi.encode())
        (fwd,) = self._in(second, UE, "register_2", 1)
        if b'integrity-protected="no"' not in fwd:
            raise RuntimeError(f"P-CSCF benchmark: second REGISTER: {fwd!r}")
        impus = [f"sip:{user}@home1.net", f"sip:{user}_2@home1.net", f"tel:+1555{i:07d}"]
        contact = f"sip:{user}@127.0.0.1:5061"
        ok = _answer(
            fwd,
            b"200 OK",
            b"s2",
            [
                b"Path: " + _header(fwd, b"Path"),
                f"Service-Route: <sip:orig@{self.scscf_name};lr>".encode(),
                f"Contact: <{contact}>;expires=600000".encode(),
                b"Date: Thu, 26 Nov 2026 05:00:00 GMT",
                ("P-Associated-URI: " + ", ".join(f"<{u}>" for u in impus)).encode(),
            ],
        )
        to_ue, sub = self._in(ok, self.icscf, "200", 2)
        if not to_ue.startswith(b"SIP/2.0 200 ") or not sub.startswith(b"SUBSCRIBE "):
            raise RuntimeError(f"P-CSCF benchmark: 200 / SUBSCRIBE: {to_ue[:40]!r} {sub[:40]!r}")
        accepted = _answer(sub, b"200 OK", b"n1", [b"Expires: 600000"])
        self._in(accepted, self.scscf, "subscribe_200", 0)
        body = _reginfo(impus, contact)
        notify = b"\r\n".join(
            [
                b"NOTIFY " + _header(sub, b"Contact").strip(b"<>") + b" SIP/2.0",
                f"Via: SIP/2.0/UDP {self.scscf_name};branch=z9hG4bKn{i:x}".encode(),
                b"Max-Forwards: 70",
                b"From: " + _header(sub, b"To") + b";tag=n1",
                b"To: " + _header(sub, b"From"),
                b"Call-ID: " + _header(sub, b"Call-ID"),
                b"CSeq: 1 NOTIFY",
                f"Contact: <sip:{self.scscf_name}>".encode(),
                b"Event: reg",
                b"Subscription-State: active;expires=600000",
                b"Content-Type: " + _CONTENT_TYPE.encode(),
                b"Content-Length: " + str(len(body)).encode(),
                b"",
                body,
            ]
        )
        (done,) = self._in(notify, self.scscf, "notify", 1)
        if not done.startswith(b"SIP/2.0 200 "):
            raise RuntimeError(f"P-CSCF benchmark: NOTIFY answered {done[:40]!r}")


async def _drive(h: _Harness, n: int, rate: float, warm: int = 0) -> None:
    loop = h.loop
    for i in range(warm + n):
        if i == warm:  # what came before is the steady state's backlog, not timed
            h.cpu = dict.fromkeys(h.cpu, 0.0)
            h.received = h.sent = 0
        h.register(i)
        loop.now += 1.0 / rate
        await asyncio.sleep(0)  # the edge's timer fires when due (simulated clock)
    if warm * 1.0 / rate > TRANSACTION_LIFETIME:
        return  # contexts expired all along, one registration's worth per registration
    # past Timer F: every context forwarded goes (the timer's work per registration)
    end = loop.now + TRANSACTION_LIFETIME + 1.0
    while loop.now < end:
        loop.now += 0.1
        await asyncio.sleep(0)


def _run(n: int, rate: float, warm_s: float = 0.0) -> _Harness:
    """`n` registrations timed; first `warm_s` simulated seconds of them untimed (past
    Timer F, 32 s: the table of forwarded contexts at its steady size, rate × 32 s × 2,
    and each timed registration's share of their expiry is what the timer does)."""
    warm = int(warm_s * rate)
    with asyncio.Runner(loop_factory=_Loop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, _Loop)
        h = _Harness(loop)
        runner.run(_drive(h, n, rate, warm))
    c = h.core.counters
    total = warm + n
    if c["registered"] != total or c["reg-subscribed"] != total:
        raise RuntimeError(f"P-CSCF benchmark: counters {dict(c)}")
    if not warm_s and (h.core.open_transactions() or h.core.pending):
        raise RuntimeError("P-CSCF benchmark: contexts left after Timer F")
    if warm_s and len(h.core.pending) > 2 * (TRANSACTION_LIFETIME + 1) * rate:
        raise RuntimeError(f"P-CSCF benchmark: {len(h.core.pending)} contexts not expired")
    if len(h.core.registrations) != total:
        raise RuntimeError(f"P-CSCF benchmark: {len(h.core.registrations)} registrations")
    return h


def baseline_us(rounds: int = 50) -> float:
    """parse_message + to_bytes of the six messages the P-CSCF receives per registration."""
    msgs: list[bytes] = []
    with asyncio.Runner(loop_factory=_Loop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, _Loop)
        h = _Harness(loop)
        orig = h.server._incoming

        def keep(data: bytes, arrival: Arrival) -> None:
            msgs.append(data)
            orig(data, arrival)

        h.server._incoming = keep  # type: ignore[method-assign]
        runner.run(_drive(h, 1, 600.0))
    start = time.process_time()
    for _ in range(rounds):
        for m in msgs:
            parse_message(m).to_bytes()
    return (time.process_time() - start) / rounds * 1e6


def cpu_run(n: int, rounds: int, rate: float, warm_s: float = 0.0) -> dict:
    _run(min(n, 50), rate)  # warm imports and caches
    runs = [_run(n, rate, warm_s) for _ in range(rounds)]
    base = min(baseline_us() for _ in range(rounds))
    totals = sorted(sum(h.cpu.values()) / n * 1e6 for h in runs)
    best = min(runs, key=lambda h: sum(h.cpu.values()))
    return {
        "benchmark": "pcscf_msgs",
        "registrations": n,
        "rate": rate,
        "steady_state_s": warm_s,
        "cpu_us_per_registration": round(totals[0], 1),
        "cpu_us_per_registration_runs": [round(x, 1) for x in totals],
        "cpu_us_per_message": {k: round(v / n * 1e6, 1) for k, v in best.cpu.items()},
        "messages_received": best.received,
        "messages_sent": best.sent,
        "messages_per_registration": {"received": 6, "sent": 6},
        "baseline_parse_us_per_registration": round(base, 1),
        "ratio_registration_to_baseline": round(totals[0] / base, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


def profile(n: int, rate: float, warm_s: float = 0.0, top: int = 25) -> str:
    _run(min(n, 50), rate)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    _run(n, rate, warm_s)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _instructions(args: list[str]) -> int:
    """Instructions callgrind counts for one run of this script with `args`."""
    with tempfile.NamedTemporaryFile(prefix="pcscf_msgs.cg.") as out:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}"]
        subprocess.run([*cmd, sys.executable, __file__, *args], check=True, capture_output=True)
        for line in Path(out.name).read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def callgrind(small: int, large: int, rate: float, warm_s: float = 0.0) -> dict:
    """Instructions per registration, by the difference of two runs."""
    common = ["--only", "--rate", str(rate), "--steady", str(warm_s)]
    counts = [_instructions([*common, "--n", str(k)]) for k in (small, large)]
    return {
        "instructions_per_registration": round((counts[1] - counts[0]) / (large - small)),
        "callgrind_n": [small, large],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="registrations (new UEs) per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=600.0, help="registrations per simulated s")
    ap.add_argument(
        "--steady",
        type=float,
        default=0.0,
        metavar="S",
        help="first S simulated seconds of registrations untimed (33: past Timer F)",
    )
    ap.add_argument("--callgrind", action="store_true", help="instruction counts (slow)")
    ap.add_argument("--callgrind-n", type=int, nargs=2, default=(200, 600), metavar=("A", "B"))
    ap.add_argument("--profile", action="store_true", help="cProfile of one run")
    ap.add_argument("--only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:  # one measured process for --callgrind
        _run(args.n, args.rate, args.steady)
        return 0
    if args.profile:
        print(profile(args.n, args.rate, args.steady))
        return 0
    result = cpu_run(args.n, args.rounds, args.rate, args.steady)
    if args.callgrind:
        result.update(callgrind(*args.callgrind_n, args.rate, args.steady))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
