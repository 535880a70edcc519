"""imsaka.trace: dedup of both ends' reports, ladder rendering, and the pcap writer
(IPv4/IPv6, UDP/TCP, ESP-in-UDP and bare ESP) checked by tshark."""

from __future__ import annotations

import subprocess

import pytest

from imsaka.trace import PcapWriter, Trace, mask_keys, render_ladder
from imsaka.wire import WireEvent

REG = b"REGISTER sip:home1.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\nFrom: <sip:a@home1.net>;tag=1\r\nTo: <sip:a@home1.net>\r\nContent-Length: 0\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\nFrom: <sip:a@home1.net>;tag=1\r\nTo: <sip:a@home1.net>;tag=2\r\nContent-Length: 0\r\n\r\n"
# A Diameter CER header + Origin-Host AVP (RFC 6733 §3, §4)
CER = (
    bytes.fromhex("0100002c80000101000000000000000100000001")
    + bytes.fromhex("0000010840000013686f73742e7465737400")
    + b"\x00"
)
CER = CER[:1] + len(CER).to_bytes(3, "big") + CER[4:]


def ev(direction, src, dst, payload, protocol="sip", transport="udp", owner="", inner=None):
    return WireEvent(1700000000.0, direction, transport, src, dst, payload, protocol, owner, inner)


def test_both_ends_reported_once_and_names():
    t = Trace(names={("127.0.0.1", 5060): "P-CSCF"})
    ue, p = ("127.0.0.1", 40000), ("127.0.0.1", 5060)
    t(ev("out", ue, p, REG, owner="ue"))
    t(ev("in", ue, p, REG, owner="pcscf"))
    t(ev("out", p, ue, OK, owner="pcscf"))
    t(ev("in", p, ue, OK, owner="ue"))
    t(ev("in", ("127.0.0.1", 9), p, REG, owner="pcscf"))  # a real phone: only "in"
    assert [(r.src_name, r.dst_name, r.summary) for r in t.records] == [
        ("UE", "P-CSCF", "REGISTER sip:home1.net"),
        ("P-CSCF", "UE", "200 OK"),
        ("127.0.0.1:9", "P-CSCF", "REGISTER sip:home1.net"),
    ]
    lines = render_ladder(t.records)
    assert "▶" in lines[1] and "◀" in lines[2]


def test_esp_record_gets_its_plaintext_from_the_receiver():
    t = Trace()
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    esp = (0x1234).to_bytes(4, "big") + b"\x00\x00\x00\x01" + b"x" * 40
    t(ev("out", a, b, esp, protocol="esp", owner="ue"))  # sender without inner
    t(ev("in", a, b, esp, protocol="esp", owner="pcscf", inner=REG))
    (rec,) = t.records
    assert rec.esp_spi == 0x1234 and rec.summary.startswith("REGISTER") and rec.protected


def test_a_port_first_heard_of_as_a_receiver_gets_its_owner_name():
    # The P-CSCF's NOTIFY to the UE's port-s (TS 24.229 §5.1.1.3): the UE never sent
    # from that port, so only its receive report names it; the ladder keeps one UE column.
    t = Trace()
    ue_c, ue_s, p_c = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("127.0.0.1", 5064)
    t(ev("out", ue_c, ("127.0.0.1", 5060), REG, owner="ue"))
    esp = (0x99).to_bytes(4, "big") + b"\x00\x00\x00\x01" + b"n" * 40
    t(ev("out", p_c, ue_s, esp, protocol="esp", owner="pcscf"))
    assert t.records[-1].dst_name == "127.0.0.1:40002"
    t(ev("in", p_c, ue_s, esp, protocol="esp", owner="ue", inner=OK))
    assert [(r.src_name, r.dst_name) for r in t.records] == [
        ("UE", "127.0.0.1:5060"),
        ("P-CSCF", "UE"),
    ]
    assert t.records[-1].summary == "200 OK"


def test_keys_are_masked():
    h = (("WWW-Authenticate", 'Digest nonce="x", ik="0011", ck="ffee"'),)
    assert mask_keys(h)[0][1] == 'Digest nonce="x", ik="<hidden>", ck="<hidden>"'


@pytest.mark.tshark
@pytest.mark.parametrize("esp", ["udp", "ip"])
def test_pcap_opens_in_tshark(tmp_path, esp):
    path = tmp_path / "t.pcap"
    w = PcapWriter(path, esp=esp)
    w.write(ev("out", ("127.0.0.1", 40000), ("127.0.0.1", 5060), REG))
    w.write(ev("out", ("::1", 40000), ("::1", 5060), OK))
    w.write(
        ev(
            "out",
            ("127.0.0.1", 50000),
            ("127.0.0.1", 3868),
            CER,
            protocol="diameter",
            transport="tcp",
        )
    )
    w.write(
        ev(
            "out",
            ("127.0.0.1", 5063),
            ("127.0.0.1", 5062),
            b"\x00\x00\x12\x34" + b"\x00" * 36,
            protocol="esp",
        )
    )
    w.close()
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-T", "fields", "-e", "frame.protocols", "-e", "udp.checksum.status", "-e", "ip.checksum.status"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert len(rows) == 4
    assert "ip:udp:sip" in rows[0] and "ipv6:udp:sip" in rows[1] and "tcp:diameter" in rows[2]
    assert ("ip:esp" in rows[3]) if esp == "ip" else ("ip:udp" in rows[3])
    # Wireshark checksum status: 0 bad, 1 good; ours are computed, so all good
    cols = [row.split("\t") for row in rows]
    assert cols[0][1] == "1" and cols[0][2] == "1" and cols[1][1] == "1"
