"""CPU of the S-CSCF per registration and per re-registration, one process, no sockets.

The real S-CSCF (imsaka.cscf.scscf.Scscf, as `imsaka run scscf` builds it) on a
SipEndpoint with an in-memory UDP transport, fed what the I-CSCF and the P-CSCF send it
(the messages of `imsaka demo`, TS 24.229 §5.4.1, a new UE per registration):

- registration: REGISTER without credentials → MAR/MAA → 401; REGISTER with the digest
  response → SAR/SAA (REGISTRATION, User-Data with three IMPUs) → 200 OK; the P-CSCF's
  reg-event SUBSCRIBE → 200 and NOTIFY (reginfo); the P-CSCF's 200 to that NOTIFY;
- re-registration (each UE once, after all registered): a protected REGISTER
  (integrity-protected="yes") → SAR (RE_REGISTRATION, no User-Data) → 200 OK; with
  ``--reregistration-sar when-needed`` (``[scscf].reregistration_sar``) the 200 OK comes
  from the stored profile, no SAR (TS 23.228 §5.2.2.4).

Cx answers come at once from canned MAA/SAA frames built with imsaka.diameter.cx before
the clock starts; with the codec on (default) each request is encoded and each answer
frame decoded as a DiameterNode does, so the number is the S-CSCF process's CPU but for
the Diameter peer and the sockets. Only the S-CSCF's work is timed (process_time from a
message handed in until its answers are out); the UE's digest and the P-CSCF's 200 are
built outside the timed spans. Every 401, 200, NOTIFY is checked (the run raises
otherwise).

Baseline in the same run: parse_message + to_bytes of the two REGISTERs and the SUBSCRIBE
of a registration (a ratio holds on a loaded machine, an absolute time does not).

    python benchmarks/scscf_msgs.py [--n 1000] [--rounds 3] [--no-codec] [--vectors K] [--uvloop]
        [--reregistration-sar always|when-needed] [--freeze]
    python benchmarks/scscf_msgs.py --callgrind [--callgrind-n 100 300]

`--callgrind` runs the whole benchmark process under `valgrind --tool=callgrind` for two
sizes A and B and prints instructions per registration (I_B - I_A) / (B - A), and per
re-registration the same over runs that also re-register (start-up cancels out; counts
do not move with the machine's load; the UE/P-CSCF side built in the harness, a few per
cent, is included), the re-registration under both ``reregistration_sar`` settings.
`--freeze` does what `imsaka run` does once started (`settle_gc`: gc.collect and
gc.freeze), so the cyclic collector's older passes skip the workload and the modules.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from imsaka.aka.digest import AKAV1_MD5, compute_response  # noqa: E402
from imsaka.config import parse_config  # noqa: E402
from imsaka.cscf.registrar import MemoryBindingStore  # noqa: E402
from imsaka.cscf.scscf import Scscf  # noqa: E402

try:  # (an older tree measured side by side has no callback forms)
    from imsaka.cscf.scscf import notify_sender
except ImportError:  # pragma: no cover
    notify_sender = None
from imsaka.diameter import cx  # noqa: E402
from imsaka.hss.userdata import ProfileIdentities, build_user_data  # noqa: E402
from imsaka.sip import parse_message  # noqa: E402
from imsaka.sip.endpoint import SipEndpoint  # noqa: E402
from sip_parse import _MemoryUdp  # noqa: E402

ROOT = BENCH.parent
CONFIG = ROOT / "examples" / "imsaka.toml"
ICSCF = ("127.0.0.1", 5070)
PCSCF = ("127.0.0.1", 5060)
XRES = bytes.fromhex("a54211d5e3ba50bf")

_REGISTER = (
    "REGISTER sip:@SCSCF@ SIP/2.0\r\n"
    "Via: SIP/2.0/UDP icscf1_p.home1.net:5070;branch=z9hG4bKi@CSEQ@x@N@\r\n"
    "Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp@CSEQ@x@N@;received=127.0.0.1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:@PORT@;branch=z9hG4bKu@CSEQ@x@N@\r\n"
    "Max-Forwards: 68\r\n"
    "P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=234151D0FCE11\r\n"
    "Path: <sip:term@pcscf1.home1.net:5060;lr>\r\n"
    "Require: path\r\n"
    'P-Visited-Network-ID: "home1.net"\r\n'
    'P-Charging-Vector: icid-value="RWP/XyBOG/3d4lp+w6E/mViuWBQ=@N@"\r\n'
    "From: <sip:@USER@_public1@home1.net>;tag=@TAG@\r\n"
    "To: <sip:@USER@_public1@home1.net>\r\n"
    "Contact: <sip:127.0.0.1:@PORT@>;expires=600000\r\n"
    "Call-ID: @CALLID@@127.0.0.1\r\n"
    'Authorization: Digest username="@USER@_private@home1.net", realm="@REALM@", '
    "@CRED@\r\n"
    "CSeq: @CSEQ@ REGISTER\r\n"
    "Supported: path\r\n"
    "Content-Length: 0\r\n\r\n"
)
_NO_CRED = 'nonce="", uri="sip:@REALM@", response="", integrity-protected="no"'
_CRED = (
    'nonce="@NONCE@", algorithm=AKAv1-MD5, uri="sip:@REALM@", response="@RESPONSE@", '
    'integrity-protected="@IP@"'
)
_SUBSCRIBE = (
    "SUBSCRIBE sip:@USER@_public1@home1.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKs@N@\r\n"
    "Max-Forwards: 70\r\n"
    "Route: <sip:orig@@SCSCF@;lr>\r\n"
    "From: <sip:pcscf1.home1.net:5060>;tag=s@TAG@\r\n"
    "To: <sip:@USER@_public1@home1.net>\r\n"
    "Call-ID: s@CALLID@@pcscf1.home1.net\r\n"
    "CSeq: 1 SUBSCRIBE\r\n"
    "Event: reg\r\n"
    "Expires: 600000\r\n"
    "Contact: <sip:127.0.0.1:5060>\r\n"
    "P-Asserted-Identity: <sip:pcscf1.home1.net:5060>\r\n"
    "Content-Length: 0\r\n\r\n"
)
# what the P-CSCF's 200 to a NOTIFY copies from it (make_response, RFC 3261 §8.2.6.2)
_COPIED = (b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:")


def _fill(template: str, fields: dict[str, str]) -> str:
    template = template.replace("@CRED@", fields.get("@CRED@", ""))  # it holds fields too
    for k, v in fields.items():
        template = template.replace(k, v)
    return template


@dataclass
class _Ue:
    fields: dict[str, str]
    maa: tuple[bytes, object]  # (frame, the answer decoded ahead for --no-codec)
    saa: tuple[bytes, object]
    saa_again: tuple[bytes, object]
    nonce: str = ""
    response: str = ""


def _framed(answer) -> tuple[bytes, object]:
    frame = answer.encode(1, 1)
    return frame, cx.decode(cx.decode_frame(frame))


class Workload:
    """N UEs and the Cx answer frames for them, built before any timing."""

    def __init__(
        self, n: int, seed: int = 7, vectors: int | None = None, rereg_sar: str | None = None
    ) -> None:
        cfg = parse_config(tomllib.loads(CONFIG.read_text()))
        assert cfg.scscf is not None
        if vectors is not None:  # [scscf].vectors_per_request (the HSS answers as many)
            cfg = replace(cfg, scscf=replace(cfg.scscf, vectors_per_request=vectors))
        if rereg_sar is not None:  # [scscf].reregistration_sar
            cfg = replace(cfg, scscf=replace(cfg.scscf, reregistration_sar=rereg_sar))
        assert cfg.scscf is not None
        self.config = cfg
        s = cfg.scscf
        rng = random.Random(seed)
        self.ues: list[_Ue] = []
        for i in range(n):
            user = f"bench{i}"
            impi = f"{user}_private@home1.net"
            impus = [(f"sip:{user}_public{k}@home1.net", False) for k in (1, 2, 3)]
            items = tuple(
                cx.SipAuthDataItem.aka_vector(
                    rand=rng.randbytes(16),
                    autn=rng.randbytes(16),
                    xres=XRES,
                    ck=rng.randbytes(16),
                    ik=rng.randbytes(16),
                    item_number=k + 1,
                )
                for k in range(s.vectors_per_request)
            )
            head = {"session_id": f"s;{i}", "origin_host": "hss.home1.net"}
            head["origin_realm"] = "home1.net"
            maa = cx.MultimediaAuthAnswer(
                **head,
                result_code=cx.DIAMETER_SUCCESS,
                user_name=impi,
                public_identity=impus[0][0],
                sip_number_auth_items=len(items),
                sip_auth_data_items=items,
            )
            saa = cx.ServerAssignmentAnswer(
                **head,
                result_code=cx.DIAMETER_SUCCESS,
                user_name=impi,
                user_data=build_user_data(impi, [ProfileIdentities(impus)]),
            )
            self.ues.append(
                _Ue(
                    fields={
                        "@N@": f"{i:016x}",
                        "@USER@": user,
                        "@TAG@": f"{i:08x}",
                        "@CALLID@": f"{i:024x}",
                        "@PORT@": str(10000 + i % 50000),
                        "@REALM@": s.realm,
                        "@SCSCF@": f"{s.name}:{s.port}",
                    },
                    maa=_framed(maa),
                    saa=_framed(saa),
                    saa_again=_framed(replace(saa, user_data=None)),
                )
            )


class _Harness:
    def __init__(self, w: Workload, codec: bool) -> None:
        self.w = w
        self.codec = codec
        self.answer: tuple[bytes, object] = (b"", None)
        self.cpu = {"register": 0.0, "reg_event": 0.0, "reregister": 0.0}
        self.received = 0
        self.sent = 0

    async def cx_send(self, request):
        return self._answer_to(request)

    def _answer_to(self, request):
        if self.codec:  # as DiameterNode.request: encode out, decode the answer frame
            request.encode_body()
            return cx.decode(cx.decode_frame(self.answer[0]))
        return self.answer[1]

    def cx_ask(self, request, callback) -> None:
        """As DiameterNode.request_callback: the answer's callback from a loop event."""
        asyncio.get_running_loop().call_soon(callback, self._answer_to(request), None)

    async def start(self) -> None:
        cfg = self.w.config
        s = cfg.scscf
        assert s is not None
        self.ep = SipEndpoint(owner="scscf")
        self.t = _MemoryUdp()
        self.t.local_address = (s.address, s.port)
        self.ep.add_transport(self.t)
        # as ScscfServer wires it: the callback forms where this S-CSCF has them
        callbacks = {}
        if "cx_ask" in inspect.signature(Scscf).parameters:
            callbacks["cx_ask"] = self.cx_ask
        if notify_sender is not None:
            callbacks["send_request_callback"] = notify_sender(self.ep)
        self.scscf = Scscf(
            s,
            cx_send=self.cx_send,
            store=MemoryBindingStore(),
            random_bytes=random.Random(11).randbytes,
            send_request=self.ep.send_request,
            resolve=cfg.network.resolve,
            **callbacks,
        )
        await self.scscf.start()
        scscf = self.scscf
        # as ScscfServer wires it: a coroutine (run as a task) only when one is needed
        self.ep.set_request_handler(lambda request, tx: scscf.receive_request(request, tx.respond))

    async def _exchange(self, data: str | bytes, source, expect: int, kind: str) -> list[bytes]:
        """Hand `data` to the S-CSCF; return the `expect` messages it sent (CPU timed)."""
        t = self.t
        t.sent.clear()
        raw = data.encode() if isinstance(data, str) else data
        start = time.process_time()
        self.ep._on_message(raw, source, t)
        tasks = self.scscf._tasks
        # until it sent them and its tasks ended; but a SUBSCRIBE's NOTIFY waits for its 200
        waits = kind == "reg_event" and expect > 0
        for _ in range(200):
            if len(t.sent) >= expect and (waits or not tasks):
                break
            await asyncio.sleep(0)
        self.cpu[kind] += time.process_time() - start
        self.received += 1
        self.sent += len(t.sent)
        if len(t.sent) != expect:
            raise RuntimeError(f"S-CSCF benchmark: {len(t.sent)} messages out, {expect} expected")
        return [d for d, _ in t.sent]

    async def register(self, ue: _Ue) -> None:
        f = ue.fields
        self.answer = ue.maa
        first = dict(f, **{"@CSEQ@": "1", "@CRED@": _NO_CRED})
        (challenge,) = await self._exchange(_fill(_REGISTER, first), ICSCF, 1, "register")
        if not challenge.startswith(b"SIP/2.0 401 "):
            raise RuntimeError(f"S-CSCF benchmark: no 401: {challenge[:40]!r}")
        at = challenge.index(b'nonce="') + 7
        ue.nonce = challenge[at : challenge.index(b'"', at)].decode()
        realm = f["@REALM@"]
        ue.response = compute_response(
            algorithm=AKAV1_MD5,
            username=f"{f['@USER@']}_private@home1.net",
            realm=realm,
            password=XRES,
            method="REGISTER",
            uri=f"sip:{realm}",
            nonce=ue.nonce,
        )
        self.answer = ue.saa
        second = dict(f, **{"@CSEQ@": "2", "@CRED@": _CRED, "@IP@": "yes"})
        second.update({"@NONCE@": ue.nonce, "@RESPONSE@": ue.response})
        (ok,) = await self._exchange(_fill(_REGISTER, second), ICSCF, 1, "register")
        if not ok.startswith(b"SIP/2.0 200 ") or b"P-Associated-URI: " not in ok:
            raise RuntimeError(f"S-CSCF benchmark: no 200: {ok[:40]!r}")
        ok, notify = await self._exchange(_fill(_SUBSCRIBE, f), PCSCF, 2, "reg_event")
        if not ok.startswith(b"SIP/2.0 200 ") or not notify.startswith(b"NOTIFY "):
            raise RuntimeError("S-CSCF benchmark: SUBSCRIBE not answered 200 + NOTIFY")
        if b'state="active"' not in notify:
            raise RuntimeError("S-CSCF benchmark: the NOTIFY has no active registration")
        head = notify[: notify.index(b"\r\n\r\n")].split(b"\r\n")
        copied = [line for line in head if line.startswith(_COPIED)]
        reply = b"\r\n".join([b"SIP/2.0 200 OK", *copied, b"Content-Length: 0", b"", b""])
        await self._exchange(reply, PCSCF, 0, "reg_event")

    async def reregister(self, ue: _Ue) -> None:
        self.answer = ue.saa_again
        again = dict(ue.fields, **{"@CSEQ@": "3", "@CRED@": _CRED, "@IP@": "yes"})
        again.update({"@NONCE@": ue.nonce, "@RESPONSE@": ue.response})
        (ok,) = await self._exchange(_fill(_REGISTER, again), ICSCF, 1, "reregister")
        if not ok.startswith(b"SIP/2.0 200 "):
            raise RuntimeError(f"S-CSCF benchmark: re-registration not 200: {ok[:40]!r}")


