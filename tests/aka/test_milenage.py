"""Milenage against every TS 35.207/35.208 test set (TS 35.206 §4.1)."""

from __future__ import annotations

import pytest

from imsaka.aka.milenage import Milenage, MilenageError, compute_opc


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_there_are_test_sets(milenage_sets):
    assert len(milenage_sets) >= 6


def test_opc_from_op(milenage_sets):
    for ts in milenage_sets:
        assert compute_opc(h(ts["k"]), h(ts["op"])).hex() == ts["opc"], ts["set"]
        assert Milenage(h(ts["k"]), op=h(ts["op"])).opc.hex() == ts["opc"]


@pytest.mark.parametrize("variant", ["op", "opc"])
def test_every_function_every_set(milenage_sets, variant):
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), **{variant: h(ts[variant])})
        rand, sqn, amf = h(ts["rand"]), h(ts["sqn"]), h(ts["amf"])
        assert m.f1(rand, sqn, amf).hex() == ts["f1"], ts["set"]
        assert m.f1star(rand, sqn, amf).hex() == ts["f1_star"], ts["set"]
        res, ck, ik, ak = m.f2345(rand)
        assert res.hex() == ts["f2"], ts["set"]
        assert ck.hex() == ts["f3"], ts["set"]
        assert ik.hex() == ts["f4"], ts["set"]
        assert ak.hex() == ts["f5"], ts["set"]
        assert m.f5star(rand).hex() == ts["f5_star"], ts["set"]


def test_compute_all_and_fast_paths_agree(milenage_sets):
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), opc=h(ts["opc"]))
        rand, sqn, amf = h(ts["rand"]), h(ts["sqn"]), h(ts["amf"])
        allv = {k: v.hex() for k, v in m.compute_all(rand, sqn, amf).items()}
        assert allv == {
            "mac_a": ts["f1"],
            "mac_s": ts["f1_star"],
            "res": ts["f2"],
            "ck": ts["f3"],
            "ik": ts["f4"],
            "ak": ts["f5"],
            "ak_star": ts["f5_star"],
        }
        sqn_xor_ak = bytes(x ^ y for x, y in zip(sqn, h(ts["f5"]), strict=True))
        want = (sqn_xor_ak + amf + h(ts["f1"]), h(ts["f2"]), h(ts["f3"]), h(ts["f4"]))
        assert m.vector(rand, int.from_bytes(sqn, "big"), amf) == want
        assert m.vectors([rand], [int.from_bytes(sqn, "big")], amf) == [want]


def test_batch_of_all_sets_matches_singles(milenage_sets):
    ts = milenage_sets[0]
    m = Milenage(h(ts["k"]), opc=h(ts["opc"]))
    rands = [h(t["rand"]) for t in milenage_sets]
    sqns = [int(t["sqn"], 16) for t in milenage_sets]
    batch = m.vectors(rands, sqns, b"\x80\x00")
    assert m.vectors([], [], b"\x80\x00") == []
    for r, s, b in zip(rands, sqns, batch, strict=True):
        assert b == m.vector(r, s, b"\x80\x00")
        all_ = m.compute_all(r, s.to_bytes(6, "big"), b"\x80\x00")
        ak = int.from_bytes(all_["ak"], "big")
        assert b[0] == (s ^ ak).to_bytes(6, "big") + b"\x80\x00" + all_["mac_a"]


def test_custom_constants_change_outputs_and_default_equals_spec(milenage_sets):
    ts = milenage_sets[0]
    k, opc, rand = h(ts["k"]), h(ts["opc"]), h(ts["rand"])
    spec = Milenage(k, opc=opc, r=(64, 0, 32, 64, 96), c=(0, 1, 2, 4, 8))
    assert spec.f2345(rand)[0].hex() == ts["f2"]
    other = Milenage(k, opc=opc, r=(8, 16, 24, 32, 40), c=(3, 5, 6, 7, 9))
    assert other.f2345(rand) != spec.f2345(rand)
    assert other.f5star(rand) != spec.f5star(rand)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": b"\x00" * 15, "opc": b"\x00" * 16}, "k"),
        ({"k": b"\x00" * 16}, "op/opc"),
        ({"k": b"\x00" * 16, "op": b"\x00" * 16, "opc": b"\x00" * 16}, "op/opc"),
        ({"k": b"\x00" * 16, "opc": b"\x00" * 17}, "opc"),
        ({"k": b"\x00" * 16, "op": "00" * 16}, "op"),
        ({"k": b"\x00" * 16, "opc": b"\x00" * 16, "r": (1, 2, 3)}, "r"),
        ({"k": b"\x00" * 16, "opc": b"\x00" * 16, "c": (0, 1, 2, 4, 1 << 128)}, "c"),
    ],
)
def test_bad_construction_names_field(kwargs, field):
    with pytest.raises(MilenageError) as ei:
        Milenage(**kwargs)
    assert str(ei.value).startswith(field + ":")


def test_bad_inputs_name_field():
    m = Milenage(b"\x01" * 16, opc=b"\x02" * 16)
    with pytest.raises(MilenageError, match=r"^rand:"):
        m.f2345(b"\x00" * 15)
    with pytest.raises(MilenageError, match=r"^sqn:"):
        m.f1(b"\x00" * 16, b"\x00" * 5, b"\x00" * 2)
    with pytest.raises(MilenageError, match=r"^amf:"):
        m.f1star(b"\x00" * 16, b"\x00" * 6, b"\x00")


def test_repr_hides_k_and_opc():
    k = bytes(range(16))
    opc = bytes(range(16, 32))
    m = Milenage(k, opc=opc)
    text = repr(m) + str(m)
    for secret in (k, opc):
        assert secret.hex() not in text and repr(secret) not in text
    assert "hidden" in text


@pytest.mark.parametrize(
    "r", [(64, 0, 32, 64, 96), (7, 13, 29, 64, 100), (0, 8, 16, 24, 32), (72, 120, 0, 8, 3)]
)
def test_fast_vector_path_equals_reference_for_any_rotation(milenage_sets, r):
    c = (0x5, 0x1 << 127, 0x2, 0xDEADBEEF << 64, 0x8)
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), opc=h(ts["opc"]), r=r, c=c)
        rand, sqn, amf = h(ts["rand"]), h(ts["sqn"]), h(ts["amf"])
        ref = m.compute_all(rand, sqn, amf)
        assert ref["mac_a"] == m.f1(rand, sqn, amf) and ref["mac_s"] == m.f1star(rand, sqn, amf)
        assert (ref["res"], ref["ck"], ref["ik"], ref["ak"]) == m.f2345(rand)
        assert ref["ak_star"] == m.f5star(rand)
        concealed = bytes(x ^ y for x, y in zip(sqn, ref["ak"], strict=True))
        want = (concealed + amf + ref["mac_a"], ref["res"], ref["ck"], ref["ik"])
        assert m.vector(rand, int.from_bytes(sqn, "big"), amf) == want
        assert m.vectors([rand, rand], [int.from_bytes(sqn, "big")] * 2, amf) == [want, want]
