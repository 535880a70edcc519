"""Benchmark: CPU of the Diameter layer per Cx request and answer, in one process, no sockets.

The messages are those of one two-phase IMS AKA registration (TS 29.228 §6.1, TS 29.229
§6.1): UAR/UAA twice (I-CSCF), MAR/MAA and SAR/SAA (S-CSCF), built as the CSCFs and the
HSS build them, from the frames `imsaka demo --seed 7` wrote
(tests/diameter/data/registration_cx.json), with a different subscriber for each
registration (IMPI/IMPU cycle over --subscribers, more than the encode caches hold).

Stages, each timed over --n registrations (one of each message per registration):
- `encode`: a sender builds the Cx dataclass and encodes it (`obj.encode(hbh, e2e)`);
- `decode`: a receiver turns the frame into the Cx dataclass as a DiameterNode does
  (`cx.decode(cx.decode_frame(frame))`);
- `server`: a `DiameterNode` with a request handler answering from the request (as
  `hss.service` does, `req.answer(...)`), driven on an event loop through an in-memory
  transport: request bytes in, answer bytes out (framing, peer state machine, duplicate
  cache, dispatch, handler task, encode);
- `server_plain`: the same with a plain-function handler (answered without a Task);
- `client`: a `DiameterNode` sending with `await node.request(obj)`; the in-memory
  transport answers each request with the frame of its answer (ids patched): request
  encode, pending table, framing, future, answer decode;
- `client_callback`: the same with `node.request_callback(obj, callback)` (the I-CSCF's
  way): each answer's callback sends the next request;
- `baseline`: python-diameter's codec on the same frames (`Message.from_bytes` then
  `as_bytes()` of each), measured in the same run, so the ratios hold on a loaded machine.

CPU is time.process_time per registration (and per message: divided by 4 requests or 4
answers). `--callgrind` runs each stage under `valgrind --tool=callgrind` twice (--n A and
B) and prints the instructions per registration: (I_B - I_A) / (B - A), which cancels
start-up and is independent of the load of the machine.

    python benchmarks/diameter_cpu.py [--n 3000] [--rounds 3] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imsaka.diameter import codec, cx
from imsaka.diameter.node import DiameterNode, PeerSpec, _Connection
from imsaka.diameter.peer import PeerConfig, PeerConnection

DATA = Path(__file__).resolve().parents[1] / "tests" / "diameter" / "data" / "registration_cx.json"
KINDS = ("uar1", "uar2", "mar", "sar")
ANSWERS = {"uar1": "uaa1", "uar2": "uaa2", "mar": "maa", "sar": "saa"}
HSS = "hss.home1.net"
STAGES = ("encode", "decode", "server", "server_plain", "client", "client_callback", "baseline")
PER = {
    "encode": 8,
    "decode": 8,
    "baseline": 8,
    "server": 4,
    "server_plain": 4,
    "client": 4,
    "client_callback": 4,
}


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _swap(value: Any, i: int) -> Any:
    """The template's value for subscriber i (user1 -> user<i>)."""
    if isinstance(value, str):
        return value.replace("user1_", f"user{i}_")
    if isinstance(value, bytes):
        return value.replace(b"user1_", b"user%d_" % i)
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return tuple(v.replace("user1_", f"user{i}_") for v in value)
    return value


