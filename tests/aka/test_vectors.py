"""Authentication vectors (TS 33.102 §6.3.2) built on the TS 35.208 test sets."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from imsaka.aka.milenage import Milenage, MilenageError
from imsaka.aka.vectors import AuthVector, generate_vector, generate_vectors, split_autn


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_vector_matches_spec_functions(milenage_sets):
    for ts in milenage_sets:
        m = Milenage(h(ts["k"]), op=h(ts["op"]))
        sqn = int(ts["sqn"], 16)
        av = generate_vector(m, sqn, h(ts["amf"]), rand=h(ts["rand"]))
        assert av.rand == h(ts["rand"])
        assert av.xres.hex() == ts["f2"]
        assert av.ck.hex() == ts["f3"] and av.ik.hex() == ts["f4"]
        assert av.autn == xor(h(ts["sqn"]), h(ts["f5"])) + h(ts["amf"]) + h(ts["f1"])
        assert av.sqn == sqn
        assert av.sip_authenticate == av.rand + av.autn
        assert split_autn(av.autn) == (xor(h(ts["sqn"]), h(ts["f5"])), h(ts["amf"]), h(ts["f1"]))


def test_batch_equals_singles_with_same_rands(milenage_sets):
    ts = milenage_sets[2]
    m = Milenage(h(ts["k"]), opc=h(ts["opc"]))
    counter = itertools.count()

    def source(n: int) -> bytes:
        start = next(counter) * 97
        return bytes((start + i) & 0xFF for i in range(n))

    batch = generate_vectors(m, [32, 64, 96, (1 << 48) - 1], b"\x80\x00", rand_source=source)
    assert [v.sqn for v in batch] == [32, 64, 96, (1 << 48) - 1]
    for v in batch:
        assert generate_vector(m, v.sqn, b"\x80\x00", rand=v.rand) == v
    assert len({v.rand for v in batch}) == 4


def test_default_rand_comes_from_secrets_and_is_fresh():
    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    rands = {generate_vector(m, 1, b"\x80\x00").rand for _ in range(50)}
    assert len(rands) == 50
    assert len({v.rand for v in generate_vectors(m, range(50), b"\x80\x00")}) == 50
    assert generate_vectors(m, [], b"\x80\x00") == []


def test_vector_is_frozen_and_hides_secrets():
    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    av = generate_vector(m, 5, b"\x80\x00", rand=b"\x33" * 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        av.sqn = 6  # type: ignore[misc]
    text = repr(av)
    for secret in (av.xres, av.ck, av.ik):
        assert secret.hex() not in text and repr(secret) not in text
    assert isinstance(av, AuthVector)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sqn": -1, "amf": b"\x00\x00"}, "sqn"),
        ({"sqn": 1 << 48, "amf": b"\x00\x00"}, "sqn"),
        ({"sqn": True, "amf": b"\x00\x00"}, "sqn"),
        ({"sqn": 1, "amf": b"\x00"}, "amf"),
        ({"sqn": 1, "amf": b"\x00\x00", "rand": b"\x00" * 15}, "rand"),
    ],
)
def test_bad_inputs(kwargs, field):
    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    with pytest.raises(MilenageError, match=rf"^{field}:"):
        generate_vector(m, **kwargs)


def test_bad_rand_source_and_autn():
    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    with pytest.raises(MilenageError, match=r"^rand:"):
        generate_vectors(m, [1, 2], b"\x00\x00", rand_source=lambda n: b"\x00" * (n - 1))
    with pytest.raises(MilenageError, match=r"^autn:"):
        split_autn(b"\x00" * 15)


def test_fresh_vector_matches_vector_for_its_rand_and_never_repeats():
    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    seen = set()
    for i in range(100):  # crosses several prepared batches
        rand, autn, xres, ck, ik = m.fresh_vector(i + 1, b"\x80\x00")
        assert m.vector(rand, i + 1, b"\x80\x00") == (autn, xres, ck, ik)
        seen.add(rand)
    assert len(seen) == 100
    av = generate_vector(m, 7, b"\x80\x00")
    assert generate_vector(m, 7, b"\x80\x00", rand=av.rand) == av


def test_rand_pool_threads_and_sizes():
    import threading

    from imsaka.aka.rand import SecretsRandPool

    pool = SecretsRandPool(block=64)
    assert len(pool(16)) == 16 and len(pool(100)) == 100  # bigger than a block
    got: list[bytes] = []
    lock = threading.Lock()

    def worker():
        mine = [pool(16) for _ in range(50)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 200


def test_forked_child_does_not_reuse_prepared_rands():
    import os

    m = Milenage(b"\x11" * 16, opc=b"\x22" * 16)
    m.fresh_vector(1, b"\x80\x00")  # leaves 31 RANDs prepared in the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next RANDs, then leave at once
        try:
            os.write(w, b"".join(m.fresh_vector(2, b"\x80\x00")[0] for _ in range(4)))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    parent = b"".join(m.fresh_vector(2, b"\x80\x00")[0] for _ in range(4))
    assert len(child) == 64
    child_rands = {child[i : i + 16] for i in range(0, 64, 16)}
    parent_rands = {parent[i : i + 16] for i in range(0, 64, 16)}
    assert not child_rands & parent_rands
