"""The ISIM's side of AKA: check AUTN, answer RES/CK/IK or AUTS (3GPP TS 33.102 §6.3.3).

Given RAND and AUTN = (SQN ⊕ AK) ‖ AMF ‖ MAC-A the ISIM:

1. computes AK = f5(RAND), SQN, and XMAC = f1(SQN, RAND, AMF); XMAC ≠ MAC-A → MAC
   failure (the network is not authentic, or its K/OPc differs from ours);
2. applies the ``accept_amf`` policy to AMF (e.g. the AMF separation bit, bit 0 =
   0x8000 of TS 33.102 Annex H); a refused AMF is reported like a MAC failure with
   reason ``"amf"``;
3. checks SQN freshness in its `SqnArray` (Annex C.2); out of range → synchronisation
   failure with AUTS built from SQN_MS (§6.3.3, `imsaka.aka.resync.build_auts`);
4. otherwise records SQN and returns RES = f2, CK = f3, IK = f4.

The three outcomes are frozen dataclasses; RES, CK and IK stay out of their repr.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import build_auts
from imsaka.aka.sqn import SqnArray, SqnVerdict

__all__ = [
    "AMF_SEPARATION_BIT",
    "AkaMacFailure",
    "AkaResult",
    "AkaSuccess",
    "AkaSyncFailure",
    "Isim",
    "IsimError",
    "accept_any_amf",
    "require_separation_bit",
    "separation_bit",
]

#: Bit 0 of AMF (its most significant bit), TS 33.102 Annex H.
AMF_SEPARATION_BIT = 0x8000


class IsimError(ValueError):
    """RAND or AUTN of the wrong type or length; names the field."""


def separation_bit(amf: bytes) -> bool:
    """True when the AMF separation bit is set."""
    return bool(int.from_bytes(amf, "big") & AMF_SEPARATION_BIT)


def accept_any_amf(amf: bytes) -> bool:
    """The default policy: IMS AKA itself places no requirement on AMF."""
    return True


def require_separation_bit(amf: bytes) -> bool:
    """Policy for vectors that must also serve EPS/5G: separation bit set."""
    return separation_bit(amf)


@dataclass(frozen=True, slots=True)
class AkaSuccess:
    """AUTN verified and SQN fresh: the answer to put in the digest, and the session keys."""

    res: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)
    sqn: int = 0


@dataclass(frozen=True, slots=True)
class AkaMacFailure:
    """The network failed authentication (MAC-A wrong, or AMF refused by policy)."""

    reason: str = "mac"  # "mac" | "amf"


@dataclass(frozen=True, slots=True)
class AkaSyncFailure:
    """MAC-A verified but SQN out of range: send AUTS (RFC 3310 ``auts``)."""

    auts: bytes
    verdict: SqnVerdict = SqnVerdict.REPLAYED
    sqn_ms: int = 0


AkaResult = AkaSuccess | AkaMacFailure | AkaSyncFailure
AmfPolicy = Callable[[bytes], bool] | Collection[bytes]


class Isim:
    """The AKA part of an ISIM for one subscriber: Milenage (K, OPc) and the SQN array."""

    __slots__ = ("_accept_amf", "milenage", "sqn_array")

    def __init__(
        self,
        milenage: Milenage,
        sqn_array: SqnArray | None = None,
        accept_amf: AmfPolicy = accept_any_amf,
    ) -> None:
        self.milenage = milenage
        self.sqn_array = sqn_array if sqn_array is not None else SqnArray()
        if callable(accept_amf):
            self._accept_amf = accept_amf
        else:
            allowed = frozenset(bytes(a) for a in accept_amf)
            if any(len(a) != 2 for a in allowed):
                raise IsimError("accept_amf: expected 2-octet AMF values")
            self._accept_amf = allowed.__contains__

    def __repr__(self) -> str:
        return f"Isim({self.milenage!r}, {self.sqn_array!r})"

    def authenticate(self, rand: bytes, autn: bytes) -> AkaResult:
        """Run the USIM/ISIM authentication of TS 33.102 §6.3.3 on RAND and AUTN."""
        if not isinstance(rand, bytes | bytearray) or len(rand) != 16:
            raise IsimError("rand: expected 16 octets")
        if not isinstance(autn, bytes | bytearray) or len(autn) != 16:
            raise IsimError("autn: expected 16 octets")
        rand = bytes(rand)
        autn = bytes(autn)
        m = self.milenage
        res, ck, ik, ak = m.f2345(rand)
        sqn = int.from_bytes(autn[0:6], "big") ^ int.from_bytes(ak, "big")
        amf = autn[6:8]
        xmac = m.f1(rand, sqn.to_bytes(6, "big"), amf)
        if not hmac.compare_digest(xmac, autn[8:16]):
            return AkaMacFailure("mac")
        if not self._accept_amf(amf):
            return AkaMacFailure("amf")
        verdict = self.sqn_array.accept(sqn)
        if verdict is not SqnVerdict.FRESH:
            sqn_ms = self.sqn_array.sqn_ms
            return AkaSyncFailure(build_auts(m, rand, sqn_ms), verdict, sqn_ms)
        return AkaSuccess(res, ck, ik, sqn)