class Workload:
    """The templates and, per subscriber, the prebuilt frames receivers decode."""

    def __init__(self, subscribers: int) -> None:
        raw = json.loads(DATA.read_text())
        self.captured = {k: bytes.fromhex(v) for k, v in raw.items() if not k.startswith("_")}
        self.templates: dict[str, tuple[type, dict[str, Any]]] = {}
        for name, frame in self.captured.items():
            obj = cx.decode(codec.decode_message(frame))
            self.templates[name] = (type(obj), _fields(obj))
        # The same objects, as the CSCFs and the HSS construct them, give the same bytes.
        for name, frame in self.captured.items():
            cls, fields = self.templates[name]
            hbh, e2e = codec.peek_header(frame)[3:]
            assert cls(**fields).encode(hbh, e2e) == frame, name
        self.subscribers = subscribers
        self.fields = [
            {name: self._fields_for(name, i) for name in self.captured}
            for i in range(1, subscribers + 1)
        ]
        self.frames = [
            {name: self.build(name, i).encode(0x1000 + i, 0x2000 + i) for name in self.captured}
            for i in range(subscribers)
        ]

    def _fields_for(self, name: str, i: int) -> dict[str, Any]:
        _, fields = self.templates[name]
        out = {k: _swap(v, i) for k, v in fields.items()}
        out["session_id"] += f";{i}"  # unique per registration, as the CSCFs make them
        return out

    def build(self, name: str, index: int) -> Any:
        return self.templates[name][0](**self.fields[index][name])


# --- stages ----------------------------------------------------------------------------


def stage_encode(w: Workload, n: int) -> float:
    templates = w.templates
    fields = w.fields
    m = w.subscribers
    names = (*KINDS, *ANSWERS.values())
    t0 = time.process_time()
    for r in range(n):
        per = fields[r % m]
        for name in names:
            templates[name][0](**per[name]).encode(r, r)
    return time.process_time() - t0


def stage_decode(w: Workload, n: int) -> float:
    frames = w.frames
    m = w.subscribers
    names = (*KINDS, *ANSWERS.values())
    # What a DiameterNode's peer does with a frame (trees before cx.decode_frame:
    # codec.decode_message, then cx.decode).
    decode, decode_message = cx.decode, getattr(cx, "decode_frame", codec.decode_message)
    t0 = time.process_time()
    for r in range(n):
        per = frames[r % m]
        for name in names:
            decode(decode_message(per[name]))
    return time.process_time() - t0


def stage_baseline(w: Workload, n: int) -> float:
    frames = w.frames
    m = w.subscribers
    names = (*KINDS, *ANSWERS.values())
    to_library = codec.to_library
    t0 = time.process_time()
    for r in range(n):
        per = frames[r % m]
        for name in names:
            to_library(per[name]).as_bytes()
    return time.process_time() - t0


