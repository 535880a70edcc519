"""What a planned P-CSCF restart with ``[pcscf].state_file`` costs, and that it keeps
every UE registered (`imsaka.cscf.pcscf_state`; TS 33.203 §7, TS 24.229 §5.2.2-5.2.3).

A real `imsaka.cscf.pcscf_server.PcscfServer` (as `imsaka run pcscf` builds it,
userspace ESP) on loopback, upstream a stand-in registrar (benchmarks/pcscf_rereg.py's:
401 with a Milenage vector, then 200 with Service-Route; here its 200 to the P-CSCF's
reg-event SUBSCRIBE names a Contact, so the P-CSCF holds a confirmed dialog to carry).
`--ues` UeClients register (untimed). Then the P-CSCF is stopped as SIGTERM stops it
(`drain()`, then the close writes the file) and a new one starts from the same
configuration and reads it back. Timed (wall clock, this process only): the write
(dump, JSON, fsync, rename), the take-back (read, JSON, SA sets and registrations
rebuilt), the whole stop and the whole start. Then every UE refreshes over the SA set
it has: each must be answered 200 over it, unchallenged, with no ESP drop at either end.

`--store redis://…`: ``[pcscf].state_store`` instead (`imsaka.cscf.pcscf_store`): a
pass writing every record, a pass finding none changed (the steady cost of each
`state_interval`: it looks only at what the core and the SA table named, so it should
not grow with the UEs), and a pass after 1 % of the UEs refreshed, timed; then a crash
(stopped without `drain()`: nothing more written) and the start that takes the records
back, and the same refreshes.

Baseline in the same run: `json.dumps` then `json.loads` of the same document, the
floor any file of this content costs; the ratio is (write + take-back) / floor (with
`--store`: the full pass / floor).

    python benchmarks/pcscf_handoff.py [--ues 2000] [--ealg null]
    python benchmarks/pcscf_handoff.py --store redis://127.0.0.1:6379/15 [--ues 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imsaka.cscf import pcscf_state
from imsaka.cscf.pcscf_server import PcscfServer
from imsaka.sip import Request, make_response, parse_message
from imsaka.ue.client import UeClient
from pcscf_rereg import HOST, _Registrar, bench_close, bench_config, bench_ue


class _Registrar2(_Registrar):
    """The stand-in registrar, its SUBSCRIBE 200 with a Contact (a dialog to carry)."""

    def _rx(self, data: bytes, source, transport) -> None:
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == "SUBSCRIBE":
            self.counts["subscribe"] += 1
            assert self.udp is not None
            resp = make_response(
                msg,
                200,
                to_tag="n1",
                headers=[
                    ("Expires", "600000"),
                    ("Contact", f"<sip:scscf1.home1.net:{self.udp.local_address[1]}>"),
                ],
            )
            self.udp.send(resp.to_bytes(), (HOST, msg.top_via.port or 5060))
            return
        super()._rx(data, source, transport)


def _timed(record: dict[str, float], key: str, fn):
    def run(*args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            record[key] = time.perf_counter() - start

    return run


async def _register_all(args: argparse.Namespace, server: PcscfServer, ues: list) -> int:
    """`args.ues` UEs registered; returns how many P-CSCF subscriptions are confirmed."""
    for i in range(args.ues):
        ue = bench_ue(i, server.address, args.ealg, subscribe_reg_event=False)
        await ue.start()
        ues.append(ue)
    for ue in ues:
        res = await ue.register(timeout=10)
        if not res.ok or not res.protected:
            raise RuntimeError(f"pcscf_handoff: registration failed: {res}")
    assert server.core is not None
    for _ in range(200):  # the P-CSCF's reg-event subscriptions, confirmed
        if sum(s.confirmed for s in server.core.subscriptions.values()) == args.ues:
            break
        await asyncio.sleep(0.05)
    return sum(s.confirmed for s in server.core.subscriptions.values())


def _json_floor(server: PcscfServer) -> float:
    """Seconds json.dumps + json.loads of the server's whole document take."""
    loop = asyncio.get_running_loop()
    doc = pcscf_state.dump(
        server.core, server._sets, own=server._own(), now=loop.time(), wall=time.time()
    )
    gc.disable()  # as the P-CSCF reads and writes it (`pcscf_keep._bulk`)
    try:
        start = time.perf_counter()
        json.loads(json.dumps(doc, separators=(",", ":")))
        return time.perf_counter() - start
    finally:
        gc.enable()


