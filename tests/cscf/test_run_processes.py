"""``imsaka run hss|scscf|icscf -c FILE``: three processes from one TOML, registered through."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from imsaka.aka.digest import compute_response, password_for, split_nonce
from imsaka.aka.isim import Isim
from imsaka.aka.milenage import Milenage
from imsaka.sip import parse_message
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transport import UdpTransport
from tests.conftest import free_port

from .fakes import OPC, K

pytestmark = pytest.mark.slow


def toml(hss_port: int, icscf_port: int, scscf_port: int, db: str, pcscf_port: int = 0) -> str:
    pcscf = (
        f"""
[pcscf]
name = "pcscf1.visited1.net"
port = {pcscf_port}
port_c = 0
port_s = 0
transports = ["udp"]
sec_agree = "optional"
[[pcscf.routes]]
domain = "home1.net"
icscf = "sip:127.0.0.1:{icscf_port}"
"""
        if pcscf_port
        else ""
    )
    return (
        pcscf
        + f"""
[network]
home_domains = ["home1.net"]
[network.hosts]
"scscf1.home1.net" = "127.0.0.1"

[hss]
database = "{db}"
diameter_host = "hss.home1.net"
diameter_port = {hss_port}
visited_networks = ["Visited Network Number 1"]
api_port = 0

[icscf]
name = "icscf1_p.home1.net"
port = {icscf_port}
transports = ["udp"]
[icscf.diameter]
host = "icscf1.home1.net"
timeout = 1.0
[[icscf.diameter.peers]]
host = "hss.home1.net"
address = "127.0.0.1"
port = {hss_port}
[[icscf.scscfs]]
name = "sip:scscf1.home1.net:{scscf_port}"

[scscf]
name = "scscf1.home1.net"
port = {scscf_port}
transports = ["udp"]
[scscf.diameter]
host = "scscf1.home1.net"
timeout = 1.0
[[scscf.diameter.peers]]
host = "hss.home1.net"
address = "127.0.0.1"
port = {hss_port}
"""
    )


# The REGISTER as the P-CSCF sends it (to the I-CSCF) in the tests without a P-CSCF.
BASE_AUTH = 'Digest username="user1_private@home1.net", realm="home1.net", uri="sip:home1.net"'


def register_as_pcscf(port: int, cseq: int, auth: str):
    text = (
        "REGISTER sip:home1.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP pcscf1.visited1.net:{port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        "Max-Forwards: 69\r\n"
        "Path: <sip:term@pcscf1.visited1.net;lr>\r\nRequire: path\r\n"
        'P-Visited-Network-ID: "Visited Network Number 1"\r\n'
        "From: <sip:user1_public1@home1.net>;tag=1\r\nTo: <sip:user1_public1@home1.net>\r\n"
        "Contact: <sip:127.0.0.1:40000>;expires=3600\r\nCall-ID: run-test\r\n"
        f"Authorization: {auth}\r\nCSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def aka_answer(r401, algorithm: str = "AKAv1-MD5") -> tuple[str, str]:
    """The nonce of `r401` and the UE's response to it (`algorithm`)."""
    nonce = r401.www_authenticate.get("nonce")
    rand, autn, _ = split_nonce(nonce)
    aka = Isim(Milenage(K, opc=OPC)).authenticate(rand, autn)
    response = compute_response(
        algorithm=algorithm, username="user1_private@home1.net", realm="home1.net",
        password=password_for(algorithm, res=aka.res, ik=aka.ik, ck=aka.ck), method="REGISTER",
        uri="sip:home1.net", nonce=nonce,
    )  # fmt: skip
    return nonce, response


async def pcscf_client() -> tuple[SipEndpoint, int]:
    """A SIP endpoint on a free loopback port, playing the P-CSCF: it and its port."""
    client = SipEndpoint(owner="pcscf")
    client.add_transport(await UdpTransport.create("127.0.0.1", 0))
    return client, client.transports[0].local_address[1]


async def first_challenge(client, port: int, icscf_port: int, *, tries: int):
    """The first REGISTER through the I-CSCF, again while the CSCFs are still reaching
    the HSS (480, 504): its 401."""
    r401 = None
    for _ in range(tries):
        r401 = await client.send_request(
            register_as_pcscf(
                port, 1, f'{BASE_AUTH}, nonce="", response="", integrity-protected="no"'
            ),
            ("127.0.0.1", icscf_port),
        )
        if r401.status not in (480, 504):
            break
        await asyncio.sleep(0.25)
    assert r401.status == 401, r401
    return r401


def start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "imsaka", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def wait_line(proc: subprocess.Popen, word: str, timeout: float = 60.0) -> str:
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout)
    assert word in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


