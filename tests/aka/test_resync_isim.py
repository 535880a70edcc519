"""AUTS (TS 33.102 §6.3.3/§6.3.5) and the ISIM's AUTN check, against the TS 35.208 sets."""

from __future__ import annotations

import pytest

from imsaka.aka.isim import (
    AkaMacFailure,
    AkaSuccess,
    AkaSyncFailure,
    Isim,
    IsimError,
    require_separation_bit,
    separation_bit,
)
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsError, AutsMacError, build_auts, recover_sqn_ms
from imsaka.aka.sqn import HssSqn, SqnArray, SqnVerdict, join_sqn
from imsaka.aka.vectors import generate_vector


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_auts_layout_against_spec_sets(milenage_sets):
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), opc=h(ts["opc"]))
        rand = h(ts["rand"])
        sqn = int(ts["sqn"], 16)
        auts = build_auts(m, rand, sqn)
        assert len(auts) == 14
        conceal = (sqn ^ int(ts["f5_star"], 16)).to_bytes(6, "big")
        assert auts[:6] == conceal
        # MAC-S over AMF* = 0x0000, not the subscriber's AMF
        assert auts[6:] == m.f1star(rand, h(ts["sqn"]), b"\x00\x00")
        if ts["amf"] != "0000":
            assert auts[6:] != h(ts["f1_star"])
        assert recover_sqn_ms(m, rand, auts) == sqn


def test_forged_auts_refused():
    m = Milenage(b"\x01" * 16, opc=b"\x02" * 16)
    rand = b"\x03" * 16
    auts = build_auts(m, rand, 0x123456789ABC)
    for i in range(14 * 8):
        forged = bytearray(auts)
        forged[i // 8] ^= 0x80 >> (i % 8)
        with pytest.raises(AutsMacError) as ei:
            recover_sqn_ms(m, rand, bytes(forged))
        assert str(ei.value) == "auts: MAC-S check failed"
    other = Milenage(b"\x09" * 16, opc=b"\x02" * 16)
    with pytest.raises(AutsMacError):
        recover_sqn_ms(other, rand, auts)
    with pytest.raises(AutsMacError):
        recover_sqn_ms(m, b"\x04" * 16, auts)
    # the subscriber's AMF instead of AMF* (the bug some HSSs have) is refused
    ak_star = int.from_bytes(m.f5star(rand), "big")
    sqn6 = (0x123456789ABC).to_bytes(6, "big")
    wrong = (0x123456789ABC ^ ak_star).to_bytes(6, "big") + m.f1star(rand, sqn6, b"\x80\x00")
    with pytest.raises(AutsMacError):
        recover_sqn_ms(m, rand, wrong)


def test_auts_input_errors():
    m = Milenage(b"\x01" * 16, opc=b"\x02" * 16)
    with pytest.raises(AutsError, match=r"^auts:"):
        recover_sqn_ms(m, b"\x00" * 16, b"\x00" * 13)
    with pytest.raises(AutsError, match=r"^rand:"):
        recover_sqn_ms(m, b"\x00" * 15, b"\x00" * 14)
    with pytest.raises(AutsError, match=r"^sqn_ms:"):
        build_auts(m, b"\x00" * 16, 1 << 48)


def test_isim_with_spec_set(milenage_sets):
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), op=h(ts["op"]))
        sqn = int(ts["sqn"], 16)
        av = generate_vector(m, sqn, h(ts["amf"]), rand=h(ts["rand"]))
        # the test-set SQNs are far from zero: with Δ below them the ISIM asks to resync
        isim = Isim(Milenage(h(ts["k"]), opc=h(ts["opc"])), SqnArray(delta=1 << 43))
        result = isim.authenticate(av.rand, av.autn)
        assert isinstance(result, AkaSuccess), ts["set"]
        assert (result.res.hex(), result.ck.hex(), result.ik.hex()) == (
            ts["f2"],
            ts["f3"],
            ts["f4"],
        )
        assert result.sqn == sqn
        strict = Isim(m).authenticate(av.rand, av.autn)
        if sqn >> 5 > 1 << 28:
            assert isinstance(strict, AkaSyncFailure)
            assert strict.verdict is SqnVerdict.TOO_FAR_AHEAD
            assert recover_sqn_ms(m, av.rand, strict.auts) == 0


def test_isim_flow_replay_tamper_wrong_key():
    m = Milenage(b"\x0a" * 16, opc=b"\x0b" * 16)
    hss = HssSqn()
    isim = Isim(Milenage(b"\x0a" * 16, opc=b"\x0b" * 16))
    av = generate_vector(m, hss.next(), b"\x80\x00")
    ok = isim.authenticate(av.rand, av.autn)
    assert isinstance(ok, AkaSuccess) and ok.res == av.xres and ok.ck == av.ck and ok.ik == av.ik
    replay = isim.authenticate(av.rand, av.autn)
    assert isinstance(replay, AkaSyncFailure) and replay.verdict is SqnVerdict.REPLAYED
    assert recover_sqn_ms(m, av.rand, replay.auts) == av.sqn
    tampered = bytearray(av.autn)
    tampered[15] ^= 1
    assert isim.authenticate(av.rand, bytes(tampered)) == AkaMacFailure("mac")
    stranger = Isim(Milenage(b"\x0c" * 16, opc=b"\x0b" * 16))
    av2 = generate_vector(m, hss.next(), b"\x80\x00")
    assert stranger.authenticate(av2.rand, av2.autn) == AkaMacFailure("mac")
    with pytest.raises(IsimError, match=r"^autn:"):
        isim.authenticate(av.rand, av.autn[:15])
    with pytest.raises(IsimError, match=r"^rand:"):
        isim.authenticate(b"", av.autn)


def test_amf_policy():
    m = Milenage(b"\x0a" * 16, opc=b"\x0b" * 16)
    assert separation_bit(b"\x80\x00") and not separation_bit(b"\x7f\xff")
    isim = Isim(m, accept_amf=require_separation_bit)
    plain = generate_vector(m, join_sqn(1, 1), b"\x00\x00")
    assert isim.authenticate(plain.rand, plain.autn) == AkaMacFailure("amf")
    assert isim.sqn_array.entries[1] == 0  # a refused vector does not consume the SQN
    sep = generate_vector(m, join_sqn(1, 1), b"\x80\x00")
    assert isinstance(isim.authenticate(sep.rand, sep.autn), AkaSuccess)
    listed = Isim(m, accept_amf={b"\x80\x01"})
    assert listed.authenticate(sep.rand, sep.autn) == AkaMacFailure("amf")
    ok = generate_vector(m, join_sqn(2, 2), b"\x80\x01")
    assert isinstance(listed.authenticate(ok.rand, ok.autn), AkaSuccess)
    with pytest.raises(IsimError, match=r"^accept_amf:"):
        Isim(m, accept_amf=[b"\x80"])


def test_results_hide_secrets():
    m = Milenage(b"\x0a" * 16, opc=b"\x0b" * 16)
    av = generate_vector(m, 33, b"\x80\x00")
    ok = Isim(m).authenticate(av.rand, av.autn)
    text = repr(ok) + repr(Isim(m))
    for secret in (av.xres, av.ck, av.ik, b"\x0a" * 16, b"\x0b" * 16):
        assert secret.hex() not in text and repr(secret) not in text
