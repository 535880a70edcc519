"""`imsaka lab` as a real process: subscribers from a CSV, a `listening` line, UEs
registering with and without sec-agree (policy optional), clean shutdown on SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from imsaka.ports import free_port
from imsaka.ue.client import UeClient
from imsaka.ue.config import UeConfig

pytestmark = pytest.mark.slow

CSV = """impi,impu,k,op,opc,amf,sqn
alice@home1.net,sip:alice@home1.net,465b5ce8b199b49faa5f0a2ee238a6bc,,cd63cb71954a9f4e48a5994e37a02baf,8000,0
bob@home1.net,sip:bob@home1.net|sip:+12125551111@home1.net,0396eb317b6d1c36f19c1c84cd6ffd16,,53c15671c60a4b731c55b4a441c0bde2,8000,0
carol@lab2.example,sip:carol@lab2.example,fec86ba6eb707ed08905757b1bb44b8f,cdc202d5123e20f62b6d676ac72cb318,,8000,0
dave@home1.net,sip:dave@home1.net,6162636465666768696a6b6c6d6e6f70,7172737475767778797a616263646566,,8000,0
"""
# dave's K and OP are printable letters: SIPp turns aka_K/aka_OP into raw bytes inside
# its message template and then trips over a byte 0x5b ('[') as a keyword start.


async def start_lab(tmp_path, *extra: str, csv_text: str = CSV):
    csv = tmp_path / "subs.csv"
    csv.write_text(csv_text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imsaka", "lab", "--subscribers", str(csv), "--pcscf", "127.0.0.1:0", "--duration", "60", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, (lines, (await proc.stderr.read()).decode())
        lines.append(line)
        if "listening" in line:
            break
    m = re.search(r"udp (\S+):(\d+)", lines[-1])
    return proc, (m.group(1), int(m.group(2))), lines


async def stop_lab(proc):
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


def ue(pcscf, impi, impu, k, *, op=None, opc=None, **kw):
    return UeConfig(
        impi=impi, impus=[impu], home_domain=impi.split("@")[1], k=bytes.fromhex(k),
        op=bytes.fromhex(op) if op else None, opc=bytes.fromhex(opc) if opc else None, pcscf=pcscf, **kw,
    )  # fmt: skip


def three_ues(addr, **alice_kw):
    """alice (OPc, sec-agree), bob (no sec-agree, two IMPUs), carol (second home domain,
    OP instead of OPc) from `CSV`, towards the P-CSCF at `addr`."""
    alice = UeClient(ue(addr, "alice@home1.net", "sip:alice@home1.net", "465b5ce8b199b49faa5f0a2ee238a6bc",
                        opc="cd63cb71954a9f4e48a5994e37a02baf", **alice_kw))  # fmt: skip
    bob = UeClient(ue(addr, "bob@home1.net", "sip:bob@home1.net", "0396eb317b6d1c36f19c1c84cd6ffd16",
                      opc="53c15671c60a4b731c55b4a441c0bde2", sec_agree=False))  # fmt: skip
    carol = UeClient(ue(addr, "carol@lab2.example", "sip:carol@lab2.example", "fec86ba6eb707ed08905757b1bb44b8f",
                        op="cdc202d5123e20f62b6d676ac72cb318"))  # fmt: skip
    return alice, bob, carol


@contextlib.asynccontextmanager
async def started(*clients):
    """The UE clients started, and closed again whatever happens."""
    try:
        for c in clients:
            await c.start()
        yield clients
    finally:
        for c in clients:
            await c.close()


async def register_three(alice, bob, carol):
    """Register the three at once: alice and carol over IPsec, bob in the clear."""
    ra, rb, rc = await asyncio.gather(alice.register(15), bob.register(15), carol.register(15))
    assert ra.ok and ra.protected, ra
    assert rb.ok and not rb.protected, rb
    assert rc.ok and rc.protected, rc  # a second home domain, OP (not OPc) in the CSV
    return ra, rb, rc


async def test_lab_registers_ues_with_and_without_sec_agree(tmp_path):
    proc, addr, _ = await start_lab(tmp_path, "--sec-agree", "optional")
    try:
        async with started(*three_ues(addr, encryption=("aes-cbc",))) as (alice, bob, carol):
            _ra, rb, _rc = await register_three(alice, bob, carol)
            assert rb.associated_uris and any("+12125551111" in u for u in rb.associated_uris)
            assert (await alice.deregister(15)).ok
    finally:
        code, out, err = await stop_lab(proc)
    assert code == 0, err
    assert "REGISTER" in out and "[ESP spi=" in out and "[clear]" in out
    assert re.search(r"stopped: [34] registrations accepted, 2 still registered", out), out


async def test_lab_required_refuses_ue_without_sec_agree(tmp_path):
    proc, addr, _ = await start_lab(tmp_path, "--quiet")
    try:
        bob = UeClient(ue(addr, "bob@home1.net", "sip:bob@home1.net", "0396eb317b6d1c36f19c1c84cd6ffd16",
                          opc="53c15671c60a4b731c55b4a441c0bde2", sec_agree=False))  # fmt: skip
        await bob.start()
        try:
            res = await bob.register(15)
        finally:
            await bob.close()
        assert not res.ok and res.status == 421, res
    finally:
        code, _out, err = await stop_lab(proc)
    assert code == 0, err


async def test_lab_processes_registers_ues_and_stops_its_functions(tmp_path):
    """``--processes``: four ``imsaka run`` processes, each with its PID and metrics URL
    printed; UEs register through them; SIGINT stops them all (by PID) with a summary
    read from the P-CSCF's metrics."""
    from imsaka.metrics import parse_metrics, scrape

    proc, addr, lines = await start_lab(tmp_path, "--sec-agree", "optional", "--processes")
    pids: dict[str, int] = {}
    try:
        urls = {}
        for line in lines:
            m = re.match(r"imsaka lab: (\w+) pid (\d+), metrics (\S+)", line)
            if m:
                pids[m.group(1)] = int(m.group(2))
                urls[m.group(1)] = m.group(3)
        assert set(pids) == {"hss", "scscf", "icscf", "pcscf"}, lines
        assert proc.pid not in pids.values()
        async with started(*three_ues(addr)) as (alice, bob, carol):
            await register_three(alice, bob, carol)
            samples = parse_metrics(await scrape(urls["scscf"]))
            assert samples[("imsaka_state", (("function", "scscf"), ("kind", "bindings")))] == 3
            assert (await alice.deregister(15)).ok
    finally:
        code, out, err = await stop_lab(proc)
        for pid in pids.values():  # whatever happened above, no function stays behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 0, err
    assert "no ladder with --processes" in "".join(lines)
    assert re.search(r"stopped: 3 registrations accepted, 2 still registered", out), out
    # The lab ended its functions (and reaped them) before it exited.
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def four_free_ports() -> int:
    """N such that TCP ports N..N+3 are free on loopback now."""
    import socket

    for _ in range(50):
        first = free_port("127.0.0.1", udp=False, tcp=True)
        if first + 3 > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + 4):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError("no four consecutive free ports")