async def _refresh_all(server: PcscfServer, ues: list, registrar: _Registrar) -> dict[str, Any]:
    """Every UE refreshes over the set it has: counted."""
    challenged = registrar.counts["challenged"]
    ok = 0
    for ue in ues:
        res = await ue.reregister(timeout=10)
        ok += res.ok and res.protected
    return {
        "refreshed_over_old_sas": ok,
        "challenged_after": registrar.counts["challenged"] - challenged,
        "esp_drops": {
            "pcscf": sum(server.backend.drops.values()),
            "ues": sum(sum(ue.backend.drops.values()) for ue in ues),
        },
        "sa_sets": server.census()["sa_sets"],
    }


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    registrar = _Registrar2()
    raddr = await registrar.start()
    state = work / "pcscf.state"
    cfg, net = bench_config(raddr, state_file=str(state))
    server = PcscfServer(cfg, net)
    await server.start()
    ues: list[UeClient] = []
    spent: dict[str, float] = {}
    try:
        subscribed = await _register_all(args, server, ues)
        floor = _json_floor(server)  # the baseline

        server._hand_off = _timed(spent, "write", server._hand_off)  # type: ignore[method-assign]
        start = time.perf_counter()
        await server.drain()
        await server.stop()
        stop = time.perf_counter() - start
        size = state.stat().st_size
        server = PcscfServer(cfg, net)
        server._take_back = _timed(spent, "take_back", server._take_back)  # type: ignore[method-assign]
        start = time.perf_counter()
        await server.start()
        begin = time.perf_counter() - start
        if server.restored != args.ues or state.exists():
            raise RuntimeError(f"pcscf_handoff: {server.restored} of {args.ues} taken back")
        census = server.census()
        return {
            "mode": "state_file, SIGTERM",
            "ues": args.ues,
            "ealg": args.ealg,
            "subscriptions_carried": census["reg_subscriptions"],
            "subscriptions_confirmed_before": subscribed,
            "file_bytes": size,
            "bytes_per_ue": round(size / args.ues),
            "write_ms": round(spent["write"] * 1e3, 1),
            "take_back_ms": round(spent["take_back"] * 1e3, 1),
            "stop_ms": round(stop * 1e3, 1),
            "start_ms": round(begin * 1e3, 1),
            "us_per_ue_write_and_take_back": round(
                (spent["write"] + spent["take_back"]) / args.ues * 1e6, 1
            ),
            "baseline_json_round_trip_ms": round(floor * 1e3, 1),
            "ratio_to_baseline": round((spent["write"] + spent["take_back"]) / floor, 2),
            **await _refresh_all(server, ues, registrar),
        }
    finally:
        await bench_close(ues, server, registrar)


async def _bench_store(args: argparse.Namespace) -> dict[str, Any]:
    """`--store`: the passes of ``[pcscf].state_store`` timed (one writing every record,
    one finding nothing changed: the steady cost per `state_interval`), then a crash
    (stop without drain) and the start that takes the records back."""
    registrar = _Registrar2()
    raddr = await registrar.start()
    # no pass of its own between the timed ones
    cfg, net = bench_config(raddr, state_store=args.store, state_interval=3600.0)
    server = PcscfServer(cfg, net)
    await server.start()
    key = f"{cfg.name}@{cfg.address}:{cfg.port}"
    ues: list[UeClient] = []
    spent: dict[str, float] = {}
    try:
        await _register_all(args, server, ues)
        floor = _json_floor(server)
        passes = {}
        for name in ("full", "idle"):
            if name == "full":  # every record written, as if each had changed
                server._changed.update(server.core.registrations)
            start = time.perf_counter()
            await server._store_pass()
            passes[name] = time.perf_counter() - start
        cpu = time.process_time()
        for _ in range(5):
            await server._store_pass()
        idle_cpu = (time.process_time() - cpu) / 5
        some = ues[: max(1, args.ues // 100)]
        for ue in some:
            if not (await ue.reregister(timeout=10)).ok:
                raise RuntimeError("pcscf_handoff: a refresh failed")
        cpu = time.process_time()
        await server._store_pass()
        some_cpu = time.process_time() - cpu
        await server.stop()  # as a crash: nothing more written
        server = PcscfServer(cfg, net)
        server._adopt_all = _timed(spent, "adopt", server._adopt_all)  # type: ignore[method-assign]
        start = time.perf_counter()
        await server.start()
        begin = time.perf_counter() - start
        if server.restored != args.ues:
            raise RuntimeError(f"pcscf_handoff: {server.restored} of {args.ues} taken back")
        return {
            "mode": "state_store, crash",
            "ues": args.ues,
            "ealg": args.ealg,
            "full_pass_ms": round(passes["full"] * 1e3, 1),
            "idle_pass_ms": round(passes["idle"] * 1e3, 1),
            "idle_pass_cpu_ms": round(idle_cpu * 1e3, 2),
            "idle_pass_us_per_ue": round(idle_cpu / args.ues * 1e6, 2),
            "refreshed_before_pass": len(some),
            "pass_after_refreshes_cpu_ms": round(some_cpu * 1e3, 2),
            "pass_us_per_refreshed_ue": round(some_cpu / len(some) * 1e6, 1),
            "start_after_crash_ms": round(begin * 1e3, 1),
            "take_back_ms": round(spent["adopt"] * 1e3, 1),
            "baseline_json_round_trip_ms": round(floor * 1e3, 1),
            "full_pass_ratio_to_baseline": round(passes["full"] / floor, 2),
            **await _refresh_all(server, ues, registrar),
        }
    finally:
        await bench_close(ues, server, registrar)
        from imsaka.cscf.pcscf_store import PcscfStateStore

        store = PcscfStateStore(args.store, key)
        await store.clear()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ues", type=int, default=2000, help="registered UEs to hand over")
    ap.add_argument("--ealg", default="null", help="the UEs' encryption offer")
    ap.add_argument("--store", metavar="REDIS_URL", help="[pcscf].state_store and a crash instead")
    args = ap.parse_args(argv)
    import resource

    # each UE holds four descriptors (sockets for its clear port, port-c, port-s, …)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if args.ues * 4 + 200 > limit:
        raise SystemExit(
            f"pcscf_handoff: --ues {args.ues} needs ~{args.ues * 4 + 200} open files; the limit is {limit}"
        )
    if args.store:
        result = asyncio.run(_bench_store(args))
    else:
        with tempfile.TemporaryDirectory(prefix="pcscf_handoff.") as work:
            result = asyncio.run(_bench(args, Path(work)))
    result = {"benchmark": "pcscf_handoff", **result, "python": sys.version.split()[0]}
    print(json.dumps(result))
    bad = (
        result["refreshed_over_old_sas"] != args.ues
        or result["challenged_after"]
        or any(result["esp_drops"].values())
    )
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
