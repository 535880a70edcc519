"""The HSS's Cx traffic decodes in Wireshark's dissector (tshark) without a malformed
packet or an expert item, and the AVP values tshark shows equal what was sent."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from imsaka.diameter import cx
from imsaka.hss.server import HssServer
from imsaka.trace import PcapWriter

from .conftest import SCSCF_NAME, alice, client_node, hss_config, lir, mar, sar, uar


def tshark(pcap, port, *args) -> str:
    proc = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},diameter", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.tshark
async def test_cx_capture_decodes_cleanly_with_the_values_sent(store, tmp_path):
    await store.add_subscriber(alice())
    await store.add_subscriber(
        alice(
            impi="carol@home1.net",
            impus=["sip:carol@home1.net"],
            schemes=["SIP Digest"],
            digest_password="pw",
        )
    )
    pcap_path = tmp_path / "cx.pcap"
    pcap = PcapWriter(pcap_path)
    server = HssServer(hss_config(str(store.engine.url)), store=store, observers=(pcap.write,))
    await server.start()
    try:
        node = await client_node(server.diameter_port)
        try:
            uaa = await node.request(uar())
            refused = await node.request(uar(visited="evil.example"))
            maa = await node.request(mar(n=2))
            saa = await node.request(sar(cx.ServerAssignmentType.REGISTRATION))
            lia = await node.request(lir())
            digest = await node.request(
                mar(impi="carol@home1.net", impu="sip:carol@home1.net", scheme=cx.SCHEME_SIP_DIGEST)
            )
        finally:
            await node.stop()
    finally:
        await server.stop()
        pcap.close()
    port = server.diameter_port
    assert tshark(pcap_path, port, "-Y", "_ws.expert || _ws.malformed") == ""
    rows = tshark(
        pcap_path,
        port,
        "-Y",
        "diameter.flags.request == 0",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "diameter.cmd.code",
        "-e",
        "diameter.Experimental-Result-Code",
        "-e",
        "diameter.Result-Code",
        "-e",
        "diameter.Server-Name",
        "-e",
        "diameter.3GPP-SIP-Authenticate",
        "-e",
        "diameter.3GPP-SIP-Authorization",
        "-e",
        "diameter.Confidentiality-Key",
        "-e",
        "diameter.Integrity-Key",
        "-e",
        "diameter.Digest-HA1",
    ).splitlines()
    answers = [r.split("|") for r in rows if r.split("|")[0] in ("300", "301", "302", "303")]
    assert [a[0] for a in answers] == ["300", "300", "303", "301", "302", "303"]
    # UAA: FIRST_REGISTRATION with the pool's Server-Name inside Server-Capabilities
    assert answers[0][1] == str(uaa.experimental_result_code) == "2001"
    assert answers[0][3] == SCSCF_NAME
    assert answers[1][1] == str(refused.experimental_result_code) == "5004"
    # MAA: the vectors exactly as the S-CSCF received them
    items = maa.sip_auth_data_items
    assert answers[2][2] == "2001"
    assert answers[2][4].split(",") == [i.sip_authenticate.hex() for i in items]
    assert answers[2][5].split(",") == [i.sip_authorization.hex() for i in items]
    assert answers[2][6].split(",") == [i.confidentiality_key.hex() for i in items]
    assert answers[2][7].split(",") == [i.integrity_key.hex() for i in items]
    # SAA with the subscription XML, LIA with the serving S-CSCF
    assert answers[3][2] == "2001" and saa.user_data
    assert answers[4][3] == lia.server_name == SCSCF_NAME
    # SIP Digest MAA: SIP-Digest-Authenticate with HA1 (never the password)
    assert digest.result_code == cx.DIAMETER_SUCCESS
    assert answers[5][8] == hashlib.md5(b"carol@home1.net:home1.net:pw").hexdigest()
