"""SQN = SEQ ‖ IND management (TS 33.102 Annex C)."""

from __future__ import annotations

import pytest

from imsaka.aka.sqn import (
    DEFAULT_DELTA,
    HssSqn,
    SqnArray,
    SqnError,
    SqnExhaustedError,
    SqnVerdict,
    join_sqn,
    next_sqn,
    resync_sqn_he,
    split_sqn,
)


def test_split_join():
    assert split_sqn(0x21) == (1, 1)
    assert join_sqn(1, 1) == 0x21
    assert split_sqn(0xFFFFFFFFFFFF) == ((1 << 43) - 1, 31)
    assert split_sqn(0x123, ind_bits=0) == (0x123, 0)
    for bad in (-1, 1 << 48, "1", True):
        with pytest.raises(SqnError, match=r"^sqn:"):
            split_sqn(bad)
    with pytest.raises(SqnError, match=r"^ind:"):
        join_sqn(1, 32)
    with pytest.raises(SqnError, match=r"^seq:"):
        join_sqn(1 << 43, 0)
    with pytest.raises(SqnError, match=r"^ind_bits:"):
        split_sqn(1, ind_bits=17)


def test_next_sqn_increments_seq_and_cycles_ind():
    sqn = 0
    seen = []
    for _ in range(40):
        sqn = next_sqn(sqn)
        seen.append(split_sqn(sqn))
    assert [s for s, _ in seen] == list(range(1, 41))
    assert [i for _, i in seen] == [(k + 1) % 32 for k in range(40)]
    assert split_sqn(next_sqn(join_sqn(7, 3), ind=9)) == (8, 9)


def test_seq_never_wraps():
    top = join_sqn((1 << 43) - 1, 31)
    with pytest.raises(SqnExhaustedError, match=r"^sqn:"):
        next_sqn(top)
    # IND wraps (cyclic by design), SEQ just increments
    assert split_sqn(next_sqn(join_sqn(5, 31))) == (6, 0)


def test_hss_sqn_take_and_resync():
    hss = HssSqn()
    sqns = hss.take(3)
    assert [split_sqn(s) for s in sqns] == [(1, 1), (2, 2), (3, 3)]
    assert hss.sqn_he == sqns[-1]
    assert "HssSqn" in repr(hss)
    # SQN_MS far ahead: reset to SQN_MS
    assert hss.resync(join_sqn(1000, 4)) == join_sqn(1000, 4)
    assert split_sqn(hss.next()) == (1001, 5)
    with pytest.raises(SqnError, match=r"^n:"):
        hss.take(-1)


def test_resync_sqn_he_rules():
    # next SEQ from SQN_HE (10+1) is above SEQ_MS (5) and within Δ: keep SQN_HE
    assert resync_sqn_he(join_sqn(10, 2), join_sqn(5, 0)) == join_sqn(10, 2)
    # next SEQ not above SEQ_MS: take SQN_MS
    assert resync_sqn_he(join_sqn(5, 2), join_sqn(9, 0)) == join_sqn(9, 0)
    assert resync_sqn_he(join_sqn(8, 2), join_sqn(9, 0)) == join_sqn(9, 0)
    # too far ahead of SEQ_MS (> Δ): take SQN_MS
    far = join_sqn(5 + DEFAULT_DELTA, 0)
    assert resync_sqn_he(far, join_sqn(5, 0)) == join_sqn(5, 0)
    assert resync_sqn_he(join_sqn(20, 0), join_sqn(5, 0), delta=10) == join_sqn(5, 0)


def test_array_freshness_per_ind():
    arr = SqnArray()
    assert arr.sqn_ms == 0 and arr.entries == (0,) * 32
    assert arr.accept(join_sqn(5, 3)) is SqnVerdict.FRESH
    # a lower SEQ in another IND entry is still fresh (vectors used out of order)
    assert arr.accept(join_sqn(4, 2)) is SqnVerdict.FRESH
    assert arr.accept(join_sqn(5, 3)) is SqnVerdict.REPLAYED
    assert arr.accept(join_sqn(4, 3)) is SqnVerdict.REPLAYED
    assert arr.sqn_ms == join_sqn(5, 3)
    assert arr.entries[3] == 5 and arr.entries[2] == 4


def test_array_delta_and_limit():
    arr = SqnArray(delta=100, limit=10)
    assert arr.accept(join_sqn(100, 0)) is SqnVerdict.FRESH
    assert arr.check(join_sqn(201, 1)) is SqnVerdict.TOO_FAR_AHEAD
    assert arr.check(join_sqn(200, 1)) is SqnVerdict.FRESH
    assert arr.check(join_sqn(90, 1)) is SqnVerdict.TOO_OLD
    assert arr.check(join_sqn(91, 1)) is SqnVerdict.FRESH
    # a rejected SQN does not change the array
    assert arr.accept(join_sqn(300, 1)) is SqnVerdict.TOO_FAR_AHEAD
    assert arr.entries[1] == 0
    # without L, old-but-unused IND entries stay acceptable
    assert SqnArray(entries=[50] + [0] * 31).check(join_sqn(1, 7)) is SqnVerdict.FRESH


def test_array_restore_and_errors():
    entries = [0] * 32
    entries[9] = 77
    arr = SqnArray(entries=entries)
    assert arr.sqn_ms == join_sqn(77, 9)
    assert "SqnArray" in repr(arr)
    with pytest.raises(SqnError, match=r"^entries:"):
        SqnArray(entries=[0] * 31)
    with pytest.raises(SqnError, match=r"^delta:"):
        SqnArray(delta=0)
    with pytest.raises(SqnError, match=r"^limit:"):
        SqnArray(limit=0)
    small = SqnArray(ind_bits=2)
    assert len(small.entries) == 4


def test_explicit_ind_is_checked_and_hss_state_validated():
    with pytest.raises(SqnError, match=r"^ind:"):
        next_sqn(0, ind=32)
    with pytest.raises(SqnError, match=r"^ind:"):
        HssSqn().next(ind=-1)
    with pytest.raises(SqnError, match=r"^sqn_he:"):
        next_sqn(1 << 48)
    with pytest.raises(SqnError, match=r"^sqn_he:"):
        HssSqn(-1)
    with pytest.raises(SqnError, match=r"^delta:"):
        HssSqn(delta=0)
    hss = HssSqn(join_sqn((1 << 43) - 1, 0))
    with pytest.raises(SqnExhaustedError):
        hss.next()
    assert hss.sqn_he == join_sqn((1 << 43) - 1, 0)  # unchanged after the refusal
