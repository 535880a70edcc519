"""The seed's Appendix 1, packets 1–13, compared header by header with what crossed
the loopback sockets (home and visited case).

Values that are fresh per run or per machine are masked before comparing: Via
branches, tags, Call-ID, icid, nonce, response, SPIs and ports, the UE's address (the
seed's UE is [5555::aaa:bbb:ccc:ddd] with SigComp; ours is 127.0.0.1 without), Date,
and the content of P-Associated-URI (the implicit set is provisioning, not protocol).
Everything else — which headers each hop adds, removes and keeps, their order, the
Request-URIs, Path, Require, P-Visited-Network-ID, integrity-protected, algorithm,
Security-Server/-Verify parameters — must match.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imsaka.sip import parse_message
from imsaka.ue.client import UeClient

SEED = Path(__file__).resolve().parents[1] / "data" / "sip" / "seed"

# Our 12 SIP messages in order ↔ the seed's packet numbers (5 and 6 are the same hop).
PACKET_OF = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13]
HOPS = [
    ("UE", "P-CSCF"),
    ("P-CSCF", "I-CSCF"),
    ("I-CSCF", "S-CSCF"),
    ("S-CSCF", "I-CSCF"),
    ("I-CSCF", "P-CSCF"),
    ("P-CSCF", "UE"),
    ("UE", "P-CSCF"),
    ("P-CSCF", "I-CSCF"),
    ("I-CSCF", "S-CSCF"),
    ("S-CSCF", "I-CSCF"),
    ("I-CSCF", "P-CSCF"),
    ("P-CSCF", "UE"),
]

_MASKED_PARAMS = (
    "branch",
    "tag",
    "icid-value",
    "nonce",
    "response",
    "spi-c",
    "spi-s",
    "port-c",
    "port-s",
    "ck",
    "ik",
    "cnonce",
    "received",
    "rport",
)


def normalize(name: str, value: str, *, home: bool) -> str:
    v = " ".join(value.split())
    if home:
        v = v.replace("pcscf1.visited1.net", "pcscf1.home1.net").replace(
            '"Visited Network Number 1"', '"home1.net"'
        )
    v = v.replace("[5555::aaa:bbb:ccc:ddd]", "UE").replace("127.0.0.1", "UE")
    v = re.sub(r";\s*comp=sigcomp", "", v)
    # received/rport: RFC 3261 §18.2.1 / RFC 3581 transport facts of this run.
    v = re.sub(r";\s*(received|rport)(=[^;,\s]*)?", "", v)
    v = re.sub(r"(UE|[a-z0-9_]+\.(?:home1|visited1)\.net):\d+", r"\1", v)
    for p in _MASKED_PARAMS:
        v = re.sub(rf"\b{p}\s*=\s*(\"[^\"]*\"|[^;,\s]*)", f"{p}=*", v)
    v = re.sub(r"\s*([;,=])\s*", r"\1", v)
    lname = name.lower()
    if lname in ("call-id", "date"):
        return "*"
    if lname == "p-associated-uri":
        return "URI-LIST" if v.startswith("<") else v
    return v


def header_list(msg, *, home: bool) -> list[tuple[str, list[str]]]:
    """Header names in order of first appearance, each with all its values (list
    headers comma-split over all lines, RFC 3261 §7.3.1), normalized."""
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for name, _value in msg.header_items():
        key = name.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append((key, [normalize(name, v, home=home) for v in msg.get_all(name)]))
    return out


def seed_packet(n: int):
    raw = (SEED / f"packet{n:02d}.sip").read_bytes()
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return parse_message(text)


async def _register_seed_ue(net, sub):
    # The seed's UE offers one mechanism: hmac-sha-1-96 without ealg (null encryption).
    ue = UeClient(
        net.ue_config(sub, algorithms=("hmac-sha-1-96",), encryption=("null",)),
        observers=[net.trace],
    )
    await ue.start()
    try:
        res = await ue.register(timeout=15)
    finally:
        await ue.close()
    assert res.ok, res
    sip = list(net.trace.messages("sip"))
    # After packet 13 the P-CSCF subscribes to the reg event (TS 24.229 §5.2.3):
    # SUBSCRIBE/NOTIFY between P-CSCF and S-CSCF, not part of the seed's flow.
    after = [r.summary.split()[0] for r in sip[12:]]
    assert after[:1] == ["SUBSCRIBE"] and set(after) <= {"SUBSCRIBE", "200", "NOTIFY"}, after
    return sip[:12]


@pytest.mark.slow
async def test_packets_1_to_13_visited(visited_network, subscribers):
    net = visited_network
    records = await _register_seed_ue(net, subscribers[0])
    _compare_records(records, home=False)


@pytest.mark.slow
async def test_packets_1_to_13_home(home_network, subscribers):
    net = home_network
    records = await _register_seed_ue(net, subscribers[0])
    _compare_records(records, home=True)


def _compare_records(records, *, home: bool) -> None:
    assert [(r.src_name, r.dst_name) for r in records] == HOPS
    for rec, n in zip(records, PACKET_OF, strict=True):
        ours = _message_of(rec)
        seed = seed_packet(n)
        assert normalize("start", ours.start_line(), home=home) == normalize(
            "start", seed.start_line(), home=home
        ), n
        # Every header with every value; header order is not significant in SIP
        # (RFC 3261 §7.3.1) except among lines of one name, which get_all keeps.
        assert sorted(header_list(ours, home=home)) == sorted(header_list(seed, home=home)), (
            f"packet {n}"
        )
        if n in (1, 2, 8, 9):
            # The UE's and the P-CSCF's requests also keep the seed's order.
            assert header_list(ours, home=home) == header_list(seed, home=home), f"packet {n} order"
        if n in (8, 13):
            assert rec.esp_spi is not None, f"packet {n} must be protected"
        else:
            assert rec.esp_spi is None, f"packet {n} must be in the clear"


def _message_of(rec):
    """The SIP message of a ladder record (for ESP: the start line and headers the
    backend reported as plaintext)."""
    lines = [_start_line(rec)] + [f"{n}: {v}" for n, v in rec.headers]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def _start_line(rec) -> str:
    s = rec.summary
    if s[:3].isdigit():
        return "SIP/2.0 " + s
    method, uri = s.split(" ", 1)
    return f"{method} {uri} SIP/2.0"