async def wait_tcp(port: int, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def test_three_processes_from_one_file(tmp_path):
    hss_port = free_port()
    icscf_port = free_port(socket.SOCK_DGRAM)
    scscf_port = free_port(socket.SOCK_DGRAM)
    db = f"sqlite+aiosqlite:///{tmp_path / 'hss.db'}"
    cfg = tmp_path / "imsaka.toml"
    cfg.write_text(toml(hss_port, icscf_port, scscf_port, db))
    add = subprocess.run(
        [sys.executable, "-m", "imsaka", "hss", "add-subscriber", "-c", str(cfg),
         "--impi", "user1_private@home1.net", "--impu", "sip:user1_public1@home1.net",
         "--k", K.hex(), "--opc", OPC.hex()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    procs = []
    client = None
    try:
        procs.append(start("run", "hss", "-c", str(cfg)))
        await wait_tcp(hss_port)
        procs.append(start("run", "scscf", "-c", str(cfg)))
        await wait_line(procs[-1], "listening")
        procs.append(start("run", "icscf", "-c", str(cfg)))
        await wait_line(procs[-1], "listening")
        client, port = await pcscf_client()

        def register(cseq: int, auth: str):
            return register_as_pcscf(port, cseq, auth)

        # (the CSCFs reach the HSS within seconds)
        r401 = await first_challenge(client, port, icscf_port, tries=20)
        nonce, response = aka_answer(r401)
        r200 = await client.send_request(
            register(2, f'{BASE_AUTH}, nonce="{nonce}", algorithm=AKAv1-MD5, response="{response}", '
                        'integrity-protected="yes"'),
            ("127.0.0.1", icscf_port),
        )  # fmt: skip
        assert r200.status == 200, r200
        assert r200.get("p-associated-uri") == "<sip:user1_public1@home1.net>"
    finally:
        if client is not None:
            await client.close()
        codes = [stop(p) for p in reversed(procs)]
    assert codes == [0] * len(procs), [p.stderr.read()[-2000:] for p in procs]


async def test_four_processes_and_a_ue_without_sec_agree(tmp_path):
    """``imsaka run pcscf`` too: a UE without IPsec (as SIPp would be) registers through
    P-CSCF (sec_agree = "optional"), I-CSCF and S-CSCF processes against the HSS process."""
    hss_port = free_port()
    icscf_port = free_port(socket.SOCK_DGRAM)
    scscf_port = free_port(socket.SOCK_DGRAM)
    pcscf_port = free_port(socket.SOCK_DGRAM)
    db = f"sqlite+aiosqlite:///{tmp_path / 'hss.db'}"
    cfg = tmp_path / "imsaka.toml"
    cfg.write_text(toml(hss_port, icscf_port, scscf_port, db, pcscf_port))
    add = subprocess.run(
        [sys.executable, "-m", "imsaka", "hss", "add-subscriber", "-c", str(cfg),
         "--impi", "user1_private@home1.net", "--impu", "sip:user1_public1@home1.net",
         "--k", K.hex(), "--opc", OPC.hex(), "--visited-network", "Visited Network Number 1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    procs = []
    ue = None
    try:
        procs.append(start("run", "hss", "-c", str(cfg)))
        await wait_tcp(hss_port)
        for name in ("scscf", "icscf", "pcscf"):
            procs.append(start("run", name, "-c", str(cfg)))
            await wait_line(procs[-1], "listening")
        ue = SipEndpoint(owner="ue")
        ue.add_transport(await UdpTransport.create("127.0.0.1", 0))
        port = ue.transports[0].local_address[1]

        def register(cseq: int, auth: str):
            text = (
                "REGISTER sip:home1.net SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:user1_public1@home1.net>;tag=1\r\nTo: <sip:user1_public1@home1.net>\r\n"
                f"Contact: <sip:127.0.0.1:{port}>;expires=3600\r\nCall-ID: ue-run-test\r\n"
                f"Authorization: {auth}\r\nCSeq: {cseq} REGISTER\r\nSupported: path\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            return parse_message(text.encode())

        r401 = None
        for _ in range(20):
            r401 = await ue.send_request(
                register(1, f'{BASE_AUTH}, nonce="", response=""'), ("127.0.0.1", pcscf_port)
            )
            if r401.status not in (480, 504):
                break
            await asyncio.sleep(0.25)
        assert r401.status == 401, r401
        www = r401.www_authenticate
        assert www.get("ik") is None and www.get("ck") is None  # the P-CSCF kept them
        nonce, response = aka_answer(r401)
        r200 = await ue.send_request(
            register(
                2, f'{BASE_AUTH}, nonce="{nonce}", algorithm=AKAv1-MD5, response="{response}"'
            ),
            ("127.0.0.1", pcscf_port),
        )
        assert r200.status == 200, r200
        assert r200.get("service-route") == f"<sip:orig@scscf1.home1.net:{scscf_port};lr>"
    finally:
        if ue is not None:
            await ue.close()
        codes = [stop(p) for p in reversed(procs)]
    assert codes == [0] * len(procs), [p.stderr.read()[-2000:] for p in procs]


@pytest.mark.redis
@pytest.mark.parametrize("algorithm", ["AKAv1-MD5", "AKAv2-MD5"])
async def test_two_scscf_instances_one_killed_between_the_401_and_the_answer(
    tmp_path, redis_url, algorithm
):
    """`imsaka run scscf` and `imsaka run scscf --instance 2` from one file: one
    Server-Name, each its own port and Diameter identity, one Redis store; the I-CSCF
    lists both. The first sends the 401 and is killed (SIGKILL); the UE's answer goes,
    after the I-CSCF's `scscf_timeout`, to the second, which verifies it from the
    challenge the first wrote to Redis (for AKAv2-MD5 its digest password, made by the
    first from XRES, IK and CK): 200, no second challenge. The refresh after it goes to
    the second at once."""
    from imsaka.cscf.registrar import RedisBindingStore

    hss_port = free_port()
    icscf_port = free_port(socket.SOCK_DGRAM)
    scscf_port = free_port(socket.SOCK_DGRAM)
    scscf2_port = free_port(socket.SOCK_DGRAM)
    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    db = f"sqlite+aiosqlite:///{tmp_path / 'hss.db'}"
    first = f'[[icscf.scscfs]]\nname = "sip:scscf1.home1.net:{scscf_port}"\n'
    text = (
        toml(hss_port, icscf_port, scscf_port, db)
        .replace(first, f"{first}{first}port = {scscf2_port}\n")
        .replace("[icscf]\n", "[icscf]\nscscf_timeout = 1.0\n")
        .replace(
            '[scscf]\nname = "scscf1.home1.net"\n',
            '[scscf]\nname = "scscf1.home1.net"\n'
            f'binding_store = "{redis_url}"\nbinding_store_prefix = "{prefix}"\n',
        )
        + f'[[scscf.instances]]\nport = {scscf2_port}\ndiameter_host = "scscf1b.home1.net"\n'
    )
    cfg = tmp_path / "imsaka.toml"
    cfg.write_text(text)
    add = subprocess.run(
        [sys.executable, "-m", "imsaka", "hss", "add-subscriber", "-c", str(cfg),
         "--impi", "user1_private@home1.net", "--impu", "sip:user1_public1@home1.net",
         "--k", K.hex(), "--opc", OPC.hex(), "--scheme", f"Digest-{algorithm}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    procs: list[subprocess.Popen] = []
    client = None
    try:
        procs.append(start("run", "hss", "-c", str(cfg)))
        await wait_tcp(hss_port)
        procs.append(start("run", "scscf", "-c", str(cfg)))
        await wait_line(procs[-1], "listening")
        procs.append(start("run", "scscf", "--instance", "2", "-c", str(cfg)))
        assert f":{scscf2_port}" in await wait_line(procs[-1], "listening")
        procs.append(start("run", "icscf", "-c", str(cfg)))
        await wait_line(procs[-1], "listening")
        client, port = await pcscf_client()

        def register(cseq: int, auth: str):
            return register_as_pcscf(port, cseq, auth)

        # (the CSCFs reach the HSS within seconds)
        r401 = await first_challenge(client, port, icscf_port, tries=40)
        assert r401.www_authenticate.get("algorithm") == algorithm
        procs[1].kill()  # the first instance: no drain, nothing written at the stop
        procs[1].wait()
        nonce, response = aka_answer(r401, algorithm)
        t0 = asyncio.get_running_loop().time()
        r200 = await client.send_request(
            register(2, f'{BASE_AUTH}, nonce="{nonce}", algorithm={algorithm}, response="{response}", '
                        'integrity-protected="yes"'),
            ("127.0.0.1", icscf_port),
        )  # fmt: skip
        assert r200.status == 200, r200
        assert 1.0 <= asyncio.get_running_loop().time() - t0 < 10.0
        t0 = asyncio.get_running_loop().time()
        refresh = await client.send_request(
            register(3, f'{BASE_AUTH}, nonce="", response="", integrity-protected="yes"'),
            ("127.0.0.1", icscf_port),
        )
        assert refresh.status == 200, refresh
        assert asyncio.get_running_loop().time() - t0 < 1.0  # (the killed one is passed over)
    finally:
        if client is not None:
            await client.close()
        codes = [stop(p) for p in reversed(procs)]
        store = RedisBindingStore(redis_url, prefix=prefix)
        await store.clear()
        await store.close()
    # (stopped in reverse: the I-CSCF, the second instance, the killed first, the HSS)
    assert codes == [0, 0, -signal.SIGKILL, 0], [p.stderr.read()[-2000:] for p in procs]