class _Transport:
    """The minimum of an asyncio transport a `_Connection` uses; writes go to `sink`."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, data: bytes) -> None:
        self.sink(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 3868)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _open_with_core(node: DiameterNode, conn: _Connection, core: PeerConnection) -> None:
    """Capabilities exchange between `conn` (the node's) and a bare sans-I/O `core`."""
    out: list[bytes] = []
    conn.connection_made(_Transport(out.append))
    core.connection_made(0.0)
    for _ in range(4):
        for data in core.messages_to_send():
            conn.data_received(data)
        for data in out:
            core.receive_data(data, 0.0)
        out.clear()
    assert conn.core.is_open and core.is_open, (conn.core.state, core.state)


async def _server(w: Workload, n: int, plain: bool = False) -> float:
    node = DiameterNode(
        origin_host=HSS,
        origin_realm="home1.net",
        peers=(PeerSpec("icscf1.home1.net"), PeerSpec("scscf1.home1.net")),
    )
    # By Session-Id, the fields of the answer to each request.
    m = w.subscribers
    answer_fields: dict[str, dict[str, Any]] = {}
    for per in w.fields:
        for name in KINDS:
            answer = dict(per[ANSWERS[name]])
            answer_fields[answer.pop("session_id")] = answer

    async def handler(req: Any, peer: Any) -> Any:
        # As hss.service builds them: req.answer(origin_host=..., origin_realm=..., ...).
        return req.answer(**answer_fields[req.session_id])

    def plain_handler(req: Any, peer: Any) -> Any:
        return req.answer(**answer_fields[req.session_id])

    node.set_request_handler(plain_handler if plain else handler)
    await node.start()
    conn = node._accept()
    client = PeerConnection(PeerConfig("icscf1.home1.net", "home1.net"), initiator=True, now=0.0)
    _open_with_core(node, conn, client)
    loop = asyncio.get_running_loop()
    written: list[asyncio.Future[bytes]] = []
    conn.transport.sink = lambda data: written[-1].set_result(data)  # type: ignore[union-attr]
    data_received = conn.data_received
    new_future = loop.create_future
    frames = w.frames
    ids = struct.Struct("!II").pack
    t0 = time.process_time()
    for r in range(n):
        per = frames[r % m]
        for k, name in enumerate(KINDS):
            # Unique end-to-end ids (else duplicates, RFC 6733 §6.1.9).
            frame = per[name]
            e2e = r * 4 + k
            fut = new_future()
            written.append(fut)
            data_received(frame[:12] + ids(e2e, e2e) + frame[20:])
            await fut
            written.pop()
    spent = time.process_time() - t0
    await _close(node, conn)
    return spent


async def _client_node() -> tuple[DiameterNode, _Connection]:
    """A client node with its HSS connection open over the in-memory transport."""
    node = DiameterNode(
        origin_host="icscf1.home1.net", origin_realm="home1.net", peers=(PeerSpec(HSS),)
    )
    await node.start()
    conn = _Connection(node, node._new_core(initiator=True, expected_host=HSS))
    server = PeerConnection(
        PeerConfig(HSS, "home1.net"), initiator=False, now=0.0, allowed_hosts=["icscf1.home1.net"]
    )
    _open_with_core(node, conn, server)
    node._peer_opened(conn)
    return node, conn


async def _client(w: Workload, n: int) -> float:
    node, conn = await _client_node()
    loop = asyncio.get_running_loop()
    m = w.subscribers
    answer_for: list[bytes] = []

    def sink(data: bytes) -> None:
        # The HSS's answer to this request: same ids (RFC 6733 §6.2).
        frame = answer_for[-1]
        loop.call_soon(conn.data_received, frame[:12] + data[12:20] + frame[20:])

    conn.transport.sink = sink  # type: ignore[union-attr]
    requests = [[w.build(name, r) for name in KINDS] for r in range(m)]
    t0 = time.process_time()
    for r in range(n):
        per = w.frames[r % m]
        for name, req in zip(KINDS, requests[r % len(requests)], strict=True):
            answer_for.append(per[ANSWERS[name]])
            await node.request(req)
            answer_for.pop()
    spent = time.process_time() - t0
    await _close(node, conn)
    return spent


async def _client_callback(w: Workload, n: int) -> float:
    """`client` with `node.request_callback` (as the I-CSCF sends its UARs): each answer's
    callback sends the next request."""
    node, conn = await _client_node()
    loop = asyncio.get_running_loop()
    m = w.subscribers
    answer_for: list[bytes] = [b""]

    def sink(data: bytes) -> None:
        frame = answer_for[0]
        loop.call_soon(conn.data_received, frame[:12] + data[12:20] + frame[20:])

    conn.transport.sink = sink  # type: ignore[union-attr]
    requests = [[w.build(name, r) for name in KINDS] for r in range(m)]
    work = [
        (w.frames[r % m][ANSWERS[name]], req)
        for r in range(n)
        for name, req in zip(KINDS, requests[r % len(requests)], strict=True)
    ]
    done = loop.create_future()
    ask = node.request_callback
    it = iter(work)

    def next_one(answer: Any, exc: BaseException | None) -> None:
        if exc is not None:
            done.set_exception(exc)
            return
        item = next(it, None)
        if item is None:
            done.set_result(None)
            return
        answer_for[0] = item[0]
        ask(item[1], next_one)

    t0 = time.process_time()
    next_one(None, None)
    await done
    spent = time.process_time() - t0
    await _close(node, conn)
    return spent


async def _close(node: DiameterNode, conn: _Connection) -> None:
    assert node.counters.total() == 0, node.counters  # nothing dropped or refused
    conn.transport.sink = lambda data: None  # type: ignore[union-attr]
    conn.connection_lost(None)
    await node.stop()


def _run_loop(coro: Any) -> float:
    try:
        import uvloop  # the functions run on uvloop where installed (imsaka.runner)

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run_stage(stage: str, w: Workload, n: int) -> float:
    if stage == "server":
        return _run_loop(_server(w, n))
    if stage == "server_plain":
        return _run_loop(_server(w, n, plain=True))
    if stage == "client":
        return _run_loop(_client(w, n))
    if stage == "client_callback":
        return _run_loop(_client_callback(w, n))
    return {"encode": stage_encode, "decode": stage_decode, "baseline": stage_baseline}[stage](w, n)


# --- callgrind -------------------------------------------------------------------------


def callgrind(stages: tuple[str, ...], n_small: int, n_large: int, jobs: int) -> dict[str, float]:
    """Instructions per registration of each stage, by difference of two runs of it (the
    same subscribers in both, so building them is start-up like the imports)."""
    runs = [(stage, n) for stage in stages for n in (n_small, n_large)]
    counts: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        waiting = list(runs)
        running: list[tuple[tuple[str, int], subprocess.Popen[bytes], Path]] = []
        while waiting or running:
            while waiting and len(running) < jobs:
                stage, n = key = waiting.pop(0)
                out = Path(tmp) / f"cg.{stage}.{n}"
                cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                cmd += [sys.executable, __file__, "--only", stage, "--n", str(n)]
                cmd += ["--subscribers", str(n_large)]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                running.append((key, proc, out))
            key, proc, out = running.pop(0)
            if proc.wait() != 0:
                raise RuntimeError(f"callgrind run {key} failed")
            for line in out.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    counts[key] = int(line.split()[1])
                    break
    return {
        stage: (counts[(stage, n_large)] - counts[(stage, n_small)]) / (n_large - n_small)
        for stage in stages
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="registrations per stage and round")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--callgrind", action="store_true", help="instruction counts (slow)")
    ap.add_argument("--callgrind-n", type=int, nargs=2, default=(100, 400), metavar=("A", "B"))
    ap.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    ap.add_argument("--no-cpu", action="store_true", help="skip the process_time rounds")
    ap.add_argument("--only", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        w = Workload(args.subscribers)
        run_stage(args.only, w, args.n)
        return
    w = Workload(args.subscribers)
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "registrations": args.n,
        "subscribers": args.subscribers,
        "messages_per_registration": {"requests": 4, "answers": 4},
    }
    cpu: dict[str, float] = {}
    for stage in () if args.no_cpu else STAGES:
        run_stage(stage, w, min(args.n, 200))  # warm caches and imports
        cpu[stage] = min(run_stage(stage, w, args.n) for _ in range(args.rounds)) / args.n
    if cpu:
        result["cpu_us_per_registration"] = {k: round(v * 1e6, 1) for k, v in cpu.items()}
        result["cpu_us_per_unit"] = {k: round(v * 1e6 / PER[k], 2) for k, v in cpu.items()}
        result["ratio_to_baseline"] = {
            k: round(v / cpu["baseline"], 4) for k, v in cpu.items() if k != "baseline"
        }
    if args.callgrind:
        small, large = args.callgrind_n
        ins = callgrind(STAGES, small, large, args.jobs)
        result["instructions_per_registration"] = {k: round(v) for k, v in ins.items()}
        result["instructions_per_unit"] = {k: round(v / PER[k]) for k, v in ins.items()}
    result["unit"] = {
        "encode": "message (4 requests + 4 answers per registration)",
        "decode": "message",
        "baseline": "message",
        "server": "request in and its answer out",
        "server_plain": "the same, the handler a plain function (no Task)",
        "client": "request out and its answer in",
        "client_callback": "the same, sent with request_callback (no coroutine, no future)",
    }
    result["load_average"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
