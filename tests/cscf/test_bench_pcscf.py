"""benchmarks/pcscf_msgs.py: the in-process P-CSCF it measures really takes every SIPp UE
through its registration (REGISTER forwarded with Path, 401 to the UE without ck/ik, the
second REGISTER forwarded with integrity-protected="no", 200 to the UE, its own reg-event
SUBSCRIBE accepted and the NOTIFY answered 200) and every context ends at Timer F; the
run raises otherwise. A short run, numbers not asserted beyond being there."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "pcscf_msgs.py"


def _bench():
    spec = importlib.util.spec_from_file_location("pcscf_msgs_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    return bench


def test_pcscf_benchmark_prints_json_per_registration_and_message(capsys):
    bench = _bench()
    assert bench.main(["--n", "5", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["registrations"] == 5
    assert result["cpu_us_per_registration"] > 0
    per = result["cpu_us_per_message"]
    assert set(per) == {
        "register_1",
        "401",
        "register_2",
        "200",
        "subscribe_200",
        "notify",
        "timer",
    }
    assert all(per[k] > 0 for k in per if k != "timer")
    # 6 in and 6 out per registration (REGISTER, 401, REGISTER, 200, the SUBSCRIBE's 200,
    # NOTIFY; REGISTER, 401, REGISTER, 200 + SUBSCRIBE, 200 to the NOTIFY)
    assert result["messages_received"] == 5 * 6
    assert result["messages_sent"] == 5 * 6
    assert result["baseline_parse_us_per_registration"] > 0


def test_each_registration_completes_with_its_reg_event_subscription():
    bench = _bench()
    h = bench._run(4, 600.0)
    core = h.core
    assert core.counters["registered"] == 4
    assert core.counters["reg-subscribed"] == 4
    assert len(core.registrations) == 4
    assert len(core.subscriptions) == 4
    assert all(r.service_route and r.associated_uris for r in core.registrations.values())
    # every forwarded request's context went at Timer F (the timer ran)
    assert core.pending == {} and core.open_transactions() == 0


def test_a_p_cscf_that_does_not_subscribe_fails_the_run(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench.PcscfCore, "_subscribe_reg", lambda self, reg, now: [])
    with pytest.raises(RuntimeError, match=r"200: 1 messages out, 2 expected"):
        bench._run(2, 600.0)


def test_steady_state_run_expires_contexts_while_timing():
    """--steady: the untimed backlog's contexts expire during the timed registrations
    (the timer ran on them), and only the timed ones are counted."""
    bench = _bench()
    h = bench._run(5, 2.0, 40.0)  # 80 UEs at 2/s untimed, past Timer F, then 5 timed
    assert h.received == 5 * 6 and h.sent == 5 * 6
    assert h.core.counters["registered"] == 85
    # two answered contexts per UE of the last 32 s at most (401, 200), none older
    assert 0 < len(h.core.pending) <= 2 * 33 * 2
    assert h.cpu["timer"] > 0
