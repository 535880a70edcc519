"""ESP keys for one SA set from IK_IM / CK_IM (TS 33.203 Annex I).

The Rel-5..12 expansions (hmac-md5-96, hmac-sha-1-96, aes-cbc, des-ede3-cbc, null)
come from `imsaka.aka.keys`, the one implementation the project keeps. The Rel-13
transforms that module does not cover yet are expanded here, per Annex I as quoted in
OpenSIPS `proto_ipsec/ipsec_algo.c` (SPEC-Q):

- aes-gmac (RFC 4543): IKesp = IK_IM; salt = the 32 least significant bits of
  KDF(CK_IM ‖ IK_IM, S) with FC = 0x58, P0 = "AES_GMAC_SALT", L0 = 0x00 0x0D.
- aes-gcm (RFC 4106): CKesp = CK_IM; salt = the 32 least significant bits of
  KDF(CK_IM ‖ IK_IM, S) with FC = 0x59, P0 = "AES_GCM_SALT", L0 = 0x00 0x0C.
- KDF is TS 33.220 Annex B: HMAC-SHA-256(Key, S), S = FC ‖ P0 ‖ L0.

All four SAs of a set share these keys (TS 33.203 §7.1); they differ by SPI.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from imsaka.aka import keys as _aka_keys
from imsaka.ipsec.algorithms import ENCRYPTION, INTEGRITY, combination_allowed
from imsaka.ipsec.errors import LocalProtocolError

__all__ = ["EspKeys", "derive_esp_keys", "kdf_salt"]


def kdf_salt(ck: bytes, ik: bytes, fc: int, label: bytes) -> bytes:
    """TS 33.220 Annex B KDF over CK ‖ IK, truncated to its 32 least significant bits."""
    s = bytes([fc]) + label + len(label).to_bytes(2, "big")
    return hmac.digest(ck + ik, s, hashlib.sha256)[-4:]


@dataclass(frozen=True, slots=True)
class EspKeys:
    """Integrity key, encryption key and (GCM/GMAC) salt of one SA set. Never printed."""

    alg: str
    ealg: str
    ik_esp: bytes = field(repr=False)
    ck_esp: bytes = field(repr=False)
    salt: bytes = field(repr=False, default=b"")


def derive_esp_keys(alg: str, ealg: str, *, ik: bytes, ck: bytes) -> EspKeys:
    """Expand IK/CK into the ESP keys for (alg, ealg); raises LocalProtocolError on misuse."""
    if not combination_allowed(alg, ealg):
        raise LocalProtocolError(f"alg/ealg: unsupported combination {alg}/{ealg}")
    if len(ik) != 16 or len(ck) != 16:
        raise LocalProtocolError("ik/ck: expected 16 octets each")
    salt = b""
    if alg in _aka_keys.INTEGRITY_ALGORITHMS:
        ik_esp = _aka_keys.esp_integrity_key(alg, ik)
    elif alg == "aes-gmac":
        ik_esp = bytes(ik)
        salt = kdf_salt(ck, ik, 0x58, b"AES_GMAC_SALT")
    else:  # "null", only beside aes-gcm
        ik_esp = b""
    if ealg in _aka_keys.ENCRYPTION_ALGORITHMS:
        ck_esp = _aka_keys.esp_encryption_key(ealg, ck)
    else:  # "aes-gcm"
        ck_esp = bytes(ck)
        salt = kdf_salt(ck, ik, 0x59, b"AES_GCM_SALT")
    if len(ik_esp) != INTEGRITY[alg].key_len or len(ck_esp) != ENCRYPTION[ealg].key_len:
        raise LocalProtocolError(f"alg/ealg: key expansion gave a wrong length for {alg}/{ealg}")
    return EspKeys(alg, ealg, ik_esp, ck_esp, salt)
