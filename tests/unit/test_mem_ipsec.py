"""What an SA set keeps per registered UE (a P-CSCF holds one per UE): each SA is its
own ESP object, null encryption needs no per-set closure, the replay windows share
their mask, and the set still protects, verifies and refuses replays as before."""

from __future__ import annotations

import pytest
from tests.ipsec.helpers import negotiate

from imsaka.ipsec.esp import REPLAY, EspDelivered, EspDrop, EspInbound, EspOutbound
from imsaka.ipsec.sa import SecurityAssociation


@pytest.mark.parametrize("ealg", ["null", "aes-cbc", "des-ede3-cbc"])
def test_each_sa_is_its_own_esp_object_and_still_interoperates(ealg):
    n = negotiate(ealg=ealg)
    u, p = n.ue_set, n.pcscf_set
    for s in (u, p):
        for sa in s.all_sas:
            assert sa.esp is sa and isinstance(sa, SecurityAssociation)
            if sa.inbound:
                assert sa.window is sa  # its own replay window
            assert isinstance(sa, EspInbound) is sa.inbound
            assert isinstance(sa, EspOutbound) is (not sa.inbound)
            assert sa.alg == "hmac-sha-1-96" and sa.ealg == ealg
            assert sa.sa_set is s and sa.local == (sa.dst if sa.inbound else sa.src)
            assert "SecurityAssociation(spi=" in repr(sa)
    for sender, receiver in ((u, p), (p, u)):
        for out in sender.outbound.values():
            packet = out.protect(b"REGISTER %d" % out.spi)
            inbound = receiver.inbound[out.spi]
            got = inbound.unprotect(packet)
            assert isinstance(got, EspDelivered) and got.payload == b"REGISTER %d" % out.spi
            again = inbound.unprotect(packet)  # RFC 4303 §3.4.3: a replay is dropped
            assert isinstance(again, EspDrop) and again.reason == REPLAY
            tampered = packet[:-1] + bytes((packet[-1] ^ 1,))
            assert isinstance(inbound.unprotect(tampered), EspDrop)


def test_null_encryption_builds_no_closure_per_set():
    n = negotiate(ealg="null")
    p = n.pcscf_set
    out = p.server_sa()
    n.ue_set.inbound[out.spi].unprotect(out.protect(b"x"))
    fn = out._protect
    assert fn.__func__.__qualname__ == "_NullTransform.protect"
    assert not hasattr(fn, "__closure__") or fn.__closure__ is None


def test_replay_windows_share_their_mask_and_contacts_hold_no_empty_list():
    a, b = negotiate(ealg="null", contact="a"), negotiate(ealg="null", contact="b")
    windows = [sa.window for s in (a.pcscf_set, b.pcscf_set) for sa in s.inbound.values()]
    assert len({id(w.mask) for w in windows}) == 1 and windows[0].mask == (1 << 64) - 1
    contact = a.pcscf._contacts["a"]
    assert contact.old == ()
    # interned algorithm names: one string object across sets
    assert a.pcscf_set.keys.alg is b.pcscf_set.keys.alg


def test_one_heap_entry_per_set_and_the_lifetime_still_ends_it():
    n = negotiate(ealg="null", now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=600, now=1.0)
    assert len(t._deadlines) == 1  # the temporary lifetime's entry, moved on later
    assert t.next_deadline() == s.expires_at  # exact, after moving the entry on
    assert len(t._deadlines) == 1
    t.handle_timer(s.expires_at - 1)
    assert s.live
    t.handle_timer(s.expires_at)
    assert not s.live and t.next_deadline() is None


def test_live_spis_cost_little_per_spi():
    import tracemalloc

    from imsaka.ipsec.sa import SpiAllocator

    a = SpiAllocator()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        spis = [a.allocate() for _ in range(2200)]
        per_spi = (tracemalloc.get_traced_memory()[0] - before - 8 * len(spis)) / len(spis)
    finally:
        tracemalloc.stop()
    assert per_spi < 90  # a set kept ~140 (its table grows fourfold)
    assert len(set(spis)) == 2200 and a.live_count == 2200
    a.release(spis[0])
    assert not a.is_live(spis[0]) and a.is_live(spis[1]) and a.live_count == 2199
