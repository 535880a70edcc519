"""Property tests (hypothesis): the ISIM accepts every fresh vector of its HSS, refuses
replays and tampering, and resynchronisation always converges (TS 33.102 §6.3, Annex C)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.aka.isim import AkaMacFailure, AkaSuccess, AkaSyncFailure, Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsMacError, build_auts, recover_sqn_ms
from imsaka.aka.sqn import HssSqn, SqnArray, join_sqn
from imsaka.aka.vectors import generate_vector, generate_vectors

keys = st.binary(min_size=16, max_size=16)
amfs = st.binary(min_size=2, max_size=2)
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(
    k=keys,
    opc=keys,
    amf=amfs,
    batches=st.lists(st.integers(1, 32), min_size=1, max_size=5),
    data=st.data(),
)
def test_isim_accepts_every_fresh_vector_in_any_order_and_refuses_replays(
    k, opc, amf, batches, data
):
    hss = HssSqn()
    network = Milenage(k, opc=opc)
    isim = Isim(Milenage(k, opc=opc))
    used = []
    for n in batches:
        batch = generate_vectors(network, hss.take(n), amf)
        # vectors of one batch sit in distinct IND entries: any order is fresh
        order = data.draw(st.permutations(batch))
        for av in order:
            r = isim.authenticate(av.rand, av.autn)
            assert isinstance(r, AkaSuccess)
            assert (r.res, r.ck, r.ik, r.sqn) == (av.xres, av.ck, av.ik, av.sqn)
            used.append(av)
    replayed = data.draw(st.sampled_from(used))
    r = isim.authenticate(replayed.rand, replayed.autn)
    assert isinstance(r, AkaSyncFailure)
    assert recover_sqn_ms(network, replayed.rand, r.auts) == isim.sqn_array.sqn_ms


@SETTINGS
@given(
    k=keys,
    opc=keys,
    amf=amfs,
    seq=st.integers(1, 1000),
    bit=st.integers(0, 16 * 8 - 1),
    flip_rand=st.booleans(),
)
def test_tampered_autn_or_rand_is_a_mac_failure(k, opc, amf, seq, bit, flip_rand):
    m = Milenage(k, opc=opc)
    isim = Isim(Milenage(k, opc=opc))
    av = generate_vector(m, join_sqn(seq, seq % 32), amf)
    rand, autn = bytearray(av.rand), bytearray(av.autn)
    target = rand if flip_rand else autn
    target[bit // 8] ^= 0x80 >> (bit % 8)
    assert isim.authenticate(bytes(rand), bytes(autn)) == AkaMacFailure("mac")
    # the failed attempt consumed nothing: the genuine vector still passes
    assert isinstance(isim.authenticate(av.rand, av.autn), AkaSuccess)


@SETTINGS
@given(
    k=keys,
    opc=keys,
    amf=amfs,
    isim_entries=st.lists(st.integers(0, 1 << 30), min_size=32, max_size=32),
    sqn_he=st.integers(0, (1 << 36) - 1),
    delta=st.sampled_from([1 << 28, 1 << 10, 64]),
)
def test_resync_always_converges(k, opc, amf, isim_entries, sqn_he, delta):
    m = Milenage(k, opc=opc)
    hss = HssSqn(sqn_he, delta=delta)
    isim = Isim(Milenage(k, opc=opc), SqnArray(entries=isim_entries, delta=delta))
    rounds = 0
    while True:
        rounds += 1
        assert rounds <= 2, "resync did not converge after one AUTS"
        av = generate_vector(m, hss.next(), amf)
        r = isim.authenticate(av.rand, av.autn)
        if isinstance(r, AkaSuccess):
            break
        assert isinstance(r, AkaSyncFailure)
        hss.resync(recover_sqn_ms(m, av.rand, r.auts))
    assert r.res == av.xres


@SETTINGS
@given(
    k=keys,
    opc=keys,
    rand=st.binary(min_size=16, max_size=16),
    sqn_ms=st.integers(0, (1 << 48) - 1),
    other=keys,
    bit=st.integers(0, 14 * 8 - 1),
)
def test_auts_round_trip_and_forgery(k, opc, rand, sqn_ms, other, bit):
    m = Milenage(k, opc=opc)
    auts = build_auts(m, rand, sqn_ms)
    assert recover_sqn_ms(m, rand, auts) == sqn_ms
    forged = bytearray(auts)
    forged[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        recover_sqn_ms(m, rand, bytes(forged))
        raise AssertionError("forged AUTS accepted")
    except AutsMacError:
        pass
    if other != k:
        try:
            recover_sqn_ms(Milenage(other, opc=opc), rand, auts)
            raise AssertionError("AUTS from another K accepted")
        except AutsMacError:
            pass
