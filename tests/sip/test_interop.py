"""Our stack against real peers' bytes: SIPp's built-in UAC and UAS scenarios over
loopback UDP (INVITE / 100 / 180 / 200 / ACK / BYE / 200), and Wireshark's SIP
dissector (tshark) reading the seed packets as we serialize them."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from imsaka.sip import Request, parse_message
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.proxy import ack_for_2xx, new_call_id, new_tag
from imsaka.sip.transport import UdpTransport

from .conftest import SEED

pytestmark = pytest.mark.timeout(60)

SIPP = shutil.which("sipp") or "sipp"
TSHARK = shutil.which("tshark") or "tshark"


async def run_sipp(*args: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        SIPP,
        *args,
        "-nostdin",
        "-timeout",
        "20s",
        "-timeout_error",
        "-trace_err",
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    errors = "".join(p.read_text(errors="replace") for p in cwd.glob("*errors.log"))
    return proc.returncode, out.decode(errors="replace")[-2000:] + errors[-3000:]


async def test_sipp_uac_against_our_uas(tmp_path):
    ep = SipEndpoint(owner="uas")
    t = ep.add_transport(await UdpTransport.create("127.0.0.1", 0))
    seen = []

    def handler(req, tx):
        seen.append(req.method)
        if req.method == "INVITE":
            tag = new_tag()
            tx.reply(180, to_tag=tag)
            tx.reply(
                200, to_tag=tag, headers=[("Contact", f"<sip:uas@127.0.0.1:{t.local_address[1]}>")]
            )
        else:
            tx.reply(200)

    ep.set_request_handler(handler)
    acks = []
    ep.set_ack_handler(lambda req, addr, transport: acks.append(req))
    try:
        code, log = await run_sipp(
            "-sn",
            "uac",
            f"127.0.0.1:{t.local_address[1]}",
            "-i",
            "127.0.0.1",
            "-m",
            "3",
            "-l",
            "1",
            "-r",
            "10",
            cwd=tmp_path,
        )
        assert code == 0, log
        assert seen == ["INVITE", "BYE"] * 3
        assert len(acks) == 3 and all(a.method == "ACK" for a in acks)
        assert ep.counters["parse_errors"] == 0
    finally:
        await ep.close()


async def test_our_uac_against_sipp_uas(tmp_path):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = await asyncio.create_subprocess_exec(
        SIPP,
        "-sn",
        "uas",
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "20s",
        "-timeout_error",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    ep = SipEndpoint(owner="uac")
    t = ep.add_transport(await UdpTransport.create("127.0.0.1", 0))
    try:
        await asyncio.sleep(0.5)  # let SIPp bind
        host, lport = t.local_address
        call_id = new_call_id(host)
        invite = Request(
            "INVITE",
            f"sip:service@127.0.0.1:{port}",
            [
                ("From", f"<sip:uac@127.0.0.1:{lport}>;tag={new_tag()}"),
                ("To", f"<sip:service@127.0.0.1:{port}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:uac@127.0.0.1:{lport}>"),
                ("Max-Forwards", "70"),
                ("Content-Type", "application/sdp"),
            ],
            body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 6000 RTP/AVP 0\r\n",
        )
        provisional = []
        ok = None
        sent = invite
        for _ in range(3):  # SIPp may not be listening yet: retry on 408
            sent = invite.copy()
            ok = await ep.send_request(
                sent, ("127.0.0.1", port), on_provisional=lambda r: provisional.append(r.status)
            )
            if ok.status != 408:
                break
        assert ok.status == 200 and ok.to.tag
        assert 180 in provisional
        ep.send_stateless(ack_for_2xx(sent, ok), ("127.0.0.1", port))
        bye = Request(
            "BYE",
            ok.contacts[0].uri if ok.contacts else invite.uri,
            [
                ("From", invite.get("from")),
                ("To", ok.get("to")),
                ("Call-ID", call_id),
                ("CSeq", "2 BYE"),
                ("Max-Forwards", "70"),
            ],
        )
        resp = await ep.send_request(bye, ("127.0.0.1", port))
        assert resp.status == 200
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ep.close()


def _pcap(payloads: list[bytes]) -> bytes:
    """A pcap (LINKTYPE_RAW) of IPv4/UDP datagrams 127.0.0.1:5060 -> 127.0.0.2:5060."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for i, p in enumerate(payloads):
        udp = struct.pack("!HHHH", 5060, 5060, 8 + len(p), 0) + p
        total = 20 + len(udp)
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            i,
            0,
            64,
            17,
            0,
            bytes([127, 0, 0, 1]),
            bytes([127, 0, 0, 2]),
        )
        csum = sum(struct.unpack("!10H", hdr))
        csum = (csum & 0xFFFF) + (csum >> 16)
        csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
        hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
        pkt = hdr + udp
        out.append(struct.pack("<IIII", 1, i, len(pkt), len(pkt)) + pkt)
    return b"".join(out)


def test_tshark_dissects_our_serialized_seed_packets(tmp_path):
    msgs = [parse_message(SEED[n]) for n in range(1, 14)]
    path = tmp_path / "seed.pcap"
    path.write_bytes(_pcap([m.to_bytes() for m in msgs]))
    fields = [
        "sip.Method",
        "sip.Status-Code",
        "sip.Call-ID",
        "sip.CSeq.seq",
        "sip.Via.branch",
        "sip.from.tag",
    ]
    cmd = [TSHARK, "-r", str(path), "-d", "udp.port==5060,sip", "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("|") for line in out.strip().splitlines()]
    assert len(rows) == 13
    for m, row in zip(msgs, rows, strict=True):
        method, status, call_id, seq, branch, from_tag = row
        if m.__class__.__name__ == "Request":
            assert method == m.method
        else:
            assert status == str(m.status)
        assert call_id == m.call_id
        assert seq == str(m.cseq.seq)
        assert branch.split(",")[0] == m.top_via.branch
        assert from_tag == m.from_.tag
    # no malformed-packet expert info anywhere
    bad = subprocess.run(
        [TSHARK, "-r", str(path), "-d", "udp.port==5060,sip", "-Y", "_ws.malformed"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert bad.strip() == ""
