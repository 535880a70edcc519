"""BoundedMemo: at most `limit` entries, emptied when full; what was handed out stays."""

from imsaka.sip.headers import CSEQ_SEEN, CSeq
from imsaka.sip.memo import BoundedMemo


def test_bounded_and_starts_again_when_full():
    memo = BoundedMemo(3)
    kept = [memo.remember(f"k{i}", object()) for i in range(3)]
    assert len(memo) == 3 and memo.get("k0") is kept[0]
    fourth = memo.remember("k3", object())
    assert dict(memo) == {"k3": fourth}  # emptied, then the new one
    assert memo.get("k0") is None


def test_cseq_views_are_shared_by_text_and_bounded():
    first = CSeq.parse("7 REGISTER")
    assert CSeq.parse("7 REGISTER") is first
    for n in range(CSEQ_SEEN.limit + 5):
        CSeq.parse(f"{n} OPTIONS")
    assert len(CSEQ_SEEN) <= CSEQ_SEEN.limit
