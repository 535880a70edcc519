"""A minimal pcap writer for the Diameter tests: WireEvents → IPv4/TCP packets.

Each WireEvent is one framed Diameter message; it is written as one TCP segment with
sequence numbers that continue per direction, so tshark reads a clean stream.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from imsaka.wire import WireEvent

LINKTYPE_RAW = 101


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcap(path: Path, events: list[WireEvent]) -> None:
    seq: dict[tuple, int] = {}
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for ev in events:
            key = (ev.src, ev.dst)
            back = (ev.dst, ev.src)
            s = seq.setdefault(key, 1000)
            a = seq.setdefault(back, 1000)
            tcp = struct.pack("!HHIIBBHHH", ev.src[1], ev.dst[1], s, a, 5 << 4, 0x18, 65535, 0, 0)
            src, dst = socket.inet_aton(ev.src[0]), socket.inet_aton(ev.dst[0])
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp) + len(ev.payload))
            csum = _checksum(pseudo + tcp + ev.payload)
            tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
            total = 20 + len(tcp) + len(ev.payload)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            packet = ip + tcp + ev.payload
            sec = int(ev.time)
            f.write(struct.pack("<IIII", sec, int((ev.time - sec) * 1e6), len(packet), len(packet)))
            f.write(packet)
            seq[key] = s + len(ev.payload)
