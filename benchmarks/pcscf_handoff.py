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

Baseline in the same run: `json.dumps` then `json.loads` of the same document, the
floor any file of this content costs; the ratio is (write + take-back) / floor.

    python benchmarks/pcscf_handoff.py [--ues 2000] [--ealg null]
"""

from __future__ import annotations

import argparse
import asyncio
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
        subscribed = sum(s.confirmed for s in server.core.subscriptions.values())
        # the baseline: the same document through the json module alone
        loop = asyncio.get_running_loop()
        doc = pcscf_state.dump(
            server.core, server._sets, own=server._own(), now=loop.time(), wall=time.time()
        )
        start = time.perf_counter()
        text = json.dumps(doc, separators=(",", ":"))
        json.loads(text)
        floor = time.perf_counter() - start

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

        challenged = registrar.counts["challenged"]
        ok = 0
        for ue in ues:
            res = await ue.reregister(timeout=10)
            ok += res.ok and res.protected
        ue_drops = sum(sum(ue.backend.drops.values()) for ue in ues)
        return {
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
            "refreshed_over_old_sas": ok,
            "challenged_after": registrar.counts["challenged"] - challenged,
            "esp_drops": {"pcscf": sum(server.backend.drops.values()), "ues": ue_drops},
            "sa_sets": census["sa_sets"],
        }
    finally:
        await bench_close(ues, server, registrar)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ues", type=int, default=2000, help="registered UEs to hand over")
    ap.add_argument("--ealg", default="null", help="the UEs' encryption offer")
    args = ap.parse_args(argv)
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
