"""A tiny pcap writer for the IPsec tests: WireEvents → IPv4 frames (LINKTYPE_RAW).

`esp_as_ip=False`: what was on the wire, ESP inside UDP (RFC 3948) at the protected
ports. `esp_as_ip=True`: each ESP packet as the payload of an IPv4 packet with
protocol 50, i.e. how kernel (xfrm) ESP looks on the wire; Wireshark then needs
nothing but the esp_sa key file to show the SIP inside.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from pathlib import Path

from imsaka.wire import WireEvent

LINKTYPE_RAW = 101


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(event: WireEvent, ident: int, esp_as_ip: bool = False) -> bytes:
    if esp_as_ip and event.protocol == "esp":
        proto, udp = 50, b""
    else:
        proto = 17
        udp = struct.pack(">HHHH", event.src[1], event.dst[1], 8 + len(event.payload), 0)
    total = 20 + len(udp) + len(event.payload)
    src = ipaddress.IPv4Address(event.src[0]).packed
    dst = ipaddress.IPv4Address(event.dst[0]).packed
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0, 64, proto, 0, src, dst)
    header = header[:10] + struct.pack(">H", _ipv4_checksum(header)) + header[12:]
    return header + udp + event.payload


def write_pcap(path: Path, events: Iterable[WireEvent], *, esp_as_ip: bool = False) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for i, event in enumerate(events):
            data = frame(event, i, esp_as_ip)
            sec = int(event.time)
            usec = int((event.time - sec) * 1_000_000)
            f.write(struct.pack("<IIII", sec, usec, len(data), len(data)))
            f.write(data)
