"""Instructions each function executes per full registration and per re-registration
without AKA, in the real chain (issue 7: "re-registrations that skip AKA cost under a
third of a full registration"), counted by valgrind's callgrind.

    python benchmarks/rereg_instructions.py [--ues 60] [--rate 2] [--drain 40]
        [--reregistration-sar both|always|when-needed] [--ue-reg-event] [--keep DIR]

The same four processes as `registration.py` (HSS, S-CSCF, I-CSCF, P-CSCF, each
``imsaka run FUNCTION`` from one generated TOML, on loopback), each run under
``valgrind --tool=callgrind``; imsaka's UE simulator in this process (not counted). A few
UEs register and re-register first (valgrind translates those code paths then); then,
per phase, every function's counters are zeroed (``callgrind_control --zero``), the R
UEs register in full (AKA, SA set) at ``--rate`` per second, ``--drain`` seconds pass
(Timer J is 64·T1 = 32 s, on the 2·T1 grid), and the counters are dumped; then the same
UEs re-register over their SAs (checked: no 401, no new SA set), and the same again.

Why next to the CPU-seconds ratio of `registration.py`: at 100 /s each datagram finds
the process it goes to asleep, and a process woken after others ran on its core finds
its caches cold (the SIP parser alone: ~17 µs warm, ~100 µs after the caches were
flushed, on this kind of machine), so CPU seconds per message there depend on how busy
the machine is, and a re-registration (a third of the messages, so a third of the
activity, at the same rate) pays more per message than a full registration does. The
instruction count is the work itself: the same in a busy or an idle core, on a quiet
or a loaded machine. Kernel work (syscalls, scheduling) is not in it; the wake-ups per
registration, which `registration.py` reports, count that side.

Prints one JSON object on stdout (progress on stderr). Slow: each function runs ~50×
slower under callgrind, so the rate is low and start-up takes a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from registration import (  # noqa: E402
    CORE,
    Core,
    UeSimulator,
    bulk_import,
    log,
    make_subs,
    offered_load,
    warm_up,
)


def callgrind_prefix(workdir: Path) -> list[str]:
    # %p: one output file per process (the function's pid: valgrind runs the guest in
    # the process it was started as); dumps on request add ".N" to it
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={workdir}/callgrind.%p",
        "--dump-instr=no",
    ]


async def _control(pid: int, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control",
        *args,
        str(pid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or b"OK" not in out:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {out.decode()[-300:]}")


def read_dump(workdir: Path, pid: int, label: str) -> int:
    """Instructions (Ir) in the dump of `pid` requested as `label`."""
    for path in sorted(workdir.glob(f"callgrind.{pid}.*")):
        text = path.read_text(errors="replace")
        if f"desc: Trigger: dump {label}\n" not in text:
            continue
        for line in text.splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no callgrind dump {label!r} of pid {pid} in {workdir}")


async def counted(core: Core, label: str, work: Any, drain: float) -> tuple[Any, dict[str, int]]:
    """Run `work` with every function's counters zeroed before and dumped `drain`
    seconds after it; returns its result and the instructions of each function."""
    pids = {f: p.pid for f, p in core.procs.items()}
    await asyncio.gather(*(_control(pid, "--zero") for pid in pids.values()))
    result = await work
    await asyncio.sleep(drain)
    await asyncio.gather(*(_control(pid, f"--dump={label}") for pid in pids.values()))
    return result, {f: read_dump(core.workdir, pid, label) for f, pid in pids.items()}


def phase_summary(outcomes: list[Any], instructions: dict[str, int]) -> dict[str, Any]:
    ok = sum(1 for o in outcomes if o.ok)
    per = {f: round(instructions[f] / (ok or 1)) for f in CORE}
    latencies = sorted(o.latency for o in outcomes)
    return {
        "registrations": len(outcomes),
        "ok": ok,
        "with_aka": sum(1 for o in outcomes if o.aka),
        "max_latency_ms": round(latencies[-1] * 1000) if latencies else None,
        "instructions_per_registration": per,
        "core_instructions_per_registration": sum(per.values()),
    }


async def compare(args: argparse.Namespace, workdir: Path, setting: str) -> dict[str, Any]:
    subs = make_subs(f"cg-{setting}", args.ues + args.warmup, 17)
    db = f"sqlite+aiosqlite:///{workdir / f'{setting}-hss.db'}"
    bulk_import(workdir, db, subs, f"{setting}-subscribers")
    core = Core(
        workdir,
        db,
        name=f"cg-{setting}",
        sec_agree="required",
        vectors=1,
        uvloop=CORE,
        profile=False,
        reregistration_sar=setting,
        prefix=callgrind_prefix(workdir),
        start_timeout=900.0,
    )
    sim = UeSimulator(subs, core.pcscf, ealg="null", reg_event=args.ue_reg_event)
    started = time.monotonic()
    try:
        await core.start()
        log(f"{setting}: four functions up under callgrind in {time.monotonic() - started:.0f} s")
        # valgrind translates each code path the first time it runs: the warm-up UEs
        # take the registration and the re-registration paths once before counting
        warm = list(range(args.warmup))
        await warm_up(core, sim, warm, keep=True)
        await offered_load(warm, args.rate, sim.reregister)
        await asyncio.sleep(args.drain)
        indices = list(range(args.warmup, len(subs)))
        full = offered_load(indices, args.rate, lambda i, t: sim.register(i, t, keep=True))
        (outcomes, _, _), instr = await counted(core, "full", full, args.drain)
        full_s = phase_summary(outcomes, instr)
        log(f"{setting}: full registration {full_s['core_instructions_per_registration']:,}")
        kept = [i for i in indices if i in sim.kept]
        rere = offered_load(kept, args.rate, sim.reregister)
        (outcomes, _, _), instr = await counted(core, "rereg", rere, args.drain)
        rere_s = phase_summary(outcomes, instr)
        log(f"{setting}: re-registration {rere_s['core_instructions_per_registration']:,}")
    finally:
        await sim.close_kept()
        core.stop()
    full_i = full_s["core_instructions_per_registration"]
    rere_i = rere_s["core_instructions_per_registration"]
    return {
        "reregistration_sar": setting,
        "ues": args.ues,
        "rate_per_s": args.rate,
        "counters_dumped_after_last_answer_s": args.drain,
        "full": full_s,
        "reregister_without_aka": rere_s,
        "instruction_ratio": round(rere_i / full_i, 3) if full_i else None,
        "per_function_ratio": {
            f: round(rere_s["instructions_per_registration"][f] / v, 3)
            for f, v in full_s["instructions_per_registration"].items()
            if v
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ues", type=int, default=60, help="UEs per phase (counted)")
    p.add_argument("--rate", type=float, default=2.0, help="registrations offered per second")
    p.add_argument("--drain", type=float, default=40.0, help="seconds before each dump")
    p.add_argument("--warmup", type=int, default=3, help="UEs that warm the paths (not counted)")
    p.add_argument(
        "--reregistration-sar",
        choices=("both", "always", "when-needed"),
        default="both",
        help="[scscf].reregistration_sar of the core(s) compared",
    )
    p.add_argument(
        "--ue-reg-event",
        action="store_true",
        help="UEs also SUBSCRIBE to their reg event (counted in the full registration)",
    )
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the callgrind files")
    a = p.parse_args(argv)
    if a.ues < 1 or a.rate <= 0 or a.drain < 0 or a.warmup < 1:
        p.error("--ues, --warmup and --rate must be positive, --drain not negative")
    return a


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"rereg_instructions.py: {tool} not found (apt-get install valgrind)")
    settings = (
        ("always", "when-needed")
        if args.reregistration_sar == "both"
        else (args.reregistration_sar,)
    )
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="imsaka-cg-")
        workdir = Path(tmp.name)
    try:
        results = [await compare(args, workdir, s) for s in settings]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "benchmark": "rereg_instructions",
        "ue_reg_event": args.ue_reg_event,
        "python": sys.version.split()[0],
        "comparisons": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