async def test_lab_in_one_process_serves_metrics_per_function(tmp_path):
    """``--metrics-port N`` without --processes: the same four endpoints (P-CSCF N,
    I-CSCF N+1, S-CSCF N+2, HSS N+3), read from the functions in the lab's process."""
    from imsaka.metrics import parse_metrics, scrape

    first = four_free_ports()
    proc, addr, lines = await start_lab(tmp_path, "--quiet", "--metrics-port", str(first))
    try:
        shown = [line.strip() for line in lines if " metrics " in line]
        assert shown == [
            f"imsaka lab: {name} metrics http://127.0.0.1:{first + i}/metrics"
            for i, name in enumerate(("pcscf", "icscf", "scscf", "hss"))
        ], lines
        alice, _bob, _carol = three_ues(addr)
        await alice.start()
        try:
            assert (await alice.register(15)).ok
            pcscf = parse_metrics(await scrape(f"http://127.0.0.1:{first}/metrics"))
            assert pcscf[("imsaka_state", (("function", "pcscf"), ("kind", "sa_sets")))] == 1
            hss = await scrape(f"http://127.0.0.1:{first + 3}/metrics")
            assert 'imsaka_events_total{event="maa-vectors",function="hss",source="hss_cx"}' in hss
        finally:
            await alice.close()
    finally:
        code, out, err = await stop_lab(proc)
    assert code == 0, err
    assert "stopped: 1 registrations accepted, 1 still registered" in out, out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--processes", "--pcap", "x.pcap"], "--pcap: not available with --processes"),
        (["--processes", "--metrics-port", "65534"], "--metrics-port: must be 1-65532"),
    ],
)
async def test_lab_processes_bad_options_are_one_line_errors(tmp_path, extra, message):
    csv = tmp_path / "subs.csv"
    csv.write_text(CSV)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imsaka", "lab", "--subscribers", str(csv), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().startswith(f"imsaka: error: {message}") and err.decode().count("\n") == 1


