"""`imsaka demo` end to end: exit status, ladder, JSON records, and its pcap decrypted by
tshark with the esp_sa key file it wrote (issue 6: "the pcap and key file of the demo
decrypted by tshark in a test")."""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from imsaka.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.tshark]


def tshark(pcap, keys, *extra: str) -> str:
    args = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE"]
    args += ["-o", "udp.try_heuristic_first:TRUE"]  # SIP inside ESP, whatever its ports
    for line in keys.read_text().splitlines():
        if line.strip():
            args += ["-o", f"uat:esp_sa:{line}"]
    out = subprocess.run(args + list(extra), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_demo_json_records(tmp_path):
    buf = io.StringIO()
    assert await run_demo(visited=True, as_json=True, seed=1, out=buf) == 0
    data = json.loads(buf.getvalue())
    assert data["registered"] == 1
    msgs = data["messages"]
    sip = [m for m in msgs if m["protocol"] == "sip"]
    # the reg-event subscriptions of the P-CSCF (TS 24.229 §5.2.3) and of the UE
    # (§5.1.1.3) follow the registration
    after = [m["summary"].split()[0] for m in sip[12:]]
    assert after[:1] == ["SUBSCRIBE"] and set(after) <= {"SUBSCRIBE", "200", "NOTIFY"}, after
    ue_side = [
        (m["from"], m["to"], m["summary"].split()[0], m["protected"])
        for m in sip[12:]
        if "UE" in (m["from"], m["to"])
    ]
    # the UE's SUBSCRIBE and its 200, the first NOTIFY and the UE's 200: all over ESP
    assert sorted(ue_side) == sorted(
        [
            ("UE", "P-CSCF", "SUBSCRIBE", True),
            ("P-CSCF", "UE", "200", True),
            ("P-CSCF", "UE", "NOTIFY", True),
            ("UE", "P-CSCF", "200", True),
        ]
    ), ue_side
    sip = sip[:12]
    dia = [m["summary"].split()[0] for m in msgs if m["protocol"] == "diameter"]
    assert len(sip) == 12
    assert [m["summary"].split()[0] for m in sip] == [
        "REGISTER", "REGISTER", "REGISTER", "401", "401", "401",
        "REGISTER", "REGISTER", "REGISTER", "200", "200", "200",
    ]  # fmt: skip
    assert dia == ["UAR", "UAA", "MAR", "MAA", "UAR", "UAA", "SAR", "SAA"]
    assert [m["protected"] for m in sip] == [False] * 6 + [True] + [False] * 4 + [True]
    # the 401 to the UE carries no ck/ik, the one to the P-CSCF does
    www = [dict(m["headers"]).get("WWW-Authenticate", "") for m in sip[3:6]]
    assert "ck=" in www[0] and "ck=" in www[1] and "ck=" not in www[2]
    # CK/IK crossed Mw in the clear (as the spec has it) but are not printed
    assert 'ck="<hidden>"' in www[0] and 'ik="<hidden>"' in www[1]


async def test_demo_ladder_text():
    buf = io.StringIO()
    assert await run_demo(subscribers=2, out=buf) == 0
    text = buf.getvalue()
    assert "2/2 UEs registered (IPsec ESP protected)" in text
    assert "MAR" in text and "SAR" in text and "[ESP spi=" in text
    # after packet 13: the reg-event SUBSCRIBEs and NOTIFYs (headers: one UE only)
    assert "SUBSCRIBE sip:" in text and "NOTIFY sip:" in text
    buf = io.StringIO()
    assert await run_demo(out=buf) == 0
    assert "Event: reg" in buf.getvalue()
    assert "Subscription-State: active;expires=" in buf.getvalue()


@pytest.mark.parametrize("esp", ["ip", "udp"])
async def test_demo_pcap_decrypts_in_tshark(tmp_path, esp):
    pcap, keys = tmp_path / "demo.pcap", tmp_path / "esp_sa"
    buf = io.StringIO()
    rc = await run_demo(pcap=str(pcap), pcap_esp=esp, esp_keys=str(keys), out=buf)
    assert rc == 0
    assert pcap.stat().st_size > 0 and keys.read_text().count("\n") >= 4
    if esp == "ip":
        out = tshark(
            pcap,
            keys,
            "-Y",
            "esp && sip",
            "-T",
            "fields",
            "-e",
            "esp.spi",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.Security-Verify",
        )
        rows = [r.split("\t") for r in out.splitlines() if r.strip()]
        # packet 8 (REGISTER with Security-Verify) and 13 (200 OK), decrypted
        assert any(r[1] == "REGISTER" and r[3] for r in rows), out
        assert any(r[2] == "200" for r in rows), out
    else:
        # ESP-in-UDP at the protected ports: decode-as udpencap; the decrypted
        # payload is the inner UDP header + the SIP message.
        ports = tshark(
            pcap,
            keys,
            "-Y",
            "udp && !sip",
            "-T",
            "fields",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        )
        decode = []
        for p in {x for row in ports.split() for x in [row]}:
            decode += ["-d", f"udp.port=={p},udpencap"]
        out = tshark(pcap, keys, *decode, "-Y", "esp", "-T", "fields", "-e", "esp.decrypted_data")
        plain = b"".join(bytes.fromhex(h.split(",")[0]) for h in out.split() if h)
        assert b"REGISTER sip:registrar.home1.net SIP/2.0" in plain
        assert b"SIP/2.0 200 OK" in plain and b"Security-Verify:" in plain


async def test_demo_many_ues_shows_the_first_and_a_summary(tmp_path):
    buf = io.StringIO()
    assert await run_demo(subscribers=5, out=buf, pcap=str(tmp_path / "d.pcap")) == 0
    text = buf.getvalue()
    assert "5/5 UEs registered" in text and "more messages (use --json for all)" in text
    assert "read it with: tshark -r" in text and ",diameter" in text


async def test_demo_lifecycle_with_reauthentication():
    """`--lifecycle --reauthenticate`: after the registration the UE re-registers, is
    challenged (a second AKA run, a new SA set), then de-registers (challenged too: the
    S-CSCF's "always" covers every REGISTER); the S-CSCF's terminated NOTIFY to the UE
    is answered by the UE itself, over the set held for the de-REGISTER, not by a 404
    from the P-CSCF."""
    buf = io.StringIO()
    assert await run_demo(as_json=True, seed=3, lifecycle=True, reauthenticate=True, out=buf) == 0
    msgs = json.loads(buf.getvalue())["messages"]
    sip = [m for m in msgs if m["protocol"] == "sip"]
    to_ue = [m["summary"].split()[0] for m in sip if m["to"] == "UE"]
    assert to_ue.count("401") == 3, to_ue
    # each AKA run gives the UE a new set: its protected REGISTERs use three P-CSCF SPIs
    spis = [
        m.get("esp_spi") for m in sip if m["from"] == "UE" and m["summary"].startswith("REGISTER")
    ]
    assert spis[0] is None and len(set(spis[1:])) == 3, spis
    # every message between the UE and the P-CSCF after the first 401 is protected
    gm = [m for m in sip if "UE" in (m["from"], m["to"])]
    first_401 = next(i for i, m in enumerate(gm) if m["summary"].startswith("401"))
    assert all(m["protected"] for m in gm[first_401 + 1 :]), gm[first_401 + 1 :]
    assert not [m for m in sip if m["summary"].startswith("404")]
    last = sip[-1]
    assert (last["from"], last["to"], last["summary"]) == ("P-CSCF", "S-CSCF", "200 OK")


def test_demo_reauthenticate_needs_lifecycle():
    out = subprocess.run(
        ["imsaka", "demo", "--reauthenticate"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--reauthenticate" in out.stderr and "Traceback" not in out.stderr


async def test_demo_lifecycle_summary_counts_the_new_sets():
    for reauthenticate, new_sets in ((False, 0), (True, 1)):
        buf = io.StringIO()
        assert await run_demo(lifecycle=True, reauthenticate=reauthenticate, out=buf) == 0
        summary = buf.getvalue().strip().splitlines()[-1]
        assert summary.endswith(
            f"1 re-registered ({new_sets} with a new SA set) and de-registered"
        ), summary
