"""Sequence number management: SQN = SEQ ‖ IND (3GPP TS 33.102 Annex C.1–C.3).

SQN is 48 bits; IND is its ``ind_bits`` least significant bits (5 by default, Annex
C.3.2, array size a = 2^5 = 32), SEQ the rest.

HSS side (C.1): one counter SQN_HE per subscriber. Each new vector takes SEQ_HE + 1;
IND is either chosen by the caller (per serving node, C.1.2) or cycled modulo a, so
vectors handed out in a batch land in different array entries of the ISIM and can be
used in any order. SEQ never wraps: a SEQ past its maximum would be rejected by every
ISIM (SEQ ≤ SEQ_MS), so the HSS refuses with `SqnExhaustedError` instead of wrapping.
IND wraps modulo a by design.

ISIM side (C.2): an array SEQ_MS(0..a−1), all zero at first. A received SQN is fresh
when SEQ > SEQ_MS(IND) (C.2.2); the USIM also refuses jumps SEQ − SEQ_MS > Δ (C.2.1,
which keeps SEQ_MS from ever being driven to SEQmax, i.e. the wrap-around protection)
and, optionally, old values SEQ_MS − SEQ ≥ L (C.2.2). SEQ_MS / SQN_MS is the highest
SQN accepted anywhere in the array; it goes into AUTS on a synchronisation failure.
Profile values (C.3.1): Δ = 2^28.

Resynchronisation at the HSS (TS 33.102 §6.3.5): keep SQN_HE if the next SQN it would
generate is acceptable after SQN_MS; otherwise SQN_HE := SQN_MS.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_IND_BITS",
    "HssSqn",
    "SqnArray",
    "SqnError",
    "SqnExhaustedError",
    "SqnVerdict",
    "join_sqn",
    "next_sqn",
    "resync_sqn_he",
    "split_sqn",
]

SQN_BITS = 48
MAX_SQN = (1 << SQN_BITS) - 1
DEFAULT_IND_BITS = 5
DEFAULT_DELTA = 1 << 28


class SqnError(ValueError):
    """An SQN, SEQ, IND or parameter out of range; the message names the field."""


class SqnExhaustedError(SqnError):
    """SEQ_HE has reached its maximum; no further fresh SQN exists for this subscriber."""


def _check_ind_bits(ind_bits: int) -> int:
    if not isinstance(ind_bits, int) or not 0 <= ind_bits <= 16:
        raise SqnError("ind_bits: expected 0..16")
    return ind_bits


def _check_sqn(name: str, sqn: object) -> int:
    if not isinstance(sqn, int) or isinstance(sqn, bool) or not 0 <= sqn <= MAX_SQN:
        raise SqnError(f"{name}: expected an integer in 0..2^48-1")
    return sqn


def split_sqn(sqn: int, ind_bits: int = DEFAULT_IND_BITS) -> tuple[int, int]:
    """SQN → (SEQ, IND)."""
    sqn = _check_sqn("sqn", sqn)
    ind_bits = _check_ind_bits(ind_bits)
    return sqn >> ind_bits, sqn & ((1 << ind_bits) - 1)


def join_sqn(seq: int, ind: int, ind_bits: int = DEFAULT_IND_BITS) -> int:
    """(SEQ, IND) → SQN = SEQ ‖ IND."""
    ind_bits = _check_ind_bits(ind_bits)
    if not isinstance(seq, int) or not 0 <= seq < (1 << (SQN_BITS - ind_bits)):
        raise SqnError(f"seq: expected 0..2^{SQN_BITS - ind_bits}-1")
    if not isinstance(ind, int) or not 0 <= ind < (1 << ind_bits):
        raise SqnError(f"ind: expected 0..{(1 << ind_bits) - 1}")
    return (seq << ind_bits) | ind


def next_sqn(sqn_he: int, *, ind_bits: int = DEFAULT_IND_BITS, ind: int | None = None) -> int:
    """The SQN of the next vector after SQN_HE: SEQ_HE + 1, with IND given or cycled.

    Raises `SqnExhaustedError` when SEQ_HE is already at its maximum.
    """
    _check_sqn("sqn_he", sqn_he)
    _check_ind_bits(ind_bits)
    return _advance(sqn_he, ind_bits, ind)


def _advance(sqn_he: int, ind_bits: int, ind: int | None) -> int:
    # sqn_he and ind_bits already valid (hot path of HssSqn.next)
    mask = (1 << ind_bits) - 1
    seq = (sqn_he >> ind_bits) + 1
    if seq >> (SQN_BITS - ind_bits):
        raise SqnExhaustedError("sqn: SEQ_HE is at its maximum; the subscriber needs a new K")
    if ind is None:
        ind = ((sqn_he & mask) + 1) & mask
    elif type(ind) is not int or not 0 <= ind <= mask:
        raise SqnError(f"ind: expected 0..{mask}")
    return (seq << ind_bits) | ind


def resync_sqn_he(
    sqn_he: int,
    sqn_ms: int,
    *,
    ind_bits: int = DEFAULT_IND_BITS,
    delta: int = DEFAULT_DELTA,
) -> int:
    """SQN_HE after a verified resynchronisation with SQN_MS (TS 33.102 §6.3.5).

    SQN_HE stays if the next SQN generated from it would be accepted after SQN_MS
    (SEQ above SEQ_MS, by at most Δ); otherwise it becomes SQN_MS, so that the next
    vector (SEQ_MS + 1) is fresh in every array entry.
    """
    _check_sqn("sqn_he", sqn_he)
    _check_sqn("sqn_ms", sqn_ms)
    seq_he, _ = split_sqn(sqn_he, ind_bits)
    seq_ms, _ = split_sqn(sqn_ms, ind_bits)
    if seq_ms < seq_he + 1 <= seq_ms + delta:
        return sqn_he
    return sqn_ms


class HssSqn:
    """The HE's counter SQN_HE for one subscriber (TS 33.102 Annex C.1), held in memory.

    The HSS store keeps SQN_HE in its database and uses `next_sqn` / `resync_sqn_he`
    inside one transaction; this class is the same logic for in-process use
    (demo, tests, the UE's own view).
    """

    __slots__ = ("delta", "ind_bits", "sqn_he")

    def __init__(
        self,
        sqn_he: int = 0,
        *,
        ind_bits: int = DEFAULT_IND_BITS,
        delta: int = DEFAULT_DELTA,
    ) -> None:
        self.sqn_he = _check_sqn("sqn_he", sqn_he)
        self.ind_bits = _check_ind_bits(ind_bits)
        if not isinstance(delta, int) or delta < 1:
            raise SqnError("delta: expected a positive integer")
        self.delta = delta

    def __repr__(self) -> str:
        return f"HssSqn(sqn_he={self.sqn_he:#014x}, ind_bits={self.ind_bits})"

    def next(self, ind: int | None = None) -> int:
        """Advance SQN_HE and return the SQN for one new vector."""
        self.sqn_he = sqn = _advance(self.sqn_he, self.ind_bits, ind)
        return sqn

    def take(self, n: int, ind: int | None = None) -> list[int]:
        """SQNs for a batch of n vectors (each one fresh, strictly increasing SEQ)."""
        if not isinstance(n, int) or n < 0:
            raise SqnError("n: expected a non-negative integer")
        return [self.next(ind) for _ in range(n)]

    def resync(self, sqn_ms: int) -> int:
        """Apply a verified SQN_MS (TS 33.102 §6.3.5); returns the new SQN_HE."""
        self.sqn_he = resync_sqn_he(self.sqn_he, sqn_ms, ind_bits=self.ind_bits, delta=self.delta)
        return self.sqn_he


class SqnVerdict(enum.Enum):
    """Outcome of the ISIM's freshness check (TS 33.102 Annex C.2)."""

    FRESH = "fresh"
    REPLAYED = "replayed"  # SEQ ≤ SEQ_MS(IND): C.2.2
    TOO_FAR_AHEAD = "too-far-ahead"  # SEQ − SEQ_MS > Δ: C.2.1
    TOO_OLD = "too-old"  # SEQ_MS − SEQ ≥ L: C.2.2 optional limit


class SqnArray:
    """The ISIM's array SEQ_MS(0..a−1) with the Δ and optional L checks (Annex C.2)."""

    __slots__ = ("_highest", "_seq", "delta", "ind_bits", "limit")

    def __init__(
        self,
        *,
        ind_bits: int = DEFAULT_IND_BITS,
        delta: int = DEFAULT_DELTA,
        limit: int | None = None,
        entries: Iterable[int] | None = None,
    ) -> None:
        self.ind_bits = _check_ind_bits(ind_bits)
        if not isinstance(delta, int) or delta < 1:
            raise SqnError("delta: expected a positive integer")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise SqnError("limit: expected a positive integer or None")
        self.delta = delta
        self.limit = limit
        size = 1 << ind_bits
        seq_max = (1 << (SQN_BITS - ind_bits)) - 1
        if entries is None:
            self._seq = [0] * size
        else:
            self._seq = list(entries)
            if len(self._seq) != size or any(
                not isinstance(s, int) or not 0 <= s <= seq_max for s in self._seq
            ):
                raise SqnError(f"entries: expected {size} SEQ values in 0..{seq_max}")
        self._highest = max(range(size), key=lambda i: (self._seq[i], -i))

    def __repr__(self) -> str:
        return f"SqnArray(sqn_ms={self.sqn_ms:#014x}, ind_bits={self.ind_bits}, delta={self.delta}, limit={self.limit})"

    @property
    def entries(self) -> tuple[int, ...]:
        """SEQ_MS(0..a−1), e.g. to persist the UE's ISIM state."""
        return tuple(self._seq)

    @property
    def seq_ms(self) -> int:
        """The highest SEQ accepted anywhere in the array."""
        return self._seq[self._highest]

    @property
    def sqn_ms(self) -> int:
        """SQN_MS: the highest previously accepted SQN (SEQ ‖ IND), sent in AUTS."""
        return (self._seq[self._highest] << self.ind_bits) | self._highest

    def check(self, sqn: int) -> SqnVerdict:
        """Freshness of SQN without changing the array."""
        seq, ind = split_sqn(sqn, self.ind_bits)
        seq_ms = self.seq_ms
        if seq - seq_ms > self.delta:
            return SqnVerdict.TOO_FAR_AHEAD
        if self.limit is not None and seq_ms - seq >= self.limit:
            return SqnVerdict.TOO_OLD
        if seq <= self._seq[ind]:
            return SqnVerdict.REPLAYED
        return SqnVerdict.FRESH

    def accept(self, sqn: int) -> SqnVerdict:
        """Check SQN and, when fresh, record it: SEQ_MS(IND) := SEQ."""
        verdict = self.check(sqn)
        if verdict is SqnVerdict.FRESH:
            seq, ind = split_sqn(sqn, self.ind_bits)
            self._seq[ind] = seq
            if seq > self._seq[self._highest]:
                self._highest = ind
        return verdict