async def test_lab_bad_csv_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("impi,impu,k,op,opc,amf\nalice@home1.net,sip:alice@home1.net,zz,,00,8000\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imsaka", "lab", "--subscribers", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert (
        err.decode().startswith("imsaka: error: --subscribers:") and err.decode().count("\n") == 1
    )


@pytest.mark.sipp
async def test_lab_sipp_as_ue_without_sec_agree(tmp_path):
    """SIPp (sip-tester) registers with AKAv1-MD5, no sec-agree, under policy optional."""
    template = (Path(__file__).parent / "sipp" / "register_aka.xml").read_text()
    scenario = tmp_path / "register_aka.xml"
    scenario.write_text(
        template.replace("@IMPI@", "dave@home1.net").replace("@USER@", "dave").replace("@DOMAIN@", "home1.net")
        .replace("@K@", "0x6162636465666768696a6b6c6d6e6f70").replace("@OP@", "0x7172737475767778797a616263646566")
    )  # fmt: skip
    proc, addr, _ = await start_lab(tmp_path, "--sec-agree", "optional")
    try:
        # SIPp passes RES to its digest as a C string: a RES with a 0x00 octet (about 3 %
        # of RANDs, PITFALLS) fails on SIPp's side. Each attempt gets a fresh RAND.
        outcomes = []
        for _attempt in range(3):
            sipp = await asyncio.create_subprocess_exec(
                "sipp", f"{addr[0]}:{addr[1]}", "-sf", str(scenario), "-m", "1", "-i", "127.0.0.1",
                "-p", str(free_port("127.0.0.1")), "-timeout", "15", "-timeout_error", "-nostdin",
                "-au", "dave@home1.net", cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _err = await asyncio.wait_for(sipp.communicate(), 30)
            outcomes.append((sipp.returncode, out.decode("latin-1")[-400:]))
            if sipp.returncode == 0:
                break
        assert outcomes[-1][0] == 0, outcomes
    finally:
        code, out, err = await stop_lab(proc)
    assert code == 0, err
    assert "REGISTER sip:home1.net [clear]" in out and "200 OK [clear]" in out


async def test_the_example_files_register_a_ue_with_the_lab(tmp_path):
    """What README's try-it shows: `imsaka lab --subscribers examples/subs.csv` and, in a
    second terminal, `imsaka ue register -c examples/ue.toml --stay N` (here --pcscf
    points it at the lab's free port): registered over IPsec, de-registered at the end."""
    import json

    examples = Path(__file__).resolve().parents[2] / "examples"
    csv_text = (examples / "subs.csv").read_text()
    proc, (host, port), _ = await start_lab(tmp_path, "--quiet", csv_text=csv_text)
    try:
        ue_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imsaka", "ue", "register", "-c", str(examples / "ue.toml"),
            "--pcscf", f"{host}:{port}", "--stay", "1", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(ue_proc.communicate(), 60)
        assert ue_proc.returncode == 0, err.decode()
        result = json.loads(out.decode())
        assert result["registered"] and result["protected"] and result["deregistered"], result
        assert result["p_associated_uri"] == ["<sip:alice@home1.net>"]
    finally:
        code, _out, err = await stop_lab(proc)
    assert code == 0, err
