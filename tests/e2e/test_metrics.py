"""Prometheus metrics of ``imsaka run FUNCTION`` (`imsaka.metrics`): ``[metrics]`` in the
whole-network TOML, the HTTP endpoint, and counts that move while a UE registers through
four function processes and de-registers again."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from imsaka.config import ConfigError, MetricsConfig, parse_config
from imsaka.metrics import MetricsServer, parse_metrics, registry_for, scrape
from imsaka.network import Network, NetworkOptions, dump_toml, make_subscribers
from imsaka.ue.client import UeClient

BASE = {
    "network": {"home_domains": ["home1.net"]},
}


def _metrics(section: object) -> MetricsConfig:
    return parse_config({**BASE, "metrics": section}).metrics


# --------------------------------------------------------------------------- config


def test_metrics_section_one_listener_per_function():
    m = _metrics({"pcscf": "127.0.0.1:9101", "scscf": "[::1]:9103", "hss": "0.0.0.0:0"})
    assert m.pcscf == ("127.0.0.1", 9101)
    assert m.scscf == ("::1", 9103)
    assert m.hss == ("0.0.0.0", 0)
    assert m.icscf is None and m.listen("icscf") is None
    assert parse_config(BASE).metrics == MetricsConfig()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"pcscf": "localhost:9101"}, "[metrics].pcscf: 'localhost' is not an IP address"),
        ({"pcscf": "127.0.0.1:99999"}, "[metrics].pcscf: '99999' is not a port (0-65535)"),
        ({"pcscf": "127.0.0.1"}, "[metrics].pcscf: '127.0.0.1' is not HOST:PORT"),
        ({"pcscf": "::1:9101"}, "[metrics].pcscf: '::1:9101' is not HOST:PORT"),
        ({"icscf": 9102}, "[metrics].icscf: must be a string"),
        ({"listen": "127.0.0.1:9101"}, "[metrics].listen: unknown field"),
        (
            {"pcscf": "127.0.0.1:9101", "icscf": "127.0.0.1:9101"},
            "[metrics].icscf: same address as [metrics].pcscf",
        ),
        ("127.0.0.1:9101", "[metrics]: must be a table"),
    ],
)
def test_bad_metrics_values_name_the_field(section, message):
    with pytest.raises(ConfigError) as exc:
        _metrics(section)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("section", ["network", "pcscf", "icscf", "scscf", "metrics"])
def test_a_section_that_is_not_a_table_is_named_as_written(section):
    doc = {"network": {"home_domains": ["home1.net"]}, section: 3}
    with pytest.raises(ConfigError, match=rf"^\[{section}\]: must be a table$"):
        parse_config(doc)


@pytest.mark.parametrize(
    ("toml", "extra", "message"),
    [
        ('[metrics]\npcscf = "127.0.0.1:http"\n', [], "[metrics].pcscf: 'http' is not a port"),
        ("", ["--metrics", "nohost:1"], "--metrics: 'nohost' is not an IP address"),
    ],
)
def test_imsaka_run_with_a_bad_metrics_value_says_one_line(tmp_path, toml, extra, message):
    cfg = tmp_path / "imsaka.toml"
    cfg.write_text('[network]\nhome_domains = ["home1.net"]\n' + toml)
    proc = subprocess.run(
        [sys.executable, "-m", "imsaka", "run", "hss", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imsaka: error: {message}"), proc.stderr


@pytest.mark.parametrize("from_cli", [False, True])
def test_imsaka_run_with_a_busy_metrics_port_says_one_line(tmp_path, from_cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        net = Network((), NetworkOptions())
        doc = net.build_config()
        extra = ["--metrics", f"127.0.0.1:{port}"] if from_cli else []
        if not from_cli:
            doc["metrics"] = {"icscf": f"127.0.0.1:{port}"}
        cfg = tmp_path / "imsaka.toml"
        cfg.write_text(dump_toml(doc))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "imsaka", "run", "icscf", "-c", str(cfg), *extra],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            if net._tmp is not None:
                net._tmp.cleanup()
    field = "--metrics" if from_cli else "[metrics].icscf"
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"imsaka: error: {field}: cannot listen on 127.0.0.1:{port}")


# --------------------------------------------------------------------------- HTTP endpoint


class _FakeServer:
    """What the collector reads from a function's server."""

    def __init__(self) -> None:
        self.live = {"sa_sets": 3, "registrations": 2}
        self.core_counts = {"registered": 5, "challenges": 6}

    def census(self) -> dict[str, int]:
        return dict(self.live)

    def stats(self) -> dict[str, object]:
        return {
            "registrations": 2,
            "sa_sets": 3,
            "drops": {"clear-register-on-protected": 1},
            "esp_drops": {"replay": 4},
            **self.core_counts,
        }


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_endpoint_serves_census_and_counters_at_scrape_time():
    fake = _FakeServer()
    server = MetricsServer(registry_for("pcscf", fake), "127.0.0.1", 0)
    await server.start()
    try:
        samples = parse_metrics(await scrape(server.url))
        assert samples[("imsaka_state", (("function", "pcscf"), ("kind", "sa_sets")))] == 3
        events = {
            (dict(labels)["source"], dict(labels)["event"]): v
            for (name, labels), v in samples.items()
            if name == "imsaka_events_total"
        }
        assert events == {
            ("pcscf", "registered"): 5,
            ("pcscf", "challenges"): 6,
            ("pcscf_drops", "clear-register-on-protected"): 1,
            ("esp_drops", "replay"): 4,
        }
        assert any(name == "process_cpu_seconds_total" for name, _ in samples)
        # Read when scraped, not when registered: the next scrape sees the change.
        fake.live["sa_sets"] = 0
        fake.core_counts["registered"] = 7
        samples = parse_metrics(await scrape(server.url))
        assert samples[("imsaka_state", (("function", "pcscf"), ("kind", "sa_sets")))] == 0
        key = (
            "imsaka_events_total",
            (("event", "registered"), ("function", "pcscf"), ("source", "pcscf")),
        )
        assert samples[key] == 7
        assert server.scrapes == 2
    finally:
        await server.close()


