"""The SA set: layout, SPI and port allocation, the TS 33.203 §7.4 lifetime table."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.ipsec import (
    LocalProtocolError,
    NewRegistrationNeeded,
    PortPair,
    PortPool,
    PortPoolExhausted,
    SaSetInstalled,
    SaSetRemoved,
    SaState,
    SecurityAssociationTable,
    SpiAllocator,
    SpiPoolExhausted,
)
from imsaka.ipsec.esp import EspInbound, EspOutbound
from imsaka.ipsec.sa import LIFETIME_MARGIN, REG_AWAIT_AUTH, TRANSITIONS, SaInput
from imsaka.ipsec.secagree import parse_security_header
from tests.ipsec.helpers import negotiate


def events(table):
    out = []
    while (e := table.next_event()) is not None:
        out.append(e)
    return out


# --- allocation ---


def test_spis_unique_never_below_256_and_not_reused_while_live():
    counter = itertools.count()
    rng = lambda n: (next(counter) % 3).to_bytes(n, "big")  # noqa: E731 - collides on purpose
    alloc = SpiAllocator(low=256, high=260, rng=rng)
    got = {alloc.allocate() for _ in range(5)}
    assert got == {256, 257, 258, 259, 260}
    with pytest.raises(SpiPoolExhausted):
        alloc.allocate()
    alloc.release(258)
    assert alloc.allocate() == 258
    with pytest.raises(ValueError):
        SpiAllocator(low=255)


def test_spi_allocation_avoids_the_peer_spis():
    alloc = SpiAllocator(low=1000, high=1003)
    assert alloc.allocate(avoid={1000, 1001, 1002}) == 1003


def test_port_pool_recycles_and_fails_loudly():
    pool = PortPool(first=5100, count=2)
    a, b = pool.allocate(), pool.allocate()
    assert {a, b} == {PortPair(5100, 5101), PortPair(5102, 5103)}
    with pytest.raises(PortPoolExhausted, match="2 protected port pairs"):
        pool.allocate()
    pool.release(a)
    assert pool.allocate() == a
    with pytest.raises(LocalProtocolError):
        pool.release(PortPair(1, 2))
    assert pool.share(a) == a and pool.in_use(a) == 2
    shared = PortPool(first=6000, count=1, sets_per_pair=3)
    assert len({shared.allocate() for _ in range(3)}) == 1
    with pytest.raises(PortPoolExhausted):
        shared.allocate()


# --- layout ---


def test_four_sas_with_receiver_allocated_spis(negotiated):
    u, p = negotiated.ue_set, negotiated.pcscf_set
    ue_c, ue_s = u.ue_ports.port_c, u.ue_ports.port_s
    p_c, p_s = p.pcscf_ports.port_c, p.pcscf_ports.port_s
    spi_uc, spi_us = u.ue_spis
    spi_pc, spi_ps = p.pcscf_spis
    # The same four SAs on both sides, mirrored.
    assert {(sa.spi, sa.src[1], sa.dst[1]) for sa in u.all_sas} == {
        (spi_ps, ue_c, p_s),
        (spi_uc, p_s, ue_c),
        (spi_us, p_c, ue_s),
        (spi_pc, ue_s, p_c),
    }
    assert {(sa.spi, sa.src, sa.dst) for sa in u.all_sas} == {
        (sa.spi, sa.src, sa.dst) for sa in p.all_sas
    }
    # Each side receives on the SPIs it allocated.
    assert set(u.inbound) == {spi_uc, spi_us} and set(p.inbound) == {spi_pc, spi_ps}
    assert all(isinstance(sa.esp, EspInbound) for sa in u.inbound.values())
    assert all(isinstance(sa.esp, EspOutbound) for sa in u.outbound.values())
    assert len({spi_uc, spi_us, spi_pc, spi_ps}) == 4 and min(spi_uc, spi_us, spi_pc, spi_ps) > 255
    # Requests from the UE leave from port-c; responses from the P-CSCF leave port-s.
    assert u.client_sa().dst == (p.pcscf_ip, p_s)
    arrived = p.inbound[spi_ps]
    assert p.reply_sa(arrived).dst == (u.ue_ip, ue_c)
    assert p.client_sa().dst == (u.ue_ip, ue_s)
    assert u.reply_sa(u.inbound[spi_us]).dst == (p.pcscf_ip, p_c)
    with pytest.raises(LocalProtocolError):
        p.reply_sa(p.client_sa())


@pytest.mark.parametrize("ealg", ["aes-cbc", "null", "aes-gcm"])
def test_the_four_sas_share_one_transform_built_on_first_use(ealg):
    n = negotiate(alg="null" if ealg == "aes-gcm" else "hmac-sha-1-96", ealg=ealg)
    u, p = n.ue_set, n.pcscf_set
    transforms = {id(sa.esp._transform) for sa in p.all_sas}
    assert len(transforms) == 1
    # nothing built at install time (memory per registered UE)
    assert all(sa.esp._protect is None for sa in p.outbound.values())
    assert all(sa.esp._open is None for sa in p.inbound.values())
    # both directions over both SA pairs, several packets each: one shared context per
    # direction still interoperates with the peer's
    for _ in range(3):
        for sender, receiver in ((u, p), (p, u)):
            for out in sender.outbound.values():
                packet = out.esp.protect(b"payload %d" % out.spi)
                got = receiver.inbound[out.spi].esp.unprotect(packet)
                assert got.payload == b"payload %d" % out.spi
    assert len({sa.esp._protect for sa in p.outbound.values()}) == 1
    assert len({sa.esp._open for sa in p.inbound.values()}) == 1


def test_a_removed_set_leaves_no_keyed_hmac_context_behind():
    # The ICV contexts keyed over IK_esp are cached per process (esp._KEYED); a removed
    # set's key must not stay there until newer keys push it out.
    from imsaka.ipsec import esp

    n = negotiate(now=0.0)
    p = n.pcscf_set
    out = next(iter(p.outbound.values()))
    n.ue_set.inbound[out.spi].esp.unprotect(out.esp.protect(b"x"))
    table = esp._KEYED["sha1"]
    assert p.keys.ik_esp in table._contexts
    n.pcscf.remove(p, now=1.0)
    assert p.keys.ik_esp not in table._contexts


def test_keys_do_not_leak_into_reprs(negotiated):
    from tests.ipsec.helpers import CK, IK

    text = repr(negotiated.ue_set) + repr(negotiated.ue_set.all_sas) + repr(events(negotiated.ue))
    assert IK.hex() not in text and CK.hex() not in text


# --- lifetimes (TS 33.203 §7.4, TS 24.229 §5.1.1.5.1) ---


def test_temporary_then_established_lifetime():
    n = negotiate(now=1000.0)
    t, s = n.pcscf, n.pcscf_set
    assert isinstance(events(t)[0], SaSetInstalled)
    assert s.state is SaState.TEMPORARY and s.expires_at == 1000.0 + REG_AWAIT_AUTH
    t.registered(s, expires=600_000, now=1010.0)
    assert s.state is SaState.ESTABLISHED
    assert s.expires_at == 1010.0 + 600_000 + LIFETIME_MARGIN
    assert t.current("ue1") is s and t.next_deadline() == s.expires_at


def test_deadline_version_moves_only_when_a_deadline_may_come_earlier():
    """The backend keeps its wake-up while `deadline_version` is unchanged: a lifetime
    moving later (a re-registration) or a set leaving leaves it; a new set or a
    lifetime moving earlier than its entry moves it, and `next_deadline` is then never
    below the deadline read before (unchanged version) or is re-read (changed)."""
    n = negotiate(now=1000.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=600, now=1010.0)
    first = t.next_deadline()
    version = t.deadline_version
    t.reregistered(s, expires=6000, now=1020.0)
    assert t.deadline_version == version and t.next_deadline() > first
    s.expires_at = 1500.0  # earlier than its heap entry: a new entry
    assert t.deadline_version == version + 1 and t.next_deadline() == 1500.0
    t.remove(s, now=1030.0)
    assert t.deadline_version == version + 1 and t.next_deadline() is None


def test_temporary_expires_after_reg_await_auth_and_frees_spis_and_ports():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    spis = s.pcscf_spis
    t.handle_timer(REG_AWAIT_AUTH - 0.001)
    assert s.state is SaState.TEMPORARY
    t.handle_timer(REG_AWAIT_AUTH)
    assert s.state is SaState.REMOVED
    removed = [e for e in events(t) if isinstance(e, SaSetRemoved)]
    assert removed[0].reason == "lifetime expired"
    assert not any(t.spis.is_live(x) for x in spis)
    assert t.ports.in_use(s.port_pair) == 0
    assert t.lookup_inbound(spis[0]) is None and t.current("ue1") is None


def test_new_401_discards_the_earlier_temporary_set():
    n = negotiate(now=0.0)
    again = negotiate(now=5.0, ue_table=n.ue, pcscf_table=n.pcscf)
    assert n.pcscf_set.state is SaState.REMOVED and n.ue_set.state is SaState.REMOVED
    assert again.pcscf_set.state is SaState.TEMPORARY
    assert n.pcscf.temporary("ue1") is again.pcscf_set


def test_a_new_401_to_the_challenge_response_hands_the_same_spis_on():
    """TS 24.229 §5.1.1.5.1: the challenge response repeats the first Security-Client, so
    a UE challenged again sets up its new temporary set over the same SPIs; the earlier
    one is discarded and its SPIs pass to the new one (live, found inbound)."""
    n = negotiate(now=0.0)
    ue, first = n.ue, n.ue_set
    server = n.server[0]
    client = next(
        m
        for m in parse_security_header(n.client_header)
        if (m.alg, m.ealg) == (server.alg, server.ealg)
    )
    server = dataclasses.replace(server, spi_c=777001, spi_s=777002)
    again = ue.create_temporary(
        "ue1", now=5.0, ue_ip="127.0.0.1", pcscf_ip="127.0.0.1", client=client,
        server=server, ik=bytes(16), ck=bytes(16),
    )  # fmt: skip
    assert first.state is SaState.REMOVED and again.state is SaState.TEMPORARY
    assert again.ue_spis == first.ue_spis
    assert all(ue.spis.is_live(spi) for spi in again.ue_spis)
    assert all(ue.lookup_inbound(spi).sa_set is again for spi in again.ue_spis)
    assert ue.temporary("ue1") is again
    ue.remove(again, now=6.0)
    assert not any(ue.spis.is_live(spi) for spi in first.ue_spis)
    # other SPIs than the set's it replaces must still come from allocate_local
    with pytest.raises(LocalProtocolError, match="allocate_local"):
        ue.create_temporary(
            "ue1", now=7.0, ue_ip="127.0.0.1", pcscf_ip="127.0.0.1", client=client,
            server=server, ik=bytes(16), ck=bytes(16),
        )  # fmt: skip


def test_reregistration_replaces_old_set_after_first_message_on_new_set():
    n = negotiate(now=0.0)
    t = n.pcscf
    old = n.pcscf_set
    t.registered(old, expires=1200, now=1.0)
    old_end = old.expires_at
    # Re-registration with a shorter expiry: the new set keeps the longer lifetime.
    re = negotiate(now=500.0, ue_table=n.ue, pcscf_table=t)
    new = re.pcscf_set
    assert old.state is SaState.ESTABLISHED and new.state is SaState.TEMPORARY
    t.registered(new, expires=60, now=501.0)
    assert new.state is SaState.ESTABLISHED and old.state is SaState.SUPERSEDED
    assert new.expires_at == max(old_end, 501.0 + 60 + LIFETIME_MARGIN) == old_end
    # Still usable (a transaction on the old set may finish); not removed yet.
    assert old.usable_for_sending() and t.lookup_inbound(old.pcscf_spis[1]) is not None
    t.message_received(old, now=502.0)  # traffic on the old set changes nothing
    assert old.state is SaState.SUPERSEDED
    t.message_received(new, now=503.0)  # first message on the new set
    assert old.state is SaState.REMOVED
    assert t.lookup_inbound(old.pcscf_spis[1]) is None
    assert t.current("ue1") is new


def test_old_set_waits_for_open_transactions():
    n = negotiate(now=0.0)
    t, old = n.pcscf, n.pcscf_set
    t.registered(old, expires=600, now=1.0)
    t.transaction_started(old)
    new = negotiate(now=10.0, ue_table=n.ue, pcscf_table=t).pcscf_set
    t.registered(new, expires=600, now=11.0)
    t.message_received(new, now=12.0)
    assert old.state is SaState.DRAINING
    t.transaction_finished(old, now=13.0)
    assert old.state is SaState.REMOVED
    with pytest.raises(LocalProtocolError):
        t.transaction_finished(new, now=14.0)


def test_deregistration_removes_only_after_the_final_200_went_out():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=600, now=1.0)
    t.deregistered(s, now=100.0)
    assert s.state is SaState.DRAINING and s.usable_for_sending()
    t.message_sent(s, now=100.5)  # some other message: not the one that was due
    assert s.state is SaState.DRAINING
    t.message_sent(s, now=101.0, final=True)  # the 200 OK to the de-REGISTER
    assert s.state is SaState.REMOVED
    assert [e.reason for e in events(t) if isinstance(e, SaSetRemoved)] == ["final message sent"]


def test_drain_is_bounded_when_the_final_message_never_goes():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=600, now=1.0)
    t.deregistered(s, now=100.0)
    assert s.expires_at == 100.0 + t.drain_grace
    t.handle_timer(100.0 + t.drain_grace)
    assert s.state is SaState.REMOVED


def test_expiry_with_a_message_due_drains_first():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=100, now=0.0)
    t.transaction_started(s)
    t.handle_timer(130.0)
    assert s.state is SaState.DRAINING and s.expires_at == 130.0 + t.drain_grace
    t.transaction_finished(s, now=131.0)
    assert s.state is SaState.REMOVED


def test_auth_failure_removes_the_temporary_set_after_the_4xx():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.auth_failed(s, now=3.0)
    assert s.state is SaState.DRAINING
    t.message_sent(s, now=3.1, final=True)
    assert s.state is SaState.REMOVED


def test_a_new_401_after_an_auth_failure_gets_its_own_temporary_set():
    """The failed set drains (its 4xx still due) outside the contact's temporary slot,
    so the next challenge for the same contact installs a new set; each goes on its own."""
    n = negotiate(now=0.0)
    t, failed = n.pcscf, n.pcscf_set
    t.auth_failed(failed, now=1.0)
    assert t.temporary("ue1") is None
    again = negotiate(now=2.0, ue_table=n.ue, pcscf_table=t)  # raised before the fix
    assert failed.state is SaState.DRAINING and again.pcscf_set.state is SaState.TEMPORARY
    assert t.temporary("ue1") is again.pcscf_set
    t.message_sent(failed, now=2.1, final=True)
    assert failed.state is SaState.REMOVED
    assert again.pcscf_set.state is SaState.TEMPORARY and t.current("ue1") is again.pcscf_set
    t.registered(again.pcscf_set, expires=600, now=3.0)
    assert t.current("ue1") is again.pcscf_set and len(t.sets()) == 1


def test_an_expiring_established_set_with_a_message_due_leaves_the_established_slot():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    t.registered(s, expires=10, now=1.0)
    t.transaction_started(s)
    t.handle_timer(s.expires_at)
    assert s.state is SaState.DRAINING and t.current("ue1") is None
    t.transaction_finished(s, now=s.expires_at + 1)
    assert s.state is SaState.REMOVED and not t.sets()


def test_remove_drops_one_set_and_leaves_the_others():
    n = negotiate(now=0.0)
    t = n.pcscf
    t.registered(n.pcscf_set, expires=600, now=1.0)
    re = negotiate(now=2.0, ue_table=n.ue, pcscf_table=t)
    t.registered(re.pcscf_set, expires=600, now=3.0)
    assert n.pcscf_set.state is SaState.SUPERSEDED
    t.remove(n.pcscf_set, now=3.0, reason="replaced by a newer set")
    t.remove(n.pcscf_set, now=3.0)  # twice: no error
    assert n.pcscf_set.state is SaState.REMOVED and t.current("ue1") is re.pcscf_set
    assert [s.id for s in t.sets()] == [re.pcscf_set.id]
    assert any(isinstance(e, SaSetRemoved) for e in events(t))


def test_inputs_not_in_the_table_raise():
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    with pytest.raises(LocalProtocolError, match="not allowed"):
        t.deregistered(s, now=1.0)  # a temporary set is never de-registered
    t.registered(s, expires=60, now=1.0)
    with pytest.raises(LocalProtocolError):
        t.registered(s, expires=60, now=2.0)
    t.remove_contact("ue1", now=3.0)
    with pytest.raises(LocalProtocolError):
        t.registered(s, expires=60, now=4.0)


def test_exhaustion_signals_a_new_registration():
    n = negotiate(now=0.0)
    t, s = n.ue, n.ue_set
    events(t)
    sa = s.client_sa()
    sa.esp.soft_limit = 2
    sa.esp.protect(b"1")
    t.message_sent(s, now=1.0)
    assert events(t) == []
    sa.esp.protect(b"2")
    t.message_sent(s, now=2.0)
    t.message_sent(s, now=3.0)
    assert events(t) == [NewRegistrationNeeded(s)]  # once


@pytest.mark.parametrize("state", [s for s in SaState if s is not SaState.REMOVED])
@pytest.mark.parametrize("event", list(SaInput))
def test_every_state_input_pair_is_in_the_table_or_refused(state, event):
    # STYLE rule 2: pairs outside the table are errors, never silent no-ops.
    n = negotiate(now=0.0)
    t, s = n.pcscf, n.pcscf_set
    s.state = state
    if (state, event) in TRANSITIONS:
        t._apply(s, event, 1.0)
        assert s.state is not state or TRANSITIONS[(state, event)] is state
    else:
        with pytest.raises(LocalProtocolError, match="not allowed"):
            t._apply(s, event, 1.0)
        assert s.state is state


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["reg", "dereg", "sent", "final", "recv", "tick", "new"]), max_size=12)
)
def test_random_interleavings_keep_the_table_consistent(ops):
    n = negotiate(now=0.0)
    t = n.pcscf
    now = 0.0
    ue, pc = n.ue, t
    for op in ops:
        now += 7.0
        cur = t.current("ue1")
        try:
            if op == "reg" and t.temporary("ue1") is not None:
                t.registered(t.temporary("ue1"), expires=30, now=now)
            elif op == "dereg" and cur is not None:
                t.deregistered(cur, now=now)
            elif op in ("sent", "final") and cur is not None:
                t.message_sent(cur, now=now, final=op == "final")
            elif op == "recv" and cur is not None:
                t.message_received(cur, now=now)
            elif op == "tick":
                now += 300.0
                t.handle_timer(now)
            elif op == "new":
                negotiate(now=now, ue_table=ue, pcscf_table=pc)
        except LocalProtocolError:
            pass  # an input the table refuses is allowed to be refused, never half-applied
        live = t.sets()
        # Invariants: live sets own live SPIs and every inbound SPI maps to a live set.
        for s in live:
            assert s.state is not SaState.REMOVED
            for spi in s.pcscf_spis:
                assert t.spis.is_live(spi)
                assert t.lookup_inbound(spi).sa_set is s
        assert t.spis.live_count == 2 * len(live) + 0
        assert sum(t.ports.in_use(p) for p in t.ports.pairs) == len(live)


def test_spi_collision_with_a_live_sa_is_refused():
    n = negotiate(now=0.0)
    t: SecurityAssociationTable = n.pcscf
    # Reusing SPIs that were not allocated (or are live in another set) is our misuse.
    from imsaka.ipsec import SecurityMechanism

    client = SecurityMechanism(
        "ipsec-3gpp", alg="hmac-md5-96", ealg="null", spi_c=5000, spi_s=5001, port_c=1, port_s=2
    )
    server = SecurityMechanism("ipsec-3gpp", alg="hmac-md5-96", ealg="null",
                               spi_c=n.pcscf_set.pcscf_spis[0], spi_s=n.pcscf_set.pcscf_spis[1],
                               port_c=3, port_s=4)  # fmt: skip
    with pytest.raises(LocalProtocolError, match="spi"):
        t.create_temporary("ue2", now=1.0, ue_ip="127.0.0.1", pcscf_ip="127.0.0.1",
                           client=client, server=server, ik=bytes(16), ck=bytes(16))  # fmt: skip


def test_a_set_with_repeated_spis_is_refused():
    from imsaka.ipsec import SaSet, derive_esp_keys

    keys = derive_esp_keys("null", "aes-gcm", ik=bytes(16), ck=bytes(16))
    with pytest.raises(LocalProtocolError, match="four SPIs"):
        SaSet(set_id=1, local_role="ue", ue_ip="127.0.0.1", pcscf_ip="127.0.0.1",
              ue_ports=PortPair(1, 2), pcscf_ports=PortPair(3, 4), ue_spis=(300, 301),
              pcscf_spis=(301, 302), keys=keys, now=0.0, lifetime=10.0)  # fmt: skip


def test_upper_case_tokens_and_colliding_spis_before_any_change():
    import dataclasses

    from imsaka.ipsec import SecurityMechanism

    t = SecurityAssociationTable("pcscf")
    (spi_pc, spi_ps), _ = t.allocate_local()
    client = SecurityMechanism(
        "ipsec-3gpp",
        alg="HMAC-SHA-1-96",
        ealg="AES-CBC",
        spi_c=7001,
        spi_s=7002,
        port_c=5062,
        port_s=5064,
    )
    server = SecurityMechanism("ipsec-3gpp", alg="hmac-sha-1-96", ealg="aes-cbc", spi_c=spi_pc,
                               spi_s=spi_ps, port_c=6100, port_s=6101)  # fmt: skip
    s = t.create_temporary("ue", now=0.0, ue_ip="127.0.0.1", pcscf_ip="127.0.0.1",
                           client=client, server=server, ik=bytes(16), ck=bytes(16))  # fmt: skip
    assert s.keys.alg == "hmac-sha-1-96" and s.keys.ealg == "aes-cbc"
    # A second 401 whose UE SPIs collide with ours is refused before the first set goes.
    (spi_pc2, spi_ps2), _ = t.allocate_local()
    bad_client = dataclasses.replace(client, spi_c=spi_pc2)
    server2 = dataclasses.replace(server, spi_c=spi_pc2, spi_s=spi_ps2)
    with pytest.raises(LocalProtocolError, match="four SPIs"):
        t.create_temporary("ue", now=1.0, ue_ip="127.0.0.1", pcscf_ip="127.0.0.1",
                           client=bad_client, server=server2, ik=bytes(16), ck=bytes(16))  # fmt: skip
    assert s.state is SaState.TEMPORARY and t.temporary("ue") is s


def test_answers_only_keeps_an_established_set_until_its_end_then_drops_it():
    """A UE's set ended by the terminated NOTIFY that came over it (TS 24.229 §5.1.1.7):
    no longer the contact's established set, still there for the answers to that
    NOTIFY's retransmissions until `until`, then removed; a set not yet established goes
    at once."""
    n = negotiate(now=1000.0)
    t, s = n.ue, n.ue_set
    t.registered(s, expires=600, now=1010.0)
    events(t)
    t.answers_only(s, until=1042.0, now=1010.0, reason="network-initiated de-registration")
    assert s.state is SaState.DRAINING and s.live and t.next_deadline() == 1042.0
    t.handle_timer(1041.0)
    assert s.live and not any(isinstance(e, SaSetRemoved) for e in events(t))
    t.handle_timer(1042.0)
    assert s.state is SaState.REMOVED and [type(e) for e in events(t)] == [SaSetRemoved]
    fresh = negotiate(now=2000.0)
    fresh.ue.answers_only(fresh.ue_set, until=2032.0, now=2000.0, reason="x")
    assert fresh.ue_set.state is SaState.REMOVED
