"""benchmarks/scscf_msgs.py: the in-process S-CSCF it measures really registers every UE
(401, then 200 with P-Associated-URI, the P-CSCF's SUBSCRIBE answered 200 with an active
NOTIFY) and re-registers it (200); the run raises otherwise. A short run, numbers not
asserted beyond being there."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "scscf_msgs.py"


def _bench():
    spec = importlib.util.spec_from_file_location("scscf_msgs_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_scscf_benchmark_prints_json_for_registrations_that_reached_200(capsys):
    bench = _bench()
    assert bench.main(["--n", "4", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["registrations"] == 4
    assert result["cpu_us_per_registration"] > 0
    assert result["cpu_us_per_reregistration"] > 0
    # 5 in and 5 out per registration (REGISTER, REGISTER, SUBSCRIBE, 200 to the NOTIFY;
    # 401, 200, 200, NOTIFY), 1 and 1 per re-registration
    assert result["messages_received"] == 4 * 4 + 4
    assert result["messages_sent"] == 4 * 4 + 4


def test_each_registration_reaches_200_and_the_reg_event_notify():
    import asyncio

    bench = _bench()
    w = bench.Workload(3)
    h = asyncio.run(bench._run(w, 3, True, True))
    counters = h.scscf.core.counters
    assert counters["registered"] == 3
    assert counters["reregistered"] == 3
    assert counters["subscribed"] == 3
    assert counters["notify_sent"] == 3
    assert counters["challenge"] == 3
    assert counters["auth_ok"] == 3
