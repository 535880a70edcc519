"""The AKA benchmarks run and print one JSON object (short run; numbers not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "keys"),
    [
        ("aka_vectors.py", {"ours_vectors_per_s", "baseline_aes_5_blocks_per_s", "ratio"}),
        ("aka_digest.py", {"ours_verifications_per_s", "baseline_raw_md5x3_per_s", "ratio"}),
    ],
)
def test_benchmark_prints_json(script, keys):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--seconds", "0.05", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert keys <= result.keys()
    assert result["ratio"] > 0