async def _run(w: Workload, n: int, codec: bool, rereg: bool, freeze: bool = False) -> _Harness:
    h = _Harness(w, codec)
    await h.start()
    if freeze:  # as `imsaka run` once the function started
        from imsaka.cscf._serve import settle_gc

        settle_gc()
    for ue in w.ues[:n]:
        await h.register(ue)
    if rereg:
        for ue in w.ues[:n]:
            await h.reregister(ue)
    c = h.scscf.core.counters
    if c["registered"] != n or (rereg and c["reregistered"] != n):
        raise RuntimeError(f"S-CSCF benchmark: counters {dict(c)}")
    without_sar = w.config.scscf.reregistration_sar == "when-needed"  # type: ignore[union-attr]
    if rereg and c["reregister_without_sar"] != (n if without_sar else 0):
        raise RuntimeError(f"S-CSCF benchmark: counters {dict(c)}")
    await h.ep.close()
    await h.scscf.close()
    return h


def baseline_us(w: Workload, rounds: int = 200) -> float:
    """parse_message + to_bytes of the REGISTERs and the SUBSCRIBE of one registration."""
    f = dict(w.ues[0].fields, **{"@NONCE@": "x" * 56, "@RESPONSE@": "0" * 32, "@IP@": "yes"})
    msgs = [
        _fill(_REGISTER, dict(f, **{"@CSEQ@": "1", "@CRED@": _NO_CRED})).encode(),
        _fill(_REGISTER, dict(f, **{"@CSEQ@": "2", "@CRED@": _CRED})).encode(),
        _fill(_SUBSCRIBE, f).encode(),
    ]
    start = time.process_time()
    for _ in range(rounds):
        for m in msgs:
            parse_message(m).to_bytes()
    return (time.process_time() - start) / rounds * 1e6


