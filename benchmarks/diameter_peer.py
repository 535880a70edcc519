"""Benchmark: MAR→MAA round trips over real TCP on loopback (TS 29.229 §6.1.7-8).

Two servers answer every MAR with the same fixed MAA (no crypto, no database):
- ours: `imsaka.diameter.loadgen.start_fixed_maa_server` (DiameterNode, sans-I/O peer);
- baseline: a `python-diameter` Node + SimpleThreadingApplication doing the same (its Cx
  classes corrected by imsaka.diameter.codec so it reads TS 29.229 MARs; an explicit
  `tcp_port`, since without one it listens on nothing).

Each server runs in its own child process (so it does not share a GIL with the load);
the load is the same closed-loop `DiameterNode` client in this process for both
(`loadgen.mar_load`, `--concurrency` MARs in flight). One JSON object is printed with
both rates and ours / baseline.

    python benchmarks/diameter_peer.py [--seconds 3] [--rounds 2] [--concurrency 32]

For an HSS benchmark: `python benchmarks/diameter_peer.py --serve ours --port P` starts
just the fixed-MAA server (prints READY), or call `serve_in_subprocess("ours")` /
`imsaka.diameter.loadgen.start_fixed_maa_server()` and `mar_load()` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from imsaka import ports
from imsaka.diameter import loadgen


def free_port() -> int:
    return ports.free_port("127.0.0.1", udp=False, tcp=True)


# --- servers (run in the child) ------------------------------------------------------------


def serve_ours(port: int) -> None:
    async def main() -> None:
        try:
            import uvloop  # the node works on either loop; uvloop is the deployed one

            uvloop.install()
        except ImportError:
            pass
        node = await loadgen.start_fixed_maa_server(listen_port=port)
        print("READY", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def serve_python_diameter(port: int) -> None:
    import logging

    from diameter.message.avp.grouped import SipAuthDataItem3gpp, VendorSpecificApplicationId
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication

    import imsaka.diameter.codec  # noqa: F401  (registers the corrected Cx commands)

    logging.getLogger("diameter").setLevel(logging.ERROR)
    item = loadgen.FIXED_ITEM

    def handle(app, message):
        answer = app.generate_answer(message)
        answer.vendor_specific_application_id = VendorSpecificApplicationId(
            vendor_id=10415, auth_application_id=16777216
        )
        answer.auth_session_state = 1
        answer.result_code = 2001
        answer.user_name = message.user_name
        answer.public_identity = (message.public_identity or [None])[0]
        answer.sip_number_auth_items = 1
        answer.sip_auth_data_item = [
            SipAuthDataItem3gpp(
                sip_item_number=item.sip_item_number,
                sip_authentication_scheme=item.sip_authentication_scheme,
                sip_authenticate=item.sip_authenticate,
                sip_authorization=item.sip_authorization,
                confidentiality_key=item.confidentiality_key,
                integrity_key=item.integrity_key,
            )
        ]
        return answer

    node = Node(
        loadgen.SERVER_HOST,
        loadgen.REALM,
        ip_addresses=["127.0.0.1"],
        tcp_port=port,
        vendor_ids=[10415],
    )
    peer = node.add_peer(f"aaa://{loadgen.CLIENT_HOST}", loadgen.REALM)
    app = SimpleThreadingApplication(16777216, is_auth_application=True, request_handler=handle)
    node.add_application(app, [peer])
    node.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop(wait_timeout=1, force=True)


# --- orchestration ---------------------------------------------------------------------------


def serve_in_subprocess(kind: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start a fixed-MAA server ("ours" or "python-diameter") in a child; wait for READY."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    return proc, port


def stop_subprocess(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def measure(kind: str, seconds: float, concurrency: int) -> loadgen.LoadResult:
    """Rate of one server kind, loaded by the same client (uvloop when installed)."""
    proc, port = serve_in_subprocess(kind)
    loop = _new_loop()
    try:
        return loop.run_until_complete(
            loadgen.mar_load(
                address="127.0.0.1",
                port=port,
                duration=seconds,
                concurrency=concurrency,
                check=lambda a: a.is_success and len(a.sip_auth_data_items) == 1,
            )
        )
    finally:
        loop.close()
        stop_subprocess(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--concurrency", type=int, default=32, help="MARs in flight")
    parser.add_argument("--serve", choices=["ours", "python-diameter"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "ours":
        serve_ours(args.port or 3868)
        return 0
    if args.serve == "python-diameter":
        serve_python_diameter(args.port or 3868)
        return 0
    # Alternate the two servers so load from elsewhere on the machine hits both alike;
    # report each one's best round (its capacity) and every sample.
    samples: dict[str, list[loadgen.LoadResult]] = {"ours": [], "python-diameter": []}
    for _ in range(args.rounds):
        for kind in samples:
            samples[kind].append(measure(kind, args.seconds, args.concurrency))
    ours = max(samples["ours"], key=lambda r: r.rate)
    base = max(samples["python-diameter"], key=lambda r: r.rate)
    result = {
        "benchmark": "diameter_peer",
        "what": "MAR->MAA round trips/s over TCP loopback, fixed MAA, server in its own process",
        "ours_answers_per_s": round(ours.rate, 1),
        "baseline_python_diameter_answers_per_s": round(base.rate, 1),
        "ratio": round(ours.rate / base.rate, 2) if base.rate else None,
        "ours_samples": [round(r.rate, 1) for r in samples["ours"]],
        "baseline_samples": [round(r.rate, 1) for r in samples["python-diameter"]],
        "ours_errors": dict(sum((r.errors for r in samples["ours"]), Counter())),
        "baseline_errors": dict(sum((r.errors for r in samples["python-diameter"]), Counter())),
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
