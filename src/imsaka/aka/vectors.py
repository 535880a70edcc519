"""Authentication vectors (3GPP TS 33.102 §6.3.2, Figure 7).

An authentication vector is the quintet RAND, XRES, CK, IK, AUTN with
AUTN = (SQN ⊕ AK) ‖ AMF ‖ MAC-A, where MAC-A = f1_K(SQN, RAND, AMF),
XRES = f2_K(RAND), CK = f3_K(RAND), IK = f4_K(RAND), AK = f5_K(RAND).
RAND comes from `secrets` unless a source is injected (tests, replays of captures).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from imsaka.aka.milenage import Milenage, MilenageError

__all__ = [
    "MAX_SQN",
    "AuthVector",
    "generate_vector",
    "generate_vectors",
    "split_autn",
]

#: SQN is 48 bits (TS 33.102 §6.3.2).
MAX_SQN = (1 << 48) - 1

RandSource = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class AuthVector:
    """One IMS AKA authentication vector (TS 33.102 §6.3.2); XRES, CK, IK stay out of repr."""

    rand: bytes
    autn: bytes
    xres: bytes = field(repr=False)
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)
    sqn: int

    @property
    def sip_authenticate(self) -> bytes:
        """RAND ‖ AUTN, the 32 octets of the Cx SIP-Authenticate AVP and of the nonce."""
        return self.rand + self.autn


def _check_sqn(sqn: object) -> int:
    if not isinstance(sqn, int) or isinstance(sqn, bool) or not 0 <= sqn <= MAX_SQN:
        raise MilenageError("sqn: expected an integer in 0..2^48-1")
    return sqn


def _check_amf(amf: object) -> bytes:
    if not isinstance(amf, bytes | bytearray) or len(amf) != 2:
        raise MilenageError("amf: expected 2 octets")
    return bytes(amf)


def _check_rand(rand: object) -> bytes:
    if not isinstance(rand, bytes | bytearray) or len(rand) != 16:
        raise MilenageError("rand: expected 16 octets")
    return bytes(rand)


def _assemble(rand: bytes, sqn: int, amf: bytes, out: bytes) -> AuthVector:
    # out = OUT1 ‖ OUT2 ‖ OUT3 ‖ OUT4 (OPc already removed): MAC-A at 0, AK at 16,
    # RES at 24, CK at 32, IK at 48.
    ak = int.from_bytes(out[16:22], "big")
    autn = (sqn ^ ak).to_bytes(6, "big") + amf + out[0:8]
    return AuthVector(rand, autn, out[24:32], out[32:48], out[48:64], sqn)


def generate_vector(
    milenage: Milenage,
    sqn: int,
    amf: bytes,
    rand: bytes | None = None,
    *,
    rand_source: RandSource = secrets.token_bytes,
) -> AuthVector:
    """One vector for SQN. RAND is taken from ``rand`` or else from ``rand_source(16)``."""
    sqn = _check_sqn(sqn)
    amf = _check_amf(amf)
    rand = _check_rand(rand_source(16) if rand is None else rand)
    out1, out234 = milenage.vector_parts(rand, sqn.to_bytes(6, "big"), amf)
    return _assemble(rand, sqn, amf, out1 + out234)


def generate_vectors(
    milenage: Milenage,
    sqns: Iterable[int],
    amf: bytes,
    *,
    rand_source: RandSource = secrets.token_bytes,
) -> list[AuthVector]:
    """One vector per SQN in ``sqns`` (batch of n, TS 33.102 §6.3.2), each with a fresh RAND.

    The whole batch goes through the cipher in two calls.
    """
    sqns = [_check_sqn(s) for s in sqns]
    if not sqns:
        return []
    amf = _check_amf(amf)
    n = len(sqns)
    pool = rand_source(16 * n)
    if not isinstance(pool, bytes | bytearray) or len(pool) != 16 * n:
        raise MilenageError("rand: the RAND source returned the wrong number of octets")
    rands = [bytes(pool[16 * i : 16 * i + 16]) for i in range(n)]
    outs = milenage.vector_parts_batch(rands, [(s.to_bytes(6, "big"), amf) for s in sqns])
    return [
        _assemble(rand, sqn, amf, out) for rand, sqn, out in zip(rands, sqns, outs, strict=True)
    ]


def split_autn(autn: bytes) -> tuple[bytes, bytes, bytes]:
    """AUTN → (SQN ⊕ AK, AMF, MAC-A): 6, 2 and 8 octets (TS 33.102 §6.3.2)."""
    if not isinstance(autn, bytes | bytearray) or len(autn) != 16:
        raise MilenageError("autn: expected 16 octets")
    autn = bytes(autn)
    return autn[0:6], autn[6:8], autn[8:16]
