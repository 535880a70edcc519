"""The ladder and the pcap of a run: every SIP and Diameter message as it crossed a socket.

Implements the observer side of `imsaka.wire`: `Trace` is registered on every socket
owner (SIP transports, Diameter nodes, the IPsec backend) and receives a `WireEvent`
for each datagram or framed message sent or received. From these it renders

- the *ladder* (seed Appendix 1, packets 1–13, with the Cx UAR/MAR/SAR of
  TS 29.228/29.229 between them) as a rich column diagram or as JSON records;
- a *pcap* file (libpcap format, LINKTYPE_RAW) of loopback traffic written by imsaka
  itself: IPv4/IPv6 and UDP/TCP headers are synthesized around the real payloads, ESP
  packets are written as ESP-in-UDP (RFC 3948) at the protected ports, so Wireshark
  with the `esp_sa` key file of `imsaka.ipsec` decrypts them.

In one process both ends of a loopback exchange report the same bytes (the sender
"out", the receiver "in"); the trace keeps one copy: the "out" record, or the "in"
record when no socket of ours sent it (a real phone in `imsaka lab`).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from imsaka.wire import Address, WireEvent

__all__ = [
    "DIAMETER_COMMANDS",
    "LadderRecord",
    "PcapWriter",
    "Trace",
    "describe",
    "render_ladder",
]

# TS 29.229 §6.1 command codes, RFC 6733 §3.1 base commands: name of (code, is_request).
DIAMETER_COMMANDS: dict[int, tuple[str, str]] = {
    257: ("CER", "CEA"),
    280: ("DWR", "DWA"),
    282: ("DPR", "DPA"),
    300: ("UAR", "UAA"),
    301: ("SAR", "SAA"),
    302: ("LIR", "LIA"),
    303: ("MAR", "MAA"),
    304: ("RTR", "RTA"),
    305: ("PPR", "PPA"),
}

# AVPs worth showing on a ladder line (RFC 6733 §4.5; TS 29.229 §6.3).
_AVP_USER_NAME = 1
_AVP_RESULT_CODE = 268
_AVP_EXPERIMENTAL_RESULT = 297
_AVP_EXPERIMENTAL_RESULT_CODE = 298
_AVP_PUBLIC_IDENTITY = 601
_AVP_SERVER_NAME = 602
_AVP_SERVER_ASSIGNMENT_TYPE = 614
_AVP_DEREGISTRATION_REASON = 615
_AVP_REASON_CODE = 616
_AVP_USER_AUTHORIZATION_TYPE = 623
_AVP_SIP_NUMBER_AUTH_ITEMS = 607
_VENDOR_3GPP = 10415

# Reason-Code of an RTR's Deregistration-Reason (TS 29.229 §6.3.17)
_REASON_CODES = {
    0: "PERMANENT_TERMINATION",
    1: "NEW_SERVER_ASSIGNED",
    2: "SERVER_CHANGE",
    3: "REMOVE_S-CSCF",
}
_SAR_TYPES = {
    0: "NO_ASSIGNMENT",
    1: "REGISTRATION",
    2: "RE_REGISTRATION",
    3: "UNREGISTERED_USER",
    4: "TIMEOUT_DEREGISTRATION",
    5: "USER_DEREGISTRATION",
    8: "ADMINISTRATIVE_DEREGISTRATION",
}

# Headers a ladder shows under a SIP line (the ones the seed's packets change, and
# those that say what a reg-event SUBSCRIBE/NOTIFY is about: RFC 6665 §8.2).
LADDER_SIP_HEADERS = (
    "Authorization",
    "WWW-Authenticate",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Path",
    "Service-Route",
    "P-Associated-URI",
    "P-Visited-Network-ID",
    "P-Charging-Vector",
    "Event",
    "Subscription-State",
)


@dataclass(frozen=True, slots=True)
class LadderRecord:
    """One message of the ladder, decoded enough to print and compare."""

    seq: int
    time: float
    protocol: str  # "sip" or "diameter"
    transport: str
    src: Address
    dst: Address
    src_name: str
    dst_name: str
    summary: str  # "REGISTER sip:…", "401 Unauthorized", "MAR", "MAA 2001"
    esp_spi: int | None = None  # set when the SIP travelled inside ESP
    headers: tuple[tuple[str, str], ...] = ()  # SIP: every header line in order
    diameter: dict[str, Any] = field(default_factory=dict)
    payload: bytes = field(default=b"", repr=False)

    @property
    def protected(self) -> bool:
        return self.esp_spi is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "time": round(self.time, 6),
            "protocol": self.protocol,
            "transport": self.transport,
            "src": f"{_fmt_addr(self.src)}",
            "dst": f"{_fmt_addr(self.dst)}",
            "from": self.src_name,
            "to": self.dst_name,
            "summary": self.summary,
            "protected": self.protected,
        }
        if self.esp_spi is not None:
            out["esp_spi"] = self.esp_spi
        if self.protocol == "sip":
            out["start_line"] = self.summary
            out["headers"] = [[n, v] for n, v in self.headers]
        else:
            out["diameter"] = self.diameter
        return out


def _fmt_addr(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- decoding for display


def _split_sip(payload: bytes) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """Start line and header lines (unfolded) of a SIP message, for display only.

    The SIP stack's parser is strict and answers 400 on bad input; the ladder must show
    whatever crossed the wire, even a message the stack then rejected.
    """
    end = payload.find(b"\r\n\r\n")
    head = payload if end < 0 else payload[:end]
    try:
        text = head.decode("utf-8", "replace")
    except Exception:  # pragma: no cover - decode with "replace" does not raise
        return None
    lines = text.split("\r\n")
    if not lines or not lines[0]:
        return None
    start = lines[0]
    headers: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        headers.append([name.strip(), value.strip()])
    return start, tuple((n, v) for n, v in headers)


_KEY_PARAM = re.compile(r'\b(ck|ik)\s*=\s*"?[0-9A-Fa-f]*"?')


def mask_keys(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """CK and IK in a WWW-Authenticate (S-CSCF → P-CSCF, TS 24.229 §5.4.1.2.1) shown as
    <hidden>: keys never reach the printed ladder or JSON unless asked for."""
    out = []
    for name, value in headers:
        if name.lower() == "www-authenticate" and ("ck" in value or "ik" in value):
            value = _KEY_PARAM.sub(lambda m: f'{m.group(1)}="<hidden>"', value)
        out.append((name, value))
    return tuple(out)


def _sip_summary(start: str) -> str:
    if start.startswith("SIP/2.0 "):
        return start[8:]
    method, _, rest = start.partition(" ")
    uri = rest.rsplit(" ", 1)[0]
    return f"{method} {uri}"


def _iter_avps(data: bytes, offset: int, end: int) -> Iterable[tuple[int, int | None, bytes]]:
    while offset + 8 <= end:
        code, flags_len = struct.unpack_from("!II", data, offset)
        flags = flags_len >> 24
        length = flags_len & 0xFFFFFF
        if length < 8 or offset + length > end:
            return
        hdr = 8
        vendor = None
        if flags & 0x80:
            if length < 12:
                return
            vendor = struct.unpack_from("!I", data, offset + 8)[0]
            hdr = 12
        yield code, vendor, data[offset + hdr : offset + length]
        offset += (length + 3) & ~3


def _decode_diameter(payload: bytes) -> dict[str, Any] | None:
    """Header and a few AVPs of a Diameter message (RFC 6733 §3, §4), for display only."""
    if len(payload) < 20 or payload[0] != 1:
        return None
    length = int.from_bytes(payload[1:4], "big")
    if length < 20 or length > len(payload):
        return None
    flags = payload[4]
    code = int.from_bytes(payload[5:8], "big")
    app_id, hbh, e2e = struct.unpack_from("!III", payload, 8)
    request = bool(flags & 0x80)
    names = DIAMETER_COMMANDS.get(code)
    name = (names[0] if request else names[1]) if names else f"cmd{code}{'R' if request else 'A'}"
    info: dict[str, Any] = {
        "command": name,
        "code": code,
        "request": request,
        "application_id": app_id,
        "hop_by_hop": hbh,
        "end_to_end": e2e,
    }
    for avp_code, vendor, value in _iter_avps(payload, 20, length):
        if avp_code == _AVP_RESULT_CODE and vendor is None and len(value) == 4:
            info["result_code"] = int.from_bytes(value, "big")
        elif avp_code == _AVP_EXPERIMENTAL_RESULT:
            for sub, _v, sv in _iter_avps(value, 0, len(value)):
                if sub == _AVP_EXPERIMENTAL_RESULT_CODE and len(sv) == 4:
                    info["experimental_result_code"] = int.from_bytes(sv, "big")
        elif avp_code == _AVP_USER_NAME and vendor is None:
            info["user_name"] = value.decode("utf-8", "replace")
        elif vendor == _VENDOR_3GPP and avp_code == _AVP_PUBLIC_IDENTITY:
            info["public_identity"] = value.decode("utf-8", "replace")
        elif vendor == _VENDOR_3GPP and avp_code == _AVP_SERVER_NAME:
            info["server_name"] = value.decode("utf-8", "replace")
        elif vendor == _VENDOR_3GPP and avp_code == _AVP_SERVER_ASSIGNMENT_TYPE and len(value) == 4:
            sat = int.from_bytes(value, "big")
            info["server_assignment_type"] = _SAR_TYPES.get(sat, str(sat))
        elif vendor == _VENDOR_3GPP and avp_code == _AVP_SIP_NUMBER_AUTH_ITEMS and len(value) == 4:
            info["sip_number_auth_items"] = int.from_bytes(value, "big")
        elif (
            vendor == _VENDOR_3GPP and avp_code == _AVP_USER_AUTHORIZATION_TYPE and len(value) == 4
        ):
            info["user_authorization_type"] = int.from_bytes(value, "big")
        elif vendor == _VENDOR_3GPP and avp_code == _AVP_DEREGISTRATION_REASON:
            for sub, _v, sv in _iter_avps(value, 0, len(value)):
                if sub == _AVP_REASON_CODE and len(sv) == 4:
                    reason = int.from_bytes(sv, "big")
                    info["deregistration_reason"] = _REASON_CODES.get(reason, str(reason))
    return info


def _diameter_summary(info: dict[str, Any]) -> str:
    parts = [info["command"]]
    if "result_code" in info:
        parts.append(str(info["result_code"]))
    if "experimental_result_code" in info:
        parts.append(f"exp {info['experimental_result_code']}")
    if "server_assignment_type" in info:
        parts.append(info["server_assignment_type"])
    if "deregistration_reason" in info:
        parts.append(info["deregistration_reason"])
    if "public_identity" in info and info["request"]:
        parts.append(info["public_identity"])
    if "server_name" in info and not info["request"]:
        parts.append(info["server_name"])
    return " ".join(parts)


def describe(event: WireEvent) -> tuple[str, dict[str, Any]] | None:
    """(summary, details) of what an event carried, or None when it carries no message.

    ESP events without `inner` (an observer on the wire side only) have no message to
    show; the protected SIP inside them is shown when the backend handed it over.
    """
    if event.protocol == "diameter":
        info = _decode_diameter(event.payload)
        if info is None:
            return None
        return _diameter_summary(info), info
    data = event.inner if event.protocol == "esp" else event.payload
    if not data or data.strip(b"\r\n") == b"":  # keep-alive CRLFs carry no message
        return None
    split = _split_sip(data)
    if split is None:
        return None
    return _sip_summary(split[0]), {"start": split[0], "headers": split[1]}


# ---------------------------------------------------------------- pcap


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PcapWriter:
    """libpcap file (LINKTYPE_RAW: each record starts with an IPv4 or IPv6 header).

    TCP segments get per-direction sequence numbers that advance with the payload, so
    Wireshark reassembles Diameter and SIP over TCP; there is no handshake in the file
    (the sockets were connected before the first record), which Wireshark tolerates.
    """

    LINKTYPE_RAW = 101
    SNAPLEN = 262144

    def __init__(self, path: str | Path, *, esp: str = "udp") -> None:
        """`esp`: how ESP packets are written: ``udp`` (ESP-in-UDP at the protected
        ports, RFC 3948, as the userspace backend sends them) or ``ip`` (bare ESP,
        IP protocol 50, as the kernel backend sends them: Wireshark then needs no
        decode-as rule and dissects the decrypted SIP directly)."""
        if esp not in ("udp", "ip"):
            raise ValueError("esp: 'udp' or 'ip'")
        self.esp = esp
        self._path = Path(path)
        self._fh: IO[bytes] | None = self._path.open("wb")
        self._fh.write(
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.SNAPLEN, self.LINKTYPE_RAW)
        )
        self._tcp_seq: dict[tuple[Address, Address], int] = {}
        self._ip_id = 0
        self.packets = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def write(self, event: WireEvent) -> None:
        if self._fh is None:
            return
        packet = self._packet(event)
        if packet is None:
            return
        ts = event.time
        sec = int(ts)
        usec = round((ts - sec) * 1_000_000)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        with self._lock:
            self._fh.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)))
            self._fh.write(packet)
            self.packets += 1

    def _packet(self, event: WireEvent) -> bytes | None:
        src, dst = event.src, event.dst
        v6 = ":" in src[0]
        if (":" in dst[0]) != v6:
            return None
        if event.protocol == "esp" and self.esp == "ip":
            proto = 50
            l4 = b""
        elif event.transport == "tcp":
            proto = 6
            key = (src, dst)
            seq = self._tcp_seq.get(key, 1)
            self._tcp_seq[key] = (seq + len(event.payload)) & 0xFFFFFFFF
            ack = self._tcp_seq.get((dst, src), 1)
            l4 = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, 0x18, 65535, 0, 0)
        else:
            proto = 17
            l4 = struct.pack("!HHHH", src[1], dst[1], 8 + len(event.payload), 0)
        segment_len = len(l4) + len(event.payload)
        try:
            if v6:
                s = socket.inet_pton(socket.AF_INET6, src[0].split("%")[0])
                d = socket.inet_pton(socket.AF_INET6, dst[0].split("%")[0])
                pseudo = s + d + struct.pack("!I3xB", segment_len, proto)
            else:
                s = socket.inet_aton(src[0])
                d = socket.inet_aton(dst[0])
                pseudo = s + d + struct.pack("!xBH", proto, segment_len)
        except OSError:
            return None
        csum = _checksum(pseudo + l4 + event.payload) if l4 else 0
        if proto == 50:
            pass
        elif proto == 17:
            csum = csum or 0xFFFF
            l4 = l4[:6] + struct.pack("!H", csum)
        else:
            l4 = l4[:16] + struct.pack("!H", csum) + l4[18:]
        if v6:
            ip = struct.pack("!IHBB", 6 << 28, segment_len, proto, 64) + s + d
        else:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            total = 20 + segment_len
            hdr = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, total, self._ip_id, 0x4000, 64, proto, 0, s, d
            )
            ip = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        return ip + l4 + event.payload

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


# ---------------------------------------------------------------- the observer


class Trace:
    """Observer for every socket of a run: keeps the ladder, feeds the pcap writer.

    `names` maps socket addresses to the function owning them ("UE", "P-CSCF", …);
    unknown addresses are shown as host:port. `live` (a callable taking a
    LadderRecord) is called as each message is recorded, for `imsaka lab`.
    """

    _DEDUP_WINDOW = 4096

    def __init__(
        self,
        *,
        names: dict[Address, str] | None = None,
        pcap: PcapWriter | None = None,
        live: Any = None,
        keep: bool = True,
        show_keys: bool = False,
        max_records: int = 100_000,
    ) -> None:
        self.names: dict[Address, str] = dict(names or {})
        self.pcap = pcap
        self.live = live
        self.keep = keep
        self.show_keys = show_keys
        self.records: list[LadderRecord] = []
        self._max = max_records
        self._seq = 0
        self._recent_out: dict[tuple[Address, Address, bytes], int] = {}
        self._recent_order: deque[tuple[Address, Address, bytes]] = deque()
        self._owner_of: dict[Address, str] = {}
        # Records whose receiver had no name when recorded, by (src, dst, payload): the
        # receiver's own report names it (`_name_receiver`); bounded like the dedup.
        self._unnamed: dict[tuple[Address, Address, bytes], int] = {}
        self._lock = threading.Lock()

    def name(self, addr: Address, owner: str = "") -> str:
        key = (addr[0], addr[1])
        if key in self.names:
            return self.names[key]
        if key in self._owner_of:
            return self._owner_of[key]
        return owner or _fmt_addr(key)

    def __call__(self, event: WireEvent) -> None:
        try:
            self._observe(event)
        except Exception:  # an observer must never break the socket that reports to it
            import logging

            logging.getLogger(__name__).exception("trace observer failed")

    def _observe(self, event: WireEvent) -> None:
        key = ((event.src[0], event.src[1]), (event.dst[0], event.dst[1]), event.payload)
        with self._lock:
            if event.direction == "out":
                if event.owner:
                    self._owner_of.setdefault(key[0], _display_owner(event.owner))
                self._recent_out[key] = self._recent_out.get(key, 0) + 1
                self._recent_order.append(key)
                if len(self._recent_order) > self._DEDUP_WINDOW:
                    old = self._recent_order.popleft()
                    n = self._recent_out.get(old, 0) - 1
                    if n <= 0:
                        self._recent_out.pop(old, None)
                    else:
                        self._recent_out[old] = n
            else:
                if event.owner:
                    self._owner_of.setdefault(key[1], _display_owner(event.owner))
                n = self._recent_out.get(key, 0)
                if n:
                    # The sender (one of ours) has recorded it already; but an ESP
                    # receiver knows the plaintext the sender may not have attached,
                    # and who it is (a UE's port-s first heard of when a NOTIFY
                    # reaches it, TS 24.229 §5.1.1.3).
                    if n == 1:
                        self._recent_out.pop(key)
                    else:
                        self._recent_out[key] = n - 1
                    self._fill_inner(event)
                    if event.owner and self._unnamed:
                        self._name_receiver(key, event.owner)
                    return
        if self.pcap is not None:
            self.pcap.write(event)
        self._record(event)

    def _name_receiver(self, key: tuple[Address, Address, bytes], owner: str) -> None:
        i = self._unnamed.pop(key, None)
        if i is not None and i < len(self.records):
            self.records[i] = replace(self.records[i], dst_name=_display_owner(owner))

    def _fill_inner(self, event: WireEvent) -> None:
        if event.protocol != "esp" or not event.inner:
            return
        spi = int.from_bytes(event.payload[:4], "big") if len(event.payload) >= 4 else None
        for i in range(len(self.records) - 1, max(-1, len(self.records) - 64), -1):
            rec = self.records[i]
            if rec.esp_spi == spi and rec.payload == event.payload and rec.summary == "ESP":
                described = describe(event)
                if described is None:
                    return
                summary, info = described
                self.records[i] = LadderRecord(
                    seq=rec.seq,
                    time=rec.time,
                    protocol="sip",
                    transport=rec.transport,
                    src=rec.src,
                    dst=rec.dst,
                    src_name=rec.src_name,
                    dst_name=rec.dst_name,
                    summary=summary,
                    esp_spi=spi,
                    headers=info["headers"] if self.show_keys else mask_keys(info["headers"]),
                    payload=rec.payload,
                )
                return

    def _record(self, event: WireEvent) -> None:
        described = describe(event)
        spi = None
        if event.protocol == "esp":
            spi = int.from_bytes(event.payload[:4], "big") if len(event.payload) >= 4 else 0
            if described is None:
                described = ("ESP", {"start": "ESP", "headers": ()})
        if described is None:
            return
        summary, info = described
        with self._lock:
            self._seq += 1
            record = LadderRecord(
                seq=self._seq,
                time=event.time,
                protocol="diameter" if event.protocol == "diameter" else "sip",
                transport=event.transport,
                src=event.src,
                dst=event.dst,
                src_name=self.name(
                    event.src, _display_owner(event.owner) if event.direction == "out" else ""
                ),
                dst_name=self.name(
                    event.dst, _display_owner(event.owner) if event.direction == "in" else ""
                ),
                summary=summary,
                esp_spi=spi,
                headers=(
                    ()
                    if event.protocol == "diameter"
                    else info.get("headers", ())
                    if self.show_keys
                    else mask_keys(info.get("headers", ()))
                ),
                diameter=info if event.protocol == "diameter" else {},
                payload=event.payload,
            )
            if self.keep and len(self.records) < self._max:
                self.records.append(record)
                dst = (event.dst[0], event.dst[1])
                if event.direction == "out" and dst not in self.names and dst not in self._owner_of:
                    unnamed = self._unnamed
                    if len(unnamed) >= self._DEDUP_WINDOW:
                        unnamed.clear()  # receivers that never reported: forget them
                    unnamed[((event.src[0], event.src[1]), dst, event.payload)] = (
                        len(self.records) - 1
                    )
        if self.live is not None:
            self.live(record)

    def messages(
        self, protocol: str | None = None, *, skip_base: bool = True
    ) -> list[LadderRecord]:
        """Recorded messages; Diameter base commands (CER/DWR/DPR) left out by default."""
        out = []
        for rec in self.records:
            if protocol and rec.protocol != protocol:
                continue
            if (
                skip_base
                and rec.protocol == "diameter"
                and rec.diameter.get("code") in (257, 280, 282)
            ):
                continue
            out.append(rec)
        return out

    def to_json(self, *, skip_base: bool = True) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.messages(skip_base=skip_base)]

    def close(self) -> None:
        if self.pcap is not None:
            self.pcap.close()


def _display_owner(owner: str) -> str:
    return {
        "ue": "UE",
        "pcscf": "P-CSCF",
        "icscf": "I-CSCF",
        "scscf": "S-CSCF",
        "hss": "HSS",
    }.get(owner, owner)


# ---------------------------------------------------------------- rendering


def _columns(records: list[LadderRecord], order: Iterable[str]) -> list[str]:
    cols: list[str] = []
    for name in order:
        if name not in cols:
            cols.append(name)
    for rec in records:
        for name in (rec.src_name, rec.dst_name):
            if name not in cols:
                cols.append(name)
    return cols


def render_ladder(
    records: list[LadderRecord],
    *,
    order: Iterable[str] = ("UE", "P-CSCF", "I-CSCF", "S-CSCF", "HSS"),
    headers: bool = False,
    width: int = 16,
) -> list[str]:
    """The ladder as plain text lines (rich markup-free), one arrow per message."""
    cols = _columns(records, order)
    index = {name: i for i, name in enumerate(cols)}
    lines = ["     " + "".join(name.center(width) for name in cols)]
    for number, rec in enumerate(records, 1):
        a, b = index[rec.src_name], index[rec.dst_name]
        cells = [" " * (width // 2) + "│" + " " * (width - width // 2 - 1) for _ in cols]
        row = list("".join(cells))
        lo, hi = min(a, b), max(a, b)
        start = lo * width + width // 2
        end = hi * width + width // 2
        for x in range(start + 1, end):
            row[x] = "─"
        if a < b:
            row[end - 1] = "▶"
        elif a > b:
            row[start + 1] = "◀"
        label = rec.summary
        if rec.protocol == "sip" and rec.esp_spi is not None:
            label += f"  [ESP spi={rec.esp_spi}]"
        elif rec.protocol == "sip":
            label += "  [clear]"
        arrow = "".join(row).rstrip()
        lines.append(f"{number:>3}  {arrow}  {label}")
        if headers and rec.protocol == "sip":
            for name, value in rec.headers:
                if name.lower() in {h.lower() for h in LADDER_SIP_HEADERS}:
                    lines.append(" " * 8 + f"{name}: {value}")
    return lines


def print_ladder(
    records: list[LadderRecord],
    *,
    console: Any = None,
    headers: bool = True,
    order: Iterable[str] = ("UE", "P-CSCF", "I-CSCF", "S-CSCF", "HSS"),
) -> None:
    """Print the ladder with rich colours (SIP cyan, protected SIP green, Diameter magenta)."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console(highlight=False, soft_wrap=True)
    cols = _columns(records, order)
    lines = render_ladder(records, order=cols, headers=False)
    console.print(Text(lines[0], style="bold"))
    for rec, line in zip(records, lines[1:], strict=True):
        style = "magenta" if rec.protocol == "diameter" else ("green" if rec.protected else "cyan")
        console.print(Text(line, style=style))
        if headers and rec.protocol == "sip":
            wanted = {h.lower() for h in LADDER_SIP_HEADERS}
            for name, value in rec.headers:
                if name.lower() in wanted:
                    console.print(Text(" " * 8 + f"{name}: {value}", style="dim"))


def dump_json(records: list[LadderRecord], fh: IO[str]) -> None:
    json.dump([r.to_json() for r in records], fh, indent=1)
    fh.write("\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
