"""Benchmark: HSS MAR→MAA over real TCP on loopback, every SQN durably committed.

The imsaka HSS (`imsaka.hss.server.HssServer`: DiameterNode + Cx service + store) runs
in its own process and answers MARs for a population of subscribers with fresh
Milenage vectors (TS 33.102 §6.3.2); every vector's SQN comes from the group-committed
``UPDATE … RETURNING`` of `imsaka.hss.store` (SQLite: WAL with synchronous=FULL, an
fsync per commit; PostgreSQL: default synchronous_commit=on) before its MAA is sent.

Baselines measured in the same run, with the same client (`imsaka.diameter.loadgen`):
- our own DiameterNode answering the same MAR with a fixed MAA (no crypto, no DB);
- a python-diameter node doing the same (both from benchmarks/diameter_peer.py).

After each HSS run the store is checked: the SQN steps committed per subscriber must
add up to exactly the number of vectors answered (nothing answered that was not
committed, nothing handed out twice).

``--registrations N`` also offers N registrations' Cx traffic (UAR, MAR, UAR, SAR per
fresh subscriber, as the I-CSCF and S-CSCF send it) at ``--reg-rate`` per second to the
same HSS process on each backend, and reports the HSS's CPU ms per registration
(utime+stime from /proc/PID/stat over the run), the figure the registration benchmark
reports as ``cpu_ms_per_registration.hss``; then the same subscribers re-register
without AKA (UAR, SAR RE_REGISTRATION with the profile already at the S-CSCF) at the
same rate, reported as ``hss_cpu_ms_per_reregistration`` and its ratio. With
``--reregistration uar-only`` a re-registration is the I-CSCF's UAR alone: the S-CSCF's
``[scscf].reregistration_sar = "when-needed"`` case, where the S-CSCF answers a refresh
from the profile it holds (TS 23.228 §5.2.2.4). ``--rereg-rounds K`` re-registers every
subscriber K times.

Instructions of the HSS alone (callgrind, start-up cancelled by two run lengths): run
with ``--hss-callgrind OUT`` (the HSS process under valgrind, SQLite only) for
``--rereg-rounds 1`` and ``3``; the difference of the two totals over 2 x N is one
re-registration (``callgrind_annotate OUT`` for the top costs).

    python benchmarks/hss_mar.py [--seconds 2] [--rounds 2] [--concurrency 32] [--users 1000]
                                 [--no-postgres] [--import-rows 100000]
                                 [--registrations 1000] [--reg-rate 150]
                                 [--only-registrations] [--profile-hss FILE]
                                 [--reregistration sar|uar-only] [--rereg-rounds K]
                                 [--hss-callgrind OUT]

``--only-registrations`` skips the MAR rounds and baselines; ``--profile-hss FILE``
writes a cProfile (process time) of the HSS over the SQLite registrations run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import diameter_peer  # noqa: E402  (benchmarks/diameter_peer.py: fixed-MAA baselines)
from imsaka.diameter import cx, loadgen  # noqa: E402

PG_URL = os.environ.get("IMSAKA_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
OPC = "cd63cb71954a9f4e48a5994e37a02baf"
IND_BITS = 5


def impi(i: int) -> str:
    return f"bench{i:06d}@{loadgen.REALM}"


# --- the HSS in a child process --------------------------------------------------------------


def serve_hss(db: str, port: int, profile: str | None = None) -> None:
    from imsaka.hss.config import HssConfig, PeerEntry
    from imsaka.hss.server import HssServer

    async def main() -> None:
        config = HssConfig(
            database=db,
            diameter_host=loadgen.SERVER_HOST,
            diameter_realm=loadgen.REALM,
            diameter_port=port,
            peers=(PeerEntry(loadgen.CLIENT_HOST),),
            home_networks=(loadgen.REALM,),
            api_port=0,
        )
        server = HssServer(config)
        await server.start()
        # As `imsaka run hss` (imsaka.hss.server.serve) does once started: what start-up
        # built stays out of the cyclic collector's older-generation passes.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        profiler = None
        if profile:
            # The HSS's own CPU, by function (process time: load-independent).
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        print("READY", flush=True)
        try:
            await stop.wait()
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            store = server.store
            # How the writes went (for the parent's report): group commits, those run
            # on the loop itself, reads sent to a thread.
            stats = {
                "group_commits": store.batches,
                "commits_on_loop": store.commits_inline,
                "reads_deferred": store.reads_deferred,
            }
            await server.stop()
            print("STATS " + json.dumps(stats), flush=True)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def start_hss(
    db: str, profile: str | None = None, callgrind: str | None = None
) -> tuple[subprocess.Popen, int]:
    port = diameter_peer.free_port()
    extra = ["--profile-hss", profile] if profile else []
    # valgrind cannot follow pyenv's shell shim: sys.executable is the interpreter itself.
    prefix = (
        ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={callgrind}"]
        if callgrind
        else []
    )
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-hss",
            db,
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        proc.kill()
        raise RuntimeError("HSS did not start")
    return proc, port


# --- population and checks -------------------------------------------------------------------


async def provision(db: str, users: int) -> dict[str, int]:
    from imsaka.hss.store import HssStore
    from imsaka.hss.subscriber import validate_subscriber

    store = await HssStore.open(db)
    try:
        async with store.engine.begin() as conn:
            import sqlalchemy as sa

            for t in (
                "visited_network",
                "impu",
                "impi",
                "implicit_set",
                "service_profile",
                "scscf",
                "subscription",
            ):
                await conn.execute(sa.text(f"DELETE FROM {t}"))
        specs = [
            validate_subscriber(impi=impi(i), impus=[f"sip:{impi(i)}"], k=f"{i + 1:032x}", opc=OPC)
            for i in range(users)
        ]
        await store.import_subscribers(specs)
        return {s.impi: 0 for s in specs}
    finally:
        await store.close()


async def committed_steps(db: str, before: dict[str, int]) -> int:
    from imsaka.hss.store import HssStore

    store = await HssStore.open(db, run_migrations=False)
    try:
        total = 0
        for name, start in before.items():
            sqn = await store.sqn_of(name)
            total += (sqn >> IND_BITS) - (start >> IND_BITS)
        return total
    finally:
        await store.close()


def _cpu_seconds(pid: int) -> float:
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of process ``pid`` in seconds, all its threads."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure_hss(db: str, seconds: float, concurrency: int, users: int) -> dict:
    loop = diameter_peer._new_loop()
    try:
        before = loop.run_until_complete(provision(db, users))
    finally:
        loop.close()
    proc, port = start_hss(db)
    answered = Counter()

    def make_request(i: int) -> cx.MultimediaAuthRequest:
        name = impi(i % users)
        return cx.MultimediaAuthRequest(
            session_id=f"{loadgen.CLIENT_HOST};hss-bench;{i}",
            origin_host=loadgen.CLIENT_HOST,
            origin_realm=loadgen.REALM,
            destination_realm=loadgen.REALM,
            destination_host=loadgen.SERVER_HOST,
            user_name=name,
            public_identity=f"sip:{name}",
            server_name=f"sip:{loadgen.CLIENT_HOST}:6060",
            sip_number_auth_items=1,
            sip_auth_data_item=cx.SipAuthDataItem(sip_authentication_scheme=cx.SCHEME_AKAV1_MD5),
        )

    def check(answer: cx.MultimediaAuthAnswer) -> bool:
        ok = answer.result_code == cx.DIAMETER_SUCCESS and len(answer.sip_auth_data_items) == 1
        answered["vectors" if ok else "bad"] += len(answer.sip_auth_data_items) if ok else 1
        return ok

    cpu0 = _cpu_seconds(proc.pid)
    loop = diameter_peer._new_loop()
    try:
        result = loop.run_until_complete(
            loadgen.mar_load(
                address="127.0.0.1",
                port=port,
                duration=seconds,
                concurrency=concurrency,
                make_request=make_request,
                check=check,
            )
        )
        cpu = _cpu_seconds(proc.pid) - cpu0
    finally:
        loop.close()
        diameter_peer.stop_subprocess(proc)
    loop = diameter_peer._new_loop()
    try:
        steps = loop.run_until_complete(committed_steps(db, before))
    finally:
        loop.close()
    return {
        "answers_per_s": round(result.rate, 1),
        # HSS process CPU (utime+stime) over the whole load, warm-up included
        "hss_cpu_ms_per_answer": round(cpu * 1000 / max(1, answered["vectors"]), 3),
        "errors": dict(result.errors),
        "vectors_answered_total": answered["vectors"],
        "sqn_steps_committed": steps,
        "every_sqn_committed_once": steps == answered["vectors"],
    }


async def _registrations(
    port: int, pid: int, count: int, rate: float, rereg: str = "sar", rounds: int = 1
) -> dict:
    from imsaka.diameter.node import DiameterNode, PeerSpec

    client = DiameterNode(
        origin_host=loadgen.CLIENT_HOST,
        origin_realm=loadgen.REALM,
        peers=[PeerSpec(loadgen.SERVER_HOST, "127.0.0.1", port)],
        tc=0.5,
        owner="scscf",
    )
    await client.start()
    sessions = 0
    bad: Counter[str] = Counter()

    def head() -> dict:
        nonlocal sessions
        sessions += 1
        return {
            "session_id": f"{loadgen.CLIENT_HOST};hss-reg;{sessions}",
            "origin_host": loadgen.CLIENT_HOST,
            "origin_realm": loadgen.REALM,
            "destination_realm": loadgen.REALM,
            "destination_host": loadgen.SERVER_HOST,
        }

    def steps_of(i: int, again: bool) -> tuple:
        name, scscf = impi(i), f"sip:{loadgen.CLIENT_HOST}:6060"
        uar = {"user_name": name, "public_identity": f"sip:{name}"}
        uar |= {"visited_network_identifier": loadgen.REALM, "user_authorization_type": 0}

        def sar(kind: cx.ServerAssignmentType, data_available: int) -> cx.ServerAssignmentRequest:
            return cx.ServerAssignmentRequest(
                **head(),
                user_name=name,
                public_identities=(f"sip:{name}",),
                server_name=scscf,
                server_assignment_type=kind,
                user_data_already_available=data_available,
            )

        SAT = cx.ServerAssignmentType
        if again:
            # A re-registration without AKA: the I-CSCF's UAR, then the S-CSCF's SAR
            # RE_REGISTRATION with the profile it already holds (TS 29.228 §6.1.2);
            # under reregistration_sar = "when-needed" the UAR alone.
            uar_step = (cx.UserAuthorizationRequest(**head(), **uar), "uar-rereg", 2002)
            if rereg == "uar-only":
                return (uar_step,)
            return (uar_step, (sar(SAT.RE_REGISTRATION, 1), "sar-rereg", cx.DIAMETER_SUCCESS))
        return (
            (cx.UserAuthorizationRequest(**head(), **uar), "uar-first", 2001),
            (
                cx.MultimediaAuthRequest(
                    **head(),
                    user_name=name,
                    public_identity=f"sip:{name}",
                    server_name=scscf,
                    sip_number_auth_items=1,
                    sip_auth_data_item=cx.SipAuthDataItem(
                        sip_authentication_scheme=cx.SCHEME_UNKNOWN
                    ),
                ),
                "mar",
                cx.DIAMETER_SUCCESS,
            ),
            (cx.UserAuthorizationRequest(**head(), **uar), "uar-subsequent", 2002),
            (sar(SAT.REGISTRATION, 0), "sar", cx.DIAMETER_SUCCESS),
        )

    async def register(i: int, again: bool = False) -> None:
        for request, what, expected in steps_of(i, again):
            answer = await client.request(request, timeout=30.0)
            if (answer.result_code or answer.experimental_result_code) != expected:
                bad[what] += 1
                return

    async def offer(again: bool) -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        cpu0, start = _cpu_split(pid), loop.time()
        tasks = []
        for j in range(count):
            delay = start + j / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(register(j, again)))
        await asyncio.gather(*tasks)
        cpu1 = _cpu_split(pid)
        return loop.time() - start, cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]

    try:
        await client.wait_open(loadgen.SERVER_HOST, 10.0)
        await asyncio.gather(*(register(count + j) for j in range(50)))  # warm-up
        seconds, user, system = await offer(False)
        user_again = system_again = 0.0
        for _ in range(rounds):
            _, u, s = await offer(True)
            user_again, system_again = user_again + u, system_again + s
        user_again, system_again = user_again / rounds, system_again / rounds
        cpu, cpu_again = user + system, user_again + system_again
    finally:
        await client.stop()
    return {
        "registrations": count,
        "reregistration": rereg,
        "rereg_rounds": rounds,
        "offered_per_s": rate,
        "completed_per_s": round(count / seconds, 1),
        "hss_cpu_ms_per_registration": round(cpu * 1000 / count, 3),
        "hss_cpu_ms_per_reregistration": round(cpu_again * 1000 / count, 3),
        # the kernel's share (fsync, socket calls) of each, in ms per registration
        "hss_sys_ms_per_registration": round(system * 1000 / count, 3),
        "hss_sys_ms_per_reregistration": round(system_again * 1000 / count, 3),
        "reregistration_ratio": round(cpu_again / cpu, 3) if cpu else None,
        "failed": dict(bad),
    }


def measure_registrations(
    db: str,
    count: int,
    rate: float,
    profile: str | None = None,
    rereg: str = "sar",
    rounds: int = 1,
    callgrind: str | None = None,
) -> dict:
    loop = diameter_peer._new_loop()
    try:
        loop.run_until_complete(provision(db, count + 50))
    finally:
        loop.close()
    proc, port = start_hss(db, profile, callgrind)
    loop = diameter_peer._new_loop()
    try:
        result = loop.run_until_complete(_registrations(port, proc.pid, count, rate, rereg, rounds))
    finally:
        loop.close()
        if callgrind:
            # SIGKILL would lose the profile: valgrind writes it at the exit.
            proc.terminate()
            proc.wait(300)
        else:
            diameter_peer.stop_subprocess(proc)
    assert proc.stdout is not None
    for line in proc.stdout.read().splitlines():
        if line.startswith("STATS "):
            result["hss_store"] = json.loads(line[6:])
    return result


def measure_import(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subs.csv"
        with path.open("w") as fh:
            fh.write("impi,impu,k,op,opc,amf,sqn\n")
            for i in range(rows):
                fh.write(
                    f"imp{i}@x.test,sip:imp{i}@x.test|tel:+1{i:010d},{i + 1:032x},,{OPC},8000,{i:x}\n"
                )
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "imsaka",
                "hss",
                "import",
                str(path),
                "--db",
                f"sqlite:///{tmp}/imp.db",
            ],
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
    return {"rows": rows, "seconds": round(elapsed, 2), "ok": proc.returncode == 0}


def mar_rounds(args: argparse.Namespace) -> dict:
    # Alternate the four servers round by round so load from elsewhere on the
    # machine hits them alike; report each one's best round and every sample.
    runs: dict[str, list] = {"sqlite": [], "postgres": [], "fixed": [], "python-diameter": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            runs["sqlite"].append(
                measure_hss(
                    f"sqlite+aiosqlite:///{tmp}/bench.db",
                    args.seconds,
                    args.concurrency,
                    args.users,
                )
            )
        if not args.no_postgres:
            try:
                runs["postgres"].append(
                    measure_hss(PG_URL, args.seconds, args.concurrency, args.users)
                )
            except Exception as exc:  # report, do not hide, a missing server
                runs["postgres"].append(
                    {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "answers_per_s": 0.0}
                )
        runs["fixed"].append(diameter_peer.measure("ours", args.seconds, args.concurrency))
        runs["python-diameter"].append(
            diameter_peer.measure("python-diameter", args.seconds, args.concurrency)
        )

    def best_hss(samples: list[dict]) -> dict | None:
        if not samples:
            return None
        best = dict(max(samples, key=lambda r: r["answers_per_s"]))
        best["samples"] = [r["answers_per_s"] for r in samples]
        best["every_sqn_committed_once"] = all(r.get("every_sqn_committed_once") for r in samples)
        best["hss_cpu_ms_per_answer_samples"] = [r.get("hss_cpu_ms_per_answer") for r in samples]
        return best

    sqlite = best_hss(runs["sqlite"])
    postgres = best_hss(runs["postgres"])
    assert sqlite is not None
    fixed = max(runs["fixed"], key=lambda r: r.rate)
    pydia = max(runs["python-diameter"], key=lambda r: r.rate)
    rate = sqlite["answers_per_s"]
    return {
        "benchmark": "hss_mar",
        "what": "HSS MAR->MAA/s over TCP loopback, fresh Milenage vector, SQN committed before the MAA",
        "ours_answers_per_s": rate,
        "sqlite": sqlite,
        "postgres": postgres,
        "baseline_fixed_maa_our_node_per_s": round(fixed.rate, 1),
        "baseline_fixed_maa_python_diameter_per_s": round(pydia.rate, 1),
        "ratio_vs_our_fixed_maa_node": round(rate / fixed.rate, 2) if fixed.rate else None,
        "ratio_vs_python_diameter": round(rate / pydia.rate, 2) if pydia.rate else None,
        "postgres_ratio_vs_python_diameter": (
            round(postgres["answers_per_s"] / pydia.rate, 2)
            if postgres and "answers_per_s" in postgres and pydia.rate
            else None
        ),
        "baseline_fixed_maa_samples": [round(r.rate, 1) for r in runs["fixed"]],
        "baseline_python_diameter_samples": [round(r.rate, 1) for r in runs["python-diameter"]],
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "users": args.users,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="measured seconds per server and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds (best one reported)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="MARs in flight")
    parser.add_argument("--users", type=int, default=1000, help="subscribers the MARs cycle over")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument(
        "--import-rows", type=int, default=0, help="also time `imsaka hss import` of N CSV rows"
    )
    parser.add_argument(
        "--registrations", type=int, default=0, help="also N registrations' Cx (HSS CPU/reg)"
    )
    parser.add_argument("--reg-rate", type=float, default=150.0, help="registrations offered/s")
    parser.add_argument(
        "--only-registrations",
        action="store_true",
        help="skip the MAR load rounds and baselines (with --registrations)",
    )
    parser.add_argument(
        "--profile-hss",
        metavar="FILE",
        help="cProfile (process time) of the HSS over the SQLite registrations run",
    )
    parser.add_argument(
        "--reregistration",
        choices=("sar", "uar-only"),
        default="sar",
        help='a re-registration: UAR + SAR RE_REGISTRATION, or the UAR alone ("when-needed")',
    )
    parser.add_argument(
        "--rereg-rounds", type=int, default=1, help="re-registrations of each subscriber"
    )
    parser.add_argument(
        "--hss-callgrind",
        metavar="OUT",
        help="run the HSS under valgrind --tool=callgrind writing OUT (SQLite run only)",
    )
    parser.add_argument("--serve-hss", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hss:
        serve_hss(args.serve_hss, args.port, args.profile_hss)
        return 0

    if args.only_registrations and args.registrations:
        result: dict = {"benchmark": "hss_mar", "registrations_only": True}
    else:
        result = mar_rounds(args)
    if args.import_rows:
        result["csv_import"] = measure_import(args.import_rows)
    if args.registrations:
        with tempfile.TemporaryDirectory() as tmp:
            result["registrations_sqlite"] = measure_registrations(
                f"sqlite+aiosqlite:///{tmp}/reg.db",
                args.registrations,
                args.reg_rate,
                args.profile_hss,
                args.reregistration,
                args.rereg_rounds,
                args.hss_callgrind,
            )
        if not args.no_postgres:
            result["registrations_postgres"] = measure_registrations(
                PG_URL,
                args.registrations,
                args.reg_rate,
                rereg=args.reregistration,
                rounds=args.rereg_rounds,
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
