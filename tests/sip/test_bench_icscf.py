"""benchmarks/sip_parse.py --icscf: the in-process I-CSCF it measures really forwards
every REGISTER and relays every answer (the run raises otherwise)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sip_parse.py"


def test_icscf_benchmark_runs_registrations_through():
    spec = importlib.util.spec_from_file_location("sip_parse_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.icscf_bench(3, 1)
    assert result["registrations"] == 3
    assert result["cpu_us_per_message_best"] > 0
