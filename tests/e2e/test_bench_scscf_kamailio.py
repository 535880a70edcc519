"""benchmarks/scscf_kamailio.py runs end to end and prints its JSON (one short step a
side; the numbers are not asserted here, only that both S-CSCFs registered UEs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_scscf_kamailio_benchmark_prints_json():
    done = subprocess.run(
        [sys.executable, str(BENCH / "scscf_kamailio.py"), "--rates", "20", "--step-seconds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for side in ("ours", "kamailio"):
        (step,) = result[side]["steps"]
        assert step["ok"] > 0 and step["cscf_cpu_ms_per_registration"] > 0, (side, step)
    assert result["comparison"]["at_rate"] == 20.0
