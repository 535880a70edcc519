"""`benchmarks/sip_parse.py --build` runs the P-CSCF's real REGISTER rewrite (packet 1 →
packet 2) and prints its JSON; it had broken silently when that method's signature grew."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sip_parse.py"


def test_build_benchmark_runs_the_pcscf_rewrite():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--build", "--seconds", "0.05", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("register_build_serialize_us", "pcscf_parse_forward_serialize_us"):
        assert result[key] > 0


def test_icscf_benchmark_with_diameter_goes_through_the_node():
    # the run raises when a REGISTER is not forwarded or an answer not relayed, and
    # asserts the node dropped or refused nothing
    done = subprocess.run(
        [sys.executable, str(BENCH), "--icscf", "5", "--rounds", "1", "--diameter"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["benchmark"] == "sip_icscf_diameter" and result["cpu_us_per_message_best"] > 0
