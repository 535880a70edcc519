"""Real Cx traffic captured from our node and decoded by Wireshark's dissector (tshark)."""

from __future__ import annotations

import subprocess

import pytest

from imsaka.diameter import cx
from imsaka.wire import WireEvent
from tests.diameter.helpers import AUTN, CK, IK, RAND, XRES, mar
from tests.diameter.pcap import write_pcap
from tests.diameter.test_node import pair

pytestmark = [pytest.mark.tshark, pytest.mark.timeout(60)]


def tshark(pcap, port: int, *args: str, check_checksum: bool = True) -> str:
    # Our own pcap writer computes real TCP checksums: check them. Segments captured
    # live on lo carry offloaded (unfinished) checksums: those are not ours to judge.
    return subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-d",
            f"tcp.port=={port},diameter",
            "-o",
            f"tcp.check_checksum:{'TRUE' if check_checksum else 'FALSE'}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _hex(value: str) -> str:
    return value.replace(":", "").lower()


async def test_captured_cx_decodes_cleanly_with_sent_values(tmp_path):
    events: list[WireEvent] = []
    async with pair(observer=events.append) as (server, client):
        maa = await client.request(mar())
        uaa = await client.request(
            cx.UAR(
                session_id="s;uar",
                origin_host="scscf.ims.test",
                origin_realm="ims.test",
                destination_realm="ims.test",
                user_name="u@ims.test",
                public_identity="sip:u@ims.test",
                visited_network_identifier="ims.test",
            )
        )
        port = server.port
    assert maa.is_success and uaa.experimental_result_code == cx.DIAMETER_FIRST_REGISTRATION
    pcap = tmp_path / "cx.pcap"
    write_pcap(pcap, events)

    # No malformed packet, no expert warning or error anywhere in the capture.
    expert = tshark(pcap, port, "-q", "-z", "expert,warn")
    assert "Malformed" not in expert
    assert "Warning" not in expert and "Error" not in expert, expert
    lines = tshark(pcap, port, "-Y", "_ws.malformed || _ws.expert.severity >= 6291456")
    assert lines.strip() == ""

    fields = tshark(
        pcap,
        port,
        "-Y",
        "diameter",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "diameter.cmd.code",
        "-e",
        "diameter.flags.request",
        "-e",
        "diameter.3GPP-SIP-Authenticate",
        "-e",
        "diameter.Confidentiality-Key",
        "-e",
        "diameter.Integrity-Key",
        "-e",
        "diameter.3GPP-SIP-Authorization",
        "-e",
        "diameter.Server-Name",
        "-e",
        "diameter.Experimental-Result-Code",
        "-e",
        "diameter.3GPP-SIP-Authentication-Scheme",
    )
    rows = [line.split("|") for line in fields.strip().splitlines()]
    by_cmd = {(r[0], r[1] in ("1", "True")): r for r in rows}
    assert ("257", True) in by_cmd and ("257", False) in by_cmd  # CER/CEA
    mar_row = by_cmd[("303", True)]
    assert mar_row[6] == mar().server_name
    maa_row = by_cmd[("303", False)]
    assert _hex(maa_row[2]) == (RAND + AUTN).hex()
    assert _hex(maa_row[3]) == CK.hex()
    assert _hex(maa_row[4]) == IK.hex()
    assert _hex(maa_row[5]) == XRES.hex()
    assert maa_row[8] == "Digest-AKAv1-MD5"
    uaa_row = by_cmd[("300", False)]
    assert uaa_row[7] == "2001"
    assert uaa_row[6] == "sip:scscf.ims.test"


async def test_every_cx_command_and_error_answers_decode_without_expert_info(tmp_path):
    import dataclasses

    from imsaka.diameter import codec
    from tests.diameter.helpers import all_commands

    events: list[WireEvent] = []
    async with pair(observer=events.append) as (server, client):
        for req in all_commands():
            if not req.IS_REQUEST:
                continue
            if isinstance(req, (cx.RTR, cx.PPR)):
                await server.request(dataclasses.replace(req, destination_host="scscf.ims.test"))
            else:
                await client.request(req)
        msg = mar().to_message()
        stripped = dataclasses.replace(msg, avps=tuple(a for a in msg.avps if a.code != 601))
        answer = await client.request(stripped)  # answered 5005 with Failed-AVP
        assert answer.find(codec.AVP_RESULT_CODE).u32 == 5005
        port = server.port
    pcap = tmp_path / "all.pcap"
    write_pcap(pcap, events)
    expert = tshark(pcap, port, "-q", "-z", "expert,note")
    assert "Malformed" not in expert
    assert "Warning" not in expert and "Error" not in expert, expert
    codes = tshark(pcap, port, "-Y", "diameter", "-T", "fields", "-e", "diameter.cmd.code")
    assert {"300", "301", "302", "303", "304", "305"} <= set(codes.split())
    failed = tshark(
        pcap,
        port,
        "-Y",
        "diameter.Result-Code == 5005",
        "-T",
        "fields",
        "-e",
        "diameter.Failed-AVP",
    )
    assert failed.strip()


async def test_live_capture_on_loopback(tmp_path):
    """The same check on the real segments: tshark captures lo while the nodes talk."""
    import asyncio

    from tests.conftest import free_port

    port = free_port()
    pcap = tmp_path / "live.pcapng"
    proc = subprocess.Popen(
        ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while "Capturing on" not in await asyncio.to_thread(proc.stderr.readline):
            assert proc.poll() is None, "tshark could not start capturing"
        await asyncio.sleep(1.0)  # the capture filter is live a moment after the banner
        async with pair(port=port) as (_server, client):
            maa = await client.request(mar())
        await asyncio.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(10)
    assert maa.is_success
    expert = tshark(pcap, port, "-q", "-z", "expert,warn", check_checksum=False)
    assert "Malformed" not in expert and "Warning" not in expert and "Error" not in expert
    fields = tshark(
        pcap,
        port,
        "-Y",
        "diameter.cmd.code == 303 && diameter.flags.request == 0",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "diameter.3GPP-SIP-Authenticate",
        "-e",
        "diameter.Confidentiality-Key",
        "-e",
        "diameter.Integrity-Key",
        check_checksum=False,
    )
    [row] = [line.split("|") for line in fields.strip().splitlines()]
    assert [_hex(v) for v in row] == [(RAND + AUTN).hex(), CK.hex(), IK.hex()]
    codes = tshark(
        pcap,
        port,
        "-Y",
        "diameter",
        "-T",
        "fields",
        "-e",
        "diameter.cmd.code",
        check_checksum=False,
    )
    assert codes.split() == ["257", "257", "303", "303", "282", "282"]
