"""`benchmarks/rereg_instructions.py` reads each function's instructions off callgrind
while it runs: counters zeroed, the work done, a dump requested under a label and read
back. Checked against a real process under valgrind: a stretch with work counts far
more than one of the same length spent asleep (what the benchmark's drain is)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import rereg_instructions as ri  # noqa: E402

WORKER = """
import sys
for line in sys.stdin:
    if line.strip() == "work":
        sum(i * i for i in range(100_000))
    print("done", flush=True)
"""


def test_counters_zeroed_dumped_and_read_back(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [*ri.callgrind_prefix(tmp_path), sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(word: str) -> None:
        proc.stdin.write(word + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"

    async def step(word: str) -> None:
        await asyncio.to_thread(ask, word)

    async def run() -> tuple[dict[str, int], dict[str, int]]:
        core = SimpleNamespace(procs={"worker": proc}, workdir=tmp_path)
        await step("noop")  # up: the interpreter has started under valgrind
        _, busy = await ri.counted(core, "busy", step("work"), 0.5)
        _, idle = await ri.counted(core, "idle", asyncio.sleep(0), 0.5)
        return busy, idle

    try:
        busy, idle = asyncio.run(run())
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # 100,000 generator steps with a multiply and an add: millions of instructions
    assert busy["worker"] > 5_000_000
    assert idle["worker"] < busy["worker"] / 20
    assert ri.read_dump(tmp_path, proc.pid, "busy") == busy["worker"]