async def test_endpoint_answers_only_what_a_scraper_asks():
    server = MetricsServer(registry_for("hss", _FakeServer(), process=False), "127.0.0.1", 0)
    await server.start()
    try:
        port = server.port
        assert (await _raw(port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _raw(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _raw(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        head = await _raw(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        om = await _raw(
            port, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n"
        )
        assert b"Content-Type: application/openmetrics-text" in om and om.endswith(b"# EOF\n")
        # An oversized head is closed without an answer, and the server keeps serving.
        assert await _raw(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n") == b""
        assert "imsaka_state" in await scrape(server.url)
    finally:
        await server.close()


async def test_a_failing_census_does_not_fail_the_scrape():
    class Broken:
        def census(self) -> dict[str, int]:
            raise RuntimeError("boom")

    server = MetricsServer(registry_for("icscf", Broken(), process=False), "127.0.0.1", 0)
    await server.start()
    try:
        assert 'imsaka_info{function="icscf"' in await scrape(server.url)
    finally:
        await server.close()


# --------------------------------------------------------------------------- imsaka run


@pytest.fixture
def networks():
    started: list[Network] = []
    yield started
    for net in started:
        net.kill_processes()  # by PID, whatever happened


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_scrape_running_functions_while_a_ue_registers_and_deregisters(networks):
    subs = make_subscribers(2, seed=11)
    net = Network(subs, NetworkOptions(processes=True))
    networks.append(net)
    await net.start()
    try:
        assert set(net.metrics_urls) == {"hss", "scscf", "icscf", "pcscf"}
        before = {name: await net.census(name) for name in net.metrics_urls}
        assert before["pcscf"]["sa_sets"] == 0 and before["scscf"]["bindings"] == 0
        ue = UeClient(net.ue_config(subs[1]), name="user2")
        await ue.start()
        try:
            r = await ue.register(timeout=20)
            assert r.ok and r.protected, r
            pcscf, scscf = await net.census("pcscf"), await net.census("scscf")
            assert (pcscf["sa_sets"], pcscf["registrations"]) == (1, 1)
            assert (scscf["bindings"], scscf["store_bindings"]) == (1, 1)
            events = await net.events("pcscf")
            assert events[("pcscf", "registered")] == 1
            assert events[("pcscf", "challenges")] == 1
            hss_events = await net.events("hss")
            assert hss_events[("hss_cx", "maa-vectors")] >= 1
            assert not [e for (source, e), v in hss_events.items() if e.startswith("error-")]
            r = await ue.deregister(timeout=20)
            assert r.ok, r
        finally:
            await ue.close()
        # Everything goes but the de-REGISTER's SA set, which the P-CSCF holds for the
        # request's retransmissions until its Timer J (32 s; its release is tested in
        # tests/cscf/test_dereg_grace.py and waited for in tests/e2e/test_load.py).
        held = {"pcscf_sa_sets_in_grace": 1, "pcscf_sas_in_grace_records": 1}
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            after = {name: await net.census(name) for name in net.metrics_urls}
            left = {
                f"{name}_{k}": v
                for name, census in after.items()
                for k, v in census.items()
                if v and k not in ("cached_vectors", "subscribe_entries")
            }
            if left == held or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert left == held, left
        # The processes' own metrics come along (CPU, memory).
        text = await net.scrape("pcscf")
        assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
    finally:
        await net.stop()
    assert net.exit_codes == {"hss": 0, "scscf": 0, "icscf": 0, "pcscf": 0}


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_imsaka_run_serves_metrics_on_the_configured_port(tmp_path):
    """``[metrics] hss = "127.0.0.1:PORT"`` with a fixed port: the line names the URL."""
    from tests.conftest import free_port

    port = free_port()
    net = Network((), NetworkOptions())
    doc = net.build_config()
    doc["metrics"] = {"hss": f"127.0.0.1:{port}"}
    cfg = tmp_path / "imsaka.toml"
    cfg.write_text(dump_toml(doc))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imsaka", "run", "hss", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        loop = asyncio.get_running_loop()
        first = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 30)
        assert first.strip() == f"hss metrics on http://127.0.0.1:{port}/metrics"
        second = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 30)
        assert second.startswith("hss: Diameter")
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert 'imsaka_state{function="hss",kind="diameter_requests_unanswered"} 0.0' in text
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            net_tmp = net._tmp
            if net_tmp is not None:
                net_tmp.cleanup()