def cpu_run(
    n: int,
    rounds: int,
    codec: bool,
    vectors: int | None = None,
    rereg_sar: str | None = None,
    freeze: bool = False,
) -> dict:
    w = Workload(n, vectors=vectors, rereg_sar=rereg_sar)
    asyncio.run(_run(w, min(n, 50), codec, True))  # warm imports and caches
    runs = [asyncio.run(_run(w, n, codec, True, freeze)) for _ in range(rounds)]
    base = min(baseline_us(w) for _ in range(rounds))
    per = {k: sorted(h.cpu[k] / n * 1e6 for h in runs) for k in runs[0].cpu}
    registration = sorted((h.cpu["register"] + h.cpu["reg_event"]) / n * 1e6 for h in runs)
    h = runs[0]
    return {
        "benchmark": "scscf_msgs",
        "registrations": n,
        "codec": codec,
        "vectors_per_request": w.config.scscf.vectors_per_request,  # type: ignore[union-attr]
        "reregistration_sar": w.config.scscf.reregistration_sar,  # type: ignore[union-attr]
        "gc_freeze": freeze,
        "event_loop": type(asyncio.get_event_loop_policy()).__module__.split(".")[0],
        "cpu_us_per_registration": round(registration[0], 1),
        "cpu_us_per_registration_runs": [round(x, 1) for x in registration],
        "cpu_us_register_pair": round(per["register"][0], 1),
        "cpu_us_reg_event": round(per["reg_event"][0], 1),
        "cpu_us_per_reregistration": round(per["reregister"][0], 1),
        "cpu_us_per_reregistration_runs": [round(x, 1) for x in per["reregister"]],
        "messages_received": h.received,
        "messages_sent": h.sent,
        "messages_per_registration": {"received": 4, "sent": 4},
        "messages_per_reregistration": {"received": 1, "sent": 1},
        "baseline_parse_us_per_registration": round(base, 1),
        "ratio_registration_to_baseline": round(registration[0] / base, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


def _instructions(args: list[str]) -> int:
    """Instructions callgrind counts for one run of this script with `args`."""
    with tempfile.NamedTemporaryFile(prefix="scscf_msgs.cg.") as out:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}"]
        subprocess.run([*cmd, sys.executable, __file__, *args], check=True, capture_output=True)
        for line in Path(out.name).read_text().splitlines():
            if line.startswith("summary:"):  # the run's total (also on the last line)
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def callgrind(
    small: int,
    large: int,
    codec: bool,
    vectors: int | None,
    uvloop: bool,
    jobs: int = 2,
    freeze: bool = False,
) -> dict:
    """Instructions per registration and per re-registration (under each
    ``reregistration_sar`` setting), by differences of runs."""
    common = ["--pool", str(large)] + ([] if codec else ["--no-codec"])
    common += [] if vectors is None else ["--vectors", str(vectors)]
    common += ["--uvloop"] if uvloop else []
    common += ["--freeze"] if freeze else []
    modes = ("reg", "rereg", "rereg-when-needed")
    keys = [(mode, n) for mode in modes for n in (small, large)]

    def count(key: tuple[str, int]) -> int:
        mode, n = key
        args = ["--only", mode.split("-", 1)[0], "--n", str(n), *common]
        if mode == "rereg-when-needed":
            args += ["--reregistration-sar", "when-needed"]
        return _instructions(args)

    with ThreadPoolExecutor(jobs) as pool:  # each run is a valgrind process of its own
        counts = dict(zip(keys, pool.map(count, keys), strict=True))

    def per(mode: str) -> float:
        return (counts[(mode, large)] - counts[(mode, small)]) / (large - small)

    reg = per("reg")
    return {
        "instructions_per_registration": round(reg),
        "instructions_per_reregistration": round(per("rereg") - reg),
        "instructions_per_reregistration_when_needed": round(per("rereg-when-needed") - reg),
        "callgrind_n": [small, large],
        "callgrind_gc_freeze": freeze,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="registrations (new UEs) per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-codec", action="store_true", help="Cx answers without the codec")
    ap.add_argument("--vectors", type=int, help="vectors per MAR (default: the config's)")
    ap.add_argument("--uvloop", action="store_true", help="uvloop, as `imsaka run` has it")
    ap.add_argument(
        "--reregistration-sar",
        choices=("always", "when-needed"),
        help="[scscf].reregistration_sar (default: the config's)",
    )
    ap.add_argument("--freeze", action="store_true", help="gc.freeze() once started")
    ap.add_argument("--callgrind", action="store_true", help="instruction counts (slow)")
    ap.add_argument("--callgrind-n", type=int, nargs=2, default=(100, 300), metavar=("A", "B"))
    ap.add_argument("--only", choices=("reg", "rereg"), help=argparse.SUPPRESS)
    ap.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    codec = not args.no_codec
    if args.uvloop:
        from imsaka.cscf._serve import use_uvloop

        use_uvloop()
    if args.only:  # one measured process for --callgrind
        w = Workload(args.pool or args.n, vectors=args.vectors, rereg_sar=args.reregistration_sar)
        asyncio.run(_run(w, args.n, codec, args.only == "rereg", args.freeze))
        return 0
    result = cpu_run(args.n, args.rounds, codec, args.vectors, args.reregistration_sar, args.freeze)
    if args.callgrind:
        result.update(
            callgrind(*args.callgrind_n, codec, args.vectors, args.uvloop, freeze=args.freeze)
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
