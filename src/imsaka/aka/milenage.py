"""Milenage: the 3GPP example authentication algorithm set f1, f1*, f2, f3, f4, f5, f5*.

Implements 3GPP TS 35.206 §4.1 (OPc derivation) and §4.1 functions f1..f5*, with the
constants r1..r5 / c1..c5 configurable (defaults per TS 35.206 §4.1). Verified against
the TS 35.207 / TS 35.208 test sets (tests/aka/test_milenage.py).

    OPc  = E_K(OP) ⊕ OP
    TEMP = E_K(RAND ⊕ OPc)
    OUT1 = E_K(TEMP ⊕ rot(IN1 ⊕ OPc, r1) ⊕ c1) ⊕ OPc     IN1 = SQN‖AMF‖SQN‖AMF
    OUTi = E_K(rot(TEMP ⊕ OPc, ri) ⊕ ci) ⊕ OPc          i = 2..5
    f1 = OUT1[0..63]  f1* = OUT1[64..127]  f5 = OUT2[0..47]  f2 = OUT2[64..127]
    f3 = OUT3  f4 = OUT4  f5* = OUT5[0..47]

Design for speed (benchmarks/aka_vectors.py): the AES-128 ECB encryptor for K is built
once per subscriber and reused; the independent blocks OUT1..OUT4 go through the cipher
in one call; rotations of TEMP are byte slices and the OPc/c terms one precomputed
constant; `Milenage.fresh_vector` computes TEMP for 32 fresh RANDs in one call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imsaka.aka.rand import secure_rand

__all__ = [
    "DEFAULT_C",
    "DEFAULT_R",
    "Milenage",
    "MilenageError",
    "compute_opc",
]

_MASK128 = (1 << 128) - 1
#: RANDs prepared per cipher call by `Milenage.fresh_vector`.
_PREPARE = 32

#: r1..r5 in bits (TS 35.206 §4.1).
DEFAULT_R: tuple[int, int, int, int, int] = (64, 0, 32, 64, 96)
#: c1..c5 as 128-bit integers (TS 35.206 §4.1).
DEFAULT_C: tuple[int, int, int, int, int] = (0, 1, 2, 4, 8)


class MilenageError(ValueError):
    """A Milenage input of the wrong type or length; the message names the field only."""


def _octets(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MilenageError(f"{name}: expected bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != length:
        raise MilenageError(f"{name}: expected {length} octets, got {len(value)}")
    return value


def _rot(x: int, r: int) -> int:
    """Cyclic left rotation of a 128-bit value by r bits (TS 35.206 §4.1 "rot")."""
    r &= 127
    if r == 0:
        return x
    return ((x << r) | (x >> (128 - r))) & _MASK128


#: ECB holds no state (no IV): one instance serves every cipher built.
_ECB = modes.ECB()


def _encryptor(k: bytes):
    # ECB on single blocks is exactly the block cipher E_K that Milenage is defined on.
    return Cipher(algorithms.AES(k), _ECB).encryptor()


def _checked_constants(r: Sequence[int], c: Sequence[int]) -> tuple[tuple, tuple]:
    if r is DEFAULT_R and c is DEFAULT_C:  # the module's own tuples: valid already
        return r, c
    r = tuple(r)
    c = tuple(c)
    if len(r) != 5 or any(not isinstance(x, int) or not 0 <= x < 128 for x in r):
        raise MilenageError("r: expected five rotations r1..r5 in 0..127 bits")
    if len(c) != 5 or any(not isinstance(x, int) or not 0 <= x <= _MASK128 for x in c):
        raise MilenageError("c: expected five 128-bit constants c1..c5")
    return r, c


def _in_const(o: int, r: tuple, c: tuple) -> int:
    """[rot(OPc, ri) ⊕ ci] for i = 1..4 side by side (see `Milenage._compile_vector_input`)."""
    return (
        ((_rot(o, r[0]) ^ c[0]) << 384)
        | ((_rot(o, r[1]) ^ c[1]) << 256)
        | ((_rot(o, r[2]) ^ c[2]) << 128)
        | (_rot(o, r[3]) ^ c[3])
    )


#: OPc-independent part of the default constants' `_in_const`: c1..c4 (rot of OPc by the
#: default r1..r4 is folded in per subscriber by byte slices, `_default_in_const`).
_DEFAULT_C_BLOCK = (
    (DEFAULT_C[0] << 384) | (DEFAULT_C[1] << 256) | (DEFAULT_C[2] << 128) | DEFAULT_C[3]
)


def _default_in_const(opc: bytes) -> int:
    """`_in_const` for the default r1..r4 (64, 0, 32, 64 bits: whole octets) and c1..c4,
    from OPc's octets: rotations by whole octets are slices of OPc‖OPc."""
    oo = opc + opc
    return int.from_bytes(oo[8:24] + opc + oo[4:20] + oo[8:24], "big") ^ _DEFAULT_C_BLOCK


