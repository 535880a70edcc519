"""Wireshark ``esp_sa`` key file (the ESP dissector's "ESP SAs" UAT).

One line per SA, eight double-quoted, comma-separated fields, in the order of the
UAT in Wireshark's ``epan/dissectors/packet-ipsec.c`` (checked with tshark 4.0.17):

    "IPv4","<src ip>","<dst ip>","0x<spi, 8 hex>","<encryption>","0x<key>","<authentication>","0x<key>"

Encryption/authentication are Wireshark's value strings (`algorithms.ENCRYPTION[..].wireshark`).
For AES-GCM Wireshark takes key ‖ 4-octet salt as the encryption key. A capture
decrypts with this file in the profile (or via ``-o "uat:esp_sa:<line>"``), with
``-o esp.enable_encryption_decode:TRUE`` and the decode rule ``-d udp.port==P,udpencap``
for each protected port P (see readme-ipsec.md). The file holds keys: it is written
only on request, with mode 0600, and rewritten atomically on every change.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from imsaka.ipsec.algorithms import ENCRYPTION, INTEGRITY
from imsaka.ipsec.sa import SecurityAssociation

__all__ = ["esp_sa_line", "esp_sa_lines", "write_esp_sa_file"]


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def esp_sa_line(sa: SecurityAssociation) -> str:
    keys = sa.sa_set.keys
    enc = ENCRYPTION[keys.ealg]
    integ = INTEGRITY[keys.alg]
    enc_key = keys.ck_esp + (keys.salt if enc.aead else b"")
    auth_key = keys.ik_esp if keys.alg not in ("null", "aes-gmac") else b""
    fields = (
        _family(sa.src[0]),
        sa.src[0],
        sa.dst[0],
        f"0x{sa.spi:08x}",
        enc.wireshark,
        "0x" + enc_key.hex() if enc_key else "",
        integ.wireshark,
        "0x" + auth_key.hex() if auth_key else "",
    )
    return ",".join(f'"{f}"' for f in fields)


def esp_sa_lines(sas: Iterable[SecurityAssociation]) -> list[str]:
    return [esp_sa_line(sa) for sa in sas]


def write_esp_sa_file(path: str | os.PathLike[str], sas: Iterable[SecurityAssociation]) -> None:
    """Replace `path` with the current SAs (atomic rename, mode 0600)."""
    target = Path(path)
    text = "".join(line + "\n" for line in esp_sa_lines(sas))
    fd, tmp = tempfile.mkstemp(prefix=".esp_sa.", dir=target.parent or ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
