"""Resynchronisation: AUTS (3GPP TS 33.102 §6.3.3, §6.3.5).

ISIM side (§6.3.3): on an SQN out of range the USIM answers with
AUTS = (SQN_MS ⊕ AK*) ‖ MAC-S, where AK* = f5*_K(RAND) and
MAC-S = f1*_K(SQN_MS ‖ RAND ‖ AMF*), with the dummy AMF* = 0x0000 (never the
subscriber's AMF), so that AUTS can never be replayed as an AUTN.

HSS side (§6.3.5): recover SQN_MS = (SQN_MS ⊕ AK*) ⊕ f5*_K(RAND), recompute MAC-S
and refuse the AUTS when it differs (a forged AUTS must never move SQN_HE).
The new SQN_HE is then `imsaka.aka.sqn.resync_sqn_he`.
"""

from __future__ import annotations

import hmac

from imsaka.aka.milenage import Milenage

__all__ = ["AMF_STAR", "AutsError", "AutsMacError", "build_auts", "recover_sqn_ms"]

#: The dummy AMF used for MAC-S (TS 33.102 §6.3.3).
AMF_STAR = b"\x00\x00"


class AutsError(ValueError):
    """A malformed AUTS or RAND (wrong length or type); names the field."""


class AutsMacError(AutsError):
    """MAC-S in AUTS does not verify: the AUTS is forged or made with another K/OPc."""

    def __init__(self) -> None:
        super().__init__("auts: MAC-S check failed")


def _octets(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise AutsError(f"{name}: expected {length} octets")
    return bytes(value)


def build_auts(milenage: Milenage, rand: bytes, sqn_ms: int) -> bytes:
    """AUTS (14 octets) for SQN_MS, as the ISIM sends it after a synchronisation failure."""
    rand = _octets("rand", rand, 16)
    if not isinstance(sqn_ms, int) or isinstance(sqn_ms, bool) or not 0 <= sqn_ms < 1 << 48:
        raise AutsError("sqn_ms: expected an integer in 0..2^48-1")
    sqn6 = sqn_ms.to_bytes(6, "big")
    ak_star = int.from_bytes(milenage.f5star(rand), "big")
    mac_s = milenage.f1star(rand, sqn6, AMF_STAR)
    return (sqn_ms ^ ak_star).to_bytes(6, "big") + mac_s


def recover_sqn_ms(milenage: Milenage, rand: bytes, auts: bytes) -> int:
    """SQN_MS from RAND and AUTS after verifying MAC-S; raises `AutsMacError` if forged."""
    rand = _octets("rand", rand, 16)
    auts = _octets("auts", auts, 14)
    ak_star = int.from_bytes(milenage.f5star(rand), "big")
    sqn_ms = int.from_bytes(auts[:6], "big") ^ ak_star
    xmac_s = milenage.f1star(rand, sqn_ms.to_bytes(6, "big"), AMF_STAR)
    if not hmac.compare_digest(xmac_s, auts[6:]):
        raise AutsMacError()
    return sqn_ms