def compute_opc(k: bytes, op: bytes) -> bytes:
    """OPc = E_K(OP) ⊕ OP (TS 35.206 §4.1)."""
    k = _octets("k", k, 16)
    op = _octets("op", op, 16)
    e = _encryptor(k).update(op)
    return (int.from_bytes(e, "big") ^ int.from_bytes(op, "big")).to_bytes(16, "big")


def _default_vector_input(const: int, tb: bytes, sqn: int, amf: int) -> bytes:
    """`Milenage._compile_vector_input`'s ``build`` for the default r and c, bound to a
    subscriber's ``const`` with functools.partial (no closure to build per Milenage):
    r1 = 64 leaves SQN‖AMF‖SQN‖AMF as it is, r2..r4 (0, 32, 64) are slices of TEMP‖TEMP."""
    v = (sqn << 16) | amf
    tt = tb + tb
    x = int.from_bytes(b"".join((tb, tb, tt[4:20], tt[8:24])), "big")
    return (x ^ ((v | (v << 64)) << 384) ^ const).to_bytes(64, "big")


class Milenage:
    """Milenage for one subscriber key K and one operator variant (OP or OPc).

    Give exactly one of ``op`` (the operator's OP; OPc is derived) or ``opc`` (the
    per-subscriber OPc, what most HSSs store). ``r`` and ``c`` override the rotation
    and addition constants of TS 35.206 §4.1 (operators may choose their own).

    Not thread-safe: it keeps one cipher context for K. Use one instance per thread.
    K and OPc are kept out of ``repr``.
    """

    __slots__ = (
        "_c",
        "_enc",
        "_in_const",
        "_opc",
        "_opc4",
        "_opc_int",
        "_opc_prepare",
        "_prepared",
        "_prepared_pid",
        "_r",
        "_vector_input",
    )

    def __init__(
        self,
        k: bytes,
        *,
        op: bytes | None = None,
        opc: bytes | None = None,
        r: Sequence[int] = DEFAULT_R,
        c: Sequence[int] = DEFAULT_C,
    ) -> None:
        k = _octets("k", k, 16)
        if (op is None) == (opc is None):
            raise MilenageError("op/opc: give exactly one of op or opc")
        opc = compute_opc(k, op) if op is not None else _octets("opc", opc, 16)
        r, c = _checked_constants(r, c)
        # An HSS builds one per MAR (a fresh subscriber each time, mostly): everything
        # here is on that path, and what only `fresh_vector` needs waits for it.
        self._enc = _encryptor(k)
        self._opc = opc
        self._opc_int = int.from_bytes(opc, "big")
        self._opc4 = int.from_bytes(opc * 4, "big")
        self._r = r
        self._c = c
        if r is DEFAULT_R and c is DEFAULT_C:
            self._in_const = _default_in_const(opc)
            self._vector_input = functools.partial(_default_vector_input, self._in_const)
        else:
            self._in_const = _in_const(self._opc_int, r, c)
            self._vector_input = self._compile_vector_input()
        self._opc_prepare = 0  # `_prepare` computes it on first use
        self._prepared: list[tuple[bytes, bytes]] = []
        self._prepared_pid = 0

    def __repr__(self) -> str:
        return "Milenage(k=<hidden>, opc=<hidden>)"

    @property
    def opc(self) -> bytes:
        """OPc (given, or derived from OP)."""
        return self._opc

    # -- building blocks ------------------------------------------------------------

    def _temp(self, rand: bytes) -> int:
        """TEMP = E_K(RAND ⊕ OPc) as an int."""
        x = int.from_bytes(rand, "big") ^ self._opc_int
        return int.from_bytes(self._enc.update(x.to_bytes(16, "big")), "big")

    def _in1_block(self, temp: int, sqn: bytes, amf: bytes) -> int:
        in1 = int.from_bytes(sqn + amf + sqn + amf, "big")
        return temp ^ _rot(in1 ^ self._opc_int, self._r[0]) ^ self._c[0]

    def _out_block(self, t: int, i: int) -> int:
        """Input to E_K for OUT(i+1), i in 1..4, with t = TEMP ⊕ OPc."""
        return _rot(t, self._r[i]) ^ self._c[i]

    # -- the functions of TS 35.206 ---------------------------------------------------

    def f1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """MAC-A (network authentication code), 8 octets."""
        return self._out1(rand, sqn, amf)[:8]

    def f1star(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """MAC-S (resynchronisation authentication code), 8 octets."""
        return self._out1(rand, sqn, amf)[8:]

    def _out1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        rand = _octets("rand", rand, 16)
        sqn = _octets("sqn", sqn, 6)
        amf = _octets("amf", amf, 2)
        blk = self._in1_block(self._temp(rand), sqn, amf)
        out = int.from_bytes(self._enc.update(blk.to_bytes(16, "big")), "big")
        return (out ^ self._opc_int).to_bytes(16, "big")

    def f2345(self, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(RES, CK, IK, AK): f2 (8 octets), f3 (16), f4 (16), f5 (6)."""
        rand = _octets("rand", rand, 16)
        t = self._temp(rand) ^ self._opc_int
        blocks = (
            (self._out_block(t, 1) << 256) | (self._out_block(t, 2) << 128) | self._out_block(t, 3)
        )
        out = int.from_bytes(self._enc.update(blocks.to_bytes(48, "big")), "big")
        out ^= self._opc4 & ((1 << 384) - 1)
        o = out.to_bytes(48, "big")
        return o[8:16], o[16:32], o[32:48], o[0:6]

    def f5star(self, rand: bytes) -> bytes:
        """AK* (anonymity key for resynchronisation), 6 octets."""
        rand = _octets("rand", rand, 16)
        t = self._temp(rand) ^ self._opc_int
        blk = self._out_block(t, 4)
        out = int.from_bytes(self._enc.update(blk.to_bytes(16, "big")), "big") ^ self._opc_int
        return out.to_bytes(16, "big")[:6]

    def compute_all(self, rand: bytes, sqn: bytes, amf: bytes) -> dict[str, bytes]:
        """Every output for one (RAND, SQN, AMF): the calculator view used by the CLI.

        Keys: mac_a, mac_s, res, ck, ik, ak, ak_star.
        """
        rand = _octets("rand", rand, 16)
        sqn = _octets("sqn", sqn, 6)
        amf = _octets("amf", amf, 2)
        temp = self._temp(rand)
        t = temp ^ self._opc_int
        blocks = self._in1_block(temp, sqn, amf)
        for i in range(1, 5):
            blocks = (blocks << 128) | self._out_block(t, i)
        out = int.from_bytes(self._enc.update(blocks.to_bytes(80, "big")), "big")
        out ^= (self._opc4 << 128) | self._opc_int
        o = out.to_bytes(80, "big")
        return {
            "mac_a": o[0:8],
            "mac_s": o[8:16],
            "ak": o[16:22],
            "res": o[24:32],
            "ck": o[32:48],
            "ik": o[48:64],
            "ak_star": o[64:70],
        }

    def _compile_vector_input(self):
        """Build ``f(TEMP bytes, SQN int, AMF int) -> 64 octets``: the E_K input for OUT1..OUT4.

        Rotation is linear over ⊕, so rot(TEMP ⊕ OPc, r) ⊕ c = rot(TEMP, r) ⊕ [rot(OPc, r) ⊕ c]
        and the bracket is a per-subscriber constant (``_in_const``); when r2..r4 are whole
        octets (the defaults) rot(TEMP, r) is a byte slice, so TEMP never becomes an int.
        Constants are bound as closure locals because this runs once per vector.
        """
        const = self._in_const
        r1, r2, r3, r4 = self._r[:4]
        from_bytes = int.from_bytes
        join = b"".join

        def in1_shifted(sqn: int, amf: int) -> int:
            v = (sqn << 16) | amf
            in1 = v | (v << 64)  # SQN‖AMF‖SQN‖AMF
            return _rot(in1, r1) << 384

        if r1 % 64 == 0 and r2 % 8 == 0 and r3 % 8 == 0 and r4 % 8 == 0:
            # rot by 0 or 64 leaves SQN‖AMF‖SQN‖AMF unchanged: no rotation at all
            s2, s3, s4 = r2 // 8, r3 // 8, r4 // 8
            e2, e3, e4 = s2 + 16, s3 + 16, s4 + 16

            def build(tb: bytes, sqn: int, amf: int) -> bytes:
                v = (sqn << 16) | amf
                tt = tb + tb
                x = from_bytes(join((tb, tt[s2:e2], tt[s3:e3], tt[s4:e4])), "big")
                return (x ^ ((v | (v << 64)) << 384) ^ const).to_bytes(64, "big")

            return build

        def build_generic(tb: bytes, sqn: int, amf: int) -> bytes:
            temp = from_bytes(tb, "big")
            x = (temp << 384) | (_rot(temp, r2) << 256) | (_rot(temp, r3) << 128) | _rot(temp, r4)
            return (x ^ in1_shifted(sqn, amf) ^ const).to_bytes(64, "big")

        return build_generic

    def vector(self, rand: bytes, sqn: int, amf: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(AUTN, XRES, CK, IK) for one authentication vector, in two cipher calls.

        AUTN = (SQN ⊕ AK) ‖ AMF ‖ MAC-A (TS 33.102 §6.3.2). Hot path of
        `imsaka.aka.vectors`: RAND (16 octets), SQN (int < 2^48) and AMF (2 octets) are
        assumed already validated.
        """
        tb = self._enc.update((int.from_bytes(rand, "big") ^ self._opc_int).to_bytes(16, "big"))
        return self._vector_from_temp(tb, sqn, amf)

    def fresh_vector(self, sqn: int, amf: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """(RAND, AUTN, XRES, CK, IK) with a fresh RAND from `imsaka.aka.rand.secure_rand`.

        RANDs are drawn 32 at a time and their TEMP = E_K(RAND ⊕ OPc) computed in one
        cipher call, so a single vector costs about one cipher call instead of two. The
        prepared RANDs are dropped in a forked child, which would otherwise reuse them.
        """
        prepared = self._prepared
        if not prepared or self._prepared_pid != os.getpid():
            prepared = self._prepare()
        rand, tb = prepared.pop()
        autn, xres, ck, ik = self._vector_from_temp(tb, sqn, amf)
        return rand, autn, xres, ck, ik

    def _prepare(self) -> list[tuple[bytes, bytes]]:
        if not self._opc_prepare:
            self._opc_prepare = int.from_bytes(self._opc * _PREPARE, "big")
        pool = secure_rand(16 * _PREPARE)
        temps = self._enc.update(
            (int.from_bytes(pool, "big") ^ self._opc_prepare).to_bytes(16 * _PREPARE, "big")
        )
        self._prepared = [
            (pool[i : i + 16], temps[i : i + 16]) for i in range(0, 16 * _PREPARE, 16)
        ]
        self._prepared_pid = os.getpid()
        return self._prepared

    def _vector_from_temp(
        self, tb: bytes, sqn: int, amf: bytes
    ) -> tuple[bytes, bytes, bytes, bytes]:
        out = self._enc.update(self._vector_input(tb, sqn, (amf[0] << 8) | amf[1]))
        # = self._vector_output(out, sqn, amf), inlined: one call less per vector
        o = (int.from_bytes(out, "big") ^ self._opc4 ^ (sqn << 336)).to_bytes(64, "big")
        return o[16:22] + amf + o[0:8], o[24:32], o[32:48], o[48:64]

    def _vector_output(self, out: bytes, sqn: int, amf: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(AUTN, XRES, CK, IK) from the cipher output OUT1..OUT4 (before ⊕ OPc)."""
        # ⊕ OPc on all four blocks, and SQN onto AK (octets 16..21) to get SQN ⊕ AK.
        o = (int.from_bytes(out, "big") ^ self._opc4 ^ (sqn << 336)).to_bytes(64, "big")
        return o[16:22] + amf + o[0:8], o[24:32], o[32:48], o[48:64]

    def vectors(
        self, rands: Sequence[bytes], sqns: Sequence[int], amf: bytes
    ) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """Batch form of `vector`: two cipher calls for the whole batch."""
        n = len(rands)
        if n == 0:
            return []
        enc = self._enc.update
        opc_n = int.from_bytes(self._opc * n, "big")
        temps = enc((int.from_bytes(b"".join(rands), "big") ^ opc_n).to_bytes(16 * n, "big"))
        amf_int = int.from_bytes(amf, "big")
        vi = self._vector_input
        out = enc(b"".join([vi(temps[16 * i : 16 * i + 16], sqns[i], amf_int) for i in range(n)]))
        finish = self._vector_output
        return [finish(out[64 * i : 64 * i + 64], sqns[i], amf) for i in range(n)]
