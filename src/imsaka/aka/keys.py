"""ESP key expansion from the IMS AKA session keys (3GPP TS 33.203 Annex I, Annex H).

The integrity key of the SAs comes from IK, the encryption key from CK:

- ``hmac-md5-96``: IK as is (128 bits).
- ``hmac-sha-1-96``: IK followed by 32 zero bits (160 bits), because HMAC-SHA-1-96
  (RFC 2404) takes a 160-bit key.
- ``aes-cbc``: CK as is (128 bits, RFC 3602 AES-128).
- ``des-ede3-cbc``: CK1 ‖ CK2 ‖ CK1 with CK = CK1 ‖ CK2 (64 bits each), i.e. a
  two-key 3DES key; DES parity bits are ignored by the cipher, so none are set.
- ``null``: no key.
"""

from __future__ import annotations

__all__ = [
    "ENCRYPTION_ALGORITHMS",
    "INTEGRITY_ALGORITHMS",
    "KeyExpansionError",
    "esp_encryption_key",
    "esp_integrity_key",
]

INTEGRITY_ALGORITHMS = ("hmac-md5-96", "hmac-sha-1-96")
ENCRYPTION_ALGORITHMS = ("aes-cbc", "des-ede3-cbc", "null")


class KeyExpansionError(ValueError):
    """Unknown algorithm or a key of the wrong length; names the field, never the key."""


def _key16(name: str, key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != 16:
        raise KeyExpansionError(f"{name}: expected 16 octets")
    return bytes(key)


def esp_integrity_key(alg: str, ik: bytes) -> bytes:
    """The ESP authentication key for Security-Client/Server ``alg`` (TS 33.203 Annex I)."""
    ik = _key16("ik", ik)
    if alg == "hmac-md5-96":
        return ik
    if alg == "hmac-sha-1-96":
        return ik + bytes(4)
    raise KeyExpansionError(f"alg: unsupported integrity algorithm {alg!r}")


def esp_encryption_key(ealg: str, ck: bytes) -> bytes:
    """The ESP encryption key for Security-Client/Server ``ealg`` (TS 33.203 Annex I)."""
    ck = _key16("ck", ck)
    if ealg == "aes-cbc":
        return ck
    if ealg == "des-ede3-cbc":
        return ck + ck[:8]
    if ealg == "null":
        return b""
    raise KeyExpansionError(f"ealg: unsupported encryption algorithm {ealg!r}")
