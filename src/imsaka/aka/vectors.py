"""Authentication vectors (3GPP TS 33.102 §6.3.2, Figure 7).

An authentication vector is the quintet RAND, XRES, CK, IK, AUTN with
AUTN = (SQN ⊕ AK) ‖ AMF ‖ MAC-A, where MAC-A = f1_K(SQN, RAND, AMF),
XRES = f2_K(RAND), CK = f3_K(RAND), IK = f4_K(RAND), AK = f5_K(RAND).
RAND comes from `secrets` (through `imsaka.aka.rand.secure_rand`) unless a source is injected
(tests, replays of captures).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from imsaka.aka.milenage import Milenage, MilenageError
from imsaka.aka.rand import RandSource, secure_rand

__all__ = [
    "MAX_SQN",
    "AuthVector",
    "generate_vector",
    "generate_vectors",
    "secure_rand",
    "split_autn",
]

#: SQN is 48 bits (TS 33.102 §6.3.2).
MAX_SQN = (1 << 48) - 1


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


_new_vector = object.__new__
_set_rand, _set_autn, _set_xres, _set_ck, _set_ik, _set_sqn = (
    AuthVector.__dict__[name].__set__ for name in ("rand", "autn", "xres", "ck", "ik", "sqn")
)


def _make_vector(rand: bytes, autn: bytes, xres: bytes, ck: bytes, ik: bytes, sqn: int):
    """AuthVector(...) for already-validated fields, without the frozen __init__'s cost.

    Sets the slots directly (what a frozen dataclass __init__ does through
    object.__setattr__); halves the per-vector construction time on the hot path.
    """
    v = _new_vector(AuthVector)
    _set_rand(v, rand)
    _set_autn(v, autn)
    _set_xres(v, xres)
    _set_ck(v, ck)
    _set_ik(v, ik)
    _set_sqn(v, sqn)
    return v


def _check_sqn(sqn: object) -> int:
    if type(sqn) is not int or not 0 <= sqn <= MAX_SQN:  # type(): bool is not an SQN
        raise MilenageError("sqn: expected an integer in 0..2^48-1")
    return sqn


def _check_amf(amf: object) -> bytes:
    if type(amf) is bytes and len(amf) == 2:
        return amf
    if not isinstance(amf, bytes | bytearray) or len(amf) != 2:
        raise MilenageError("amf: expected 2 octets")
    return bytes(amf)


def _check_rand(rand: object) -> bytes:
    if type(rand) is bytes and len(rand) == 16:
        return rand
    if not isinstance(rand, bytes | bytearray) or len(rand) != 16:
        raise MilenageError("rand: expected 16 octets")
    return bytes(rand)


def generate_vector(
    milenage: Milenage,
    sqn: int,
    amf: bytes,
    rand: bytes | None = None,
    *,
    rand_source: RandSource = secure_rand,
) -> AuthVector:
    """One vector for SQN. RAND is taken from ``rand`` or else from ``rand_source(16)``.

    With the default source, RAND comes prepared by `Milenage.fresh_vector`.
    """
    sqn = _check_sqn(sqn)
    amf = _check_amf(amf)
    if rand is None and rand_source is secure_rand:
        rand, autn, xres, ck, ik = milenage.fresh_vector(sqn, amf)
    else:
        rand = _check_rand(rand_source(16) if rand is None else rand)
        autn, xres, ck, ik = milenage.vector(rand, sqn, amf)
    return _make_vector(rand, autn, xres, ck, ik, sqn)


def generate_vectors(
    milenage: Milenage,
    sqns: Iterable[int],
    amf: bytes,
    *,
    rand_source: RandSource = secure_rand,
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
    parts = milenage.vectors(rands, sqns, amf)
    return [
        _make_vector(rand, autn, xres, ck, ik, sqn)
        for rand, sqn, (autn, xres, ck, ik) in zip(rands, sqns, parts, strict=True)
    ]


def split_autn(autn: bytes) -> tuple[bytes, bytes, bytes]:
    """AUTN → (SQN ⊕ AK, AMF, MAC-A): 6, 2 and 8 octets (TS 33.102 §6.3.2)."""
    if not isinstance(autn, bytes | bytearray) or len(autn) != 16:
        raise MilenageError("autn: expected 16 octets")
    autn = bytes(autn)
    return autn[0:6], autn[6:8], autn[8:16]
