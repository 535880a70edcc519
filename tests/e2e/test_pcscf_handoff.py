"""A planned P-CSCF restart with ``[pcscf].state_file`` (`imsaka.cscf.pcscf_state`),
through the whole core on loopback: the UEs stay registered over the SA sets they have
(TS 33.203 §7; TS 24.229 §5.2.2, §5.2.3).

The stopping P-CSCF (as SIGTERM stops ``imsaka run pcscf``: `PcscfServer.drain`, then
the close) writes its registrations, SA sets with their ESP keys and sequence numbers,
and reg-event subscriptions; the next one reads them back and deletes the file. A UE's
refresh then goes over its old SAs and is answered over them, not answered with ESP
drops and a registration made anew (test_pcscf_restart.py: what a crash still does);
the S-CSCF's NOTIFYs find the subscription they belong to; a challenge under way
completes. A state file it cannot use is set aside and the P-CSCF starts without it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from imsaka.network import Network, NetworkOptions
from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from imsaka.ue.core import RegisteringAnew
from tests.e2e.pcscf_gate import lose_dereg_200
from tests.polling import eventually

# Timer F = 64·T1 = 3.2 s: a test that must see a refresh fail ends sooner.
FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)


@pytest.fixture
async def net(subscribers, tmp_path):
    state = tmp_path / "pcscf.state"
    n = Network(subscribers, NetworkOptions(extra={"pcscf": {"state_file": str(state)}}))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def _state_file(net: Network) -> Path:
    return Path(net.config.pcscf.state_file)


async def _stopped_as_asked(net: Network) -> Path:
    """The P-CSCF stopped as SIGTERM stops it and not started again: its state file."""
    await net.pcscf.drain()
    await net.pcscf.stop()
    net.pcscf = None
    return _state_file(net)


def _counters(pcscf) -> dict[int, tuple[int, ...]]:
    (s,) = pcscf.table.sets()
    return s.counters()


async def test_a_ue_stays_registered_across_a_planned_restart(net, subscribers):
    impu = subscribers[0].impus[0]
    scscf = net.scscf.scscf
    async with UeClient(net.ue_config(subscribers[0]), observers=[net.trace], timers=FAST) as ue:
        assert (await ue.register(10)).ok
        assert await eventually(lambda: len(scscf.subscriptions) == 2)
        subscriptions = set(scscf.subscriptions)
        before = _counters(net.pcscf)
        (old_reg,) = net.pcscf.core.registrations.values()
        challenges = scscf.core.counters["challenge"]

        await net.restart_pcscf(0.3, planned=True)

        pcscf = net.pcscf
        assert pcscf.restored == 1
        assert pcscf.core.counters["registrations-taken-back"] == 1  # (a metric)
        assert not _state_file(net).exists()  # good once: deleted when read
        census = pcscf.census()
        assert census["registrations"] == 1 and census["sa_sets"] == 1, census
        assert census["reg_subscriptions"] == 1, census
        (reg,) = pcscf.core.registrations.values()
        assert (reg.impu, reg.sa.spi_ps, reg.sa.spi_us) == (
            old_reg.impu,
            old_reg.sa.spi_ps,
            old_reg.sa.spi_us,
        )
        assert _counters(pcscf) == before  # every SA's sequence state as it was

        result = await ue.reregister(10)
        assert result.ok and result.protected, result
        assert not [e for e in result.events if isinstance(e, RegisteringAnew)], result.events
        # over the old set, not challenged (integrity-protected="yes"), nothing dropped
        assert scscf.core.counters["challenge"] == challenges
        assert not pcscf.backend.drops, pcscf.backend.drops
        assert not ue.backend.drops, ue.backend.drops
        after = _counters(pcscf)
        # on from where they were (the REGISTER in on spi-s, its 200 out on the UE's spi-c)
        assert all(after[spi][0] >= before[spi][0] for spi in after), (before, after)
        assert sum(after[spi][0] > before[spi][0] for spi in after) == 2, (before, after)
        assert set(scscf.subscriptions) == subscriptions  # none made anew
        assert pcscf.core.counters["notify-unknown-subscription"] == 0

        # the network ends the registration: the restored subscription hears it, the
        # UE is told over its SAs, and the P-CSCF lets the set go
        assert (await net.hss.deregister_impi(subscribers[0].impi)).get("ok")
        assert await eventually(lambda: impu not in scscf.core.registrations)
        assert await eventually(lambda: pcscf.census()["registrations"] == 0, timeout=10)
        assert await eventually(lambda: pcscf.census()["sa_sets"] == 0, timeout=10)
        assert pcscf.core.counters["notify-unknown-subscription"] == 0


async def test_a_challenge_under_way_completes_across_a_planned_restart(net, subscribers):
    """The UE's challenge response is lost on its way in and the P-CSCF restarts: its
    retransmission comes over the temporary set the new P-CSCF took back, and is the
    one registration (one challenge, one AKA run)."""
    held: list = []
    incoming = net.pcscf._incoming

    def gate(data: bytes, arrival) -> None:
        if arrival.spi is not None and data.startswith(b"REGISTER ") and not held:
            held.append(data)
            return
        incoming(data, arrival)

    net.pcscf._incoming = gate
    scscf = net.scscf.scscf
    async with UeClient(net.ue_config(subscribers[0]), observers=[net.trace]) as ue:
        task = asyncio.ensure_future(ue.register(20))
        assert await eventually(lambda: bool(held))
        await net.restart_pcscf(0.1, planned=True)
        assert net.pcscf.restored == 1
        (reg,) = net.pcscf.core.registrations.values()
        assert reg.state.value == "challenged" and reg.temporary is not None
        result = await task
        assert result.ok and result.protected, result
        assert not [e for e in result.events if isinstance(e, RegisteringAnew)]
        assert scscf.core.counters["challenge"] == 1
        assert net.pcscf.census()["sa_sets"] == 1
        assert (await ue.deregister(10)).ok
    assert await eventually(lambda: net.pcscf.census()["sa_sets"] == 0)


async def test_the_state_file_is_readable_by_its_owner_only(net, subscribers):
    async with UeClient(net.ue_config(subscribers[0])) as ue:
        assert (await ue.register(10)).ok
        path = await _stopped_as_asked(net)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        doc = json.loads(path.read_text())
        (record,) = doc["registrations"]
        assert record["impi"] == subscribers[0].impi
        # ESP keys only: the P-CSCF never keeps IK/CK, and the file holds no secret
        # of the subscriber's
        text = path.read_text()
        for secret in (subscribers[0].k, subscribers[0].opc):
            assert secret.hex() not in text
        await net.restart_pcscf()
        assert net.pcscf.restored == 1
        assert (await ue.deregister(10)).ok


async def test_a_crash_writes_nothing(net, subscribers):
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        await net.restart_pcscf()  # not planned: as a crash, nothing is written
        assert not _state_file(net).exists()
        assert net.pcscf.restored == 0
        result = await ue.reregister(20)
        assert result.ok
        assert [e for e in result.events if isinstance(e, RegisteringAnew)]


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"format": "imsaka-pcscf-state", "version": 99}', b"[]"],
)
async def test_a_state_file_it_cannot_use_is_set_aside(net, subscribers, content, caplog):
    path = _state_file(net)
    await net.pcscf.stop()
    net.pcscf = None
    path.write_bytes(content)
    await net.restart_pcscf()
    assert net.pcscf.restored == 0
    assert not path.exists()
    assert path.with_name(path.name + ".rejected").read_bytes() == content
    assert any("not used" in r.getMessage() for r in caplog.records)
    async with UeClient(net.ue_config(subscribers[0])) as ue:
        assert (await ue.register(10)).ok
        assert (await ue.deregister(10)).ok


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_imsaka_run_pcscf_hands_over_on_sigterm(subscribers, tmp_path):
    """The functions as ``imsaka run`` processes: SIGTERM to the P-CSCF's, a new one
    started from the same file, and the UE's refresh goes over its old SAs."""
    state = tmp_path / "pcscf.state"
    net = Network(
        subscribers,
        NetworkOptions(processes=True, extra={"pcscf": {"state_file": str(state)}}),
    )
    try:
        await net.start()
        async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
            assert (await ue.register(20)).ok
            assert await net.restart_process("pcscf") == 0
            assert not state.exists()
            census = await net.census("pcscf")
            assert (census["registrations"], census["sa_sets"]) == (1, 1), census
            # taken back, or made anew at the start when its SUBSCRIBE was unanswered
            # at the stop
            for _ in range(100):
                if (await net.census("pcscf"))["reg_subscriptions"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert (await net.census("pcscf"))["reg_subscriptions"] == 1
            result = await ue.reregister(20)
            assert result.ok and result.protected, result
            assert not [e for e in result.events if isinstance(e, RegisteringAnew)]
            assert not ue.backend.drops, ue.backend.drops
            events = await net.events("pcscf")
            assert events.get(("pcscf", "challenges"), 0) == 0
            assert events[("pcscf", "registrations-taken-back")] == 1
            assert (await ue.deregister(20)).ok
        assert "Traceback" not in net.process_errors("pcscf")
    finally:
        net.kill_processes()
        await net.stop()


async def test_a_subscription_unanswered_at_the_stop_is_made_anew_at_the_start(net, subscribers):
    """The P-CSCF's reg-event SUBSCRIBE (TS 24.229 §5.2.3) has had neither its 2xx nor
    a NOTIFY when it stops: the dialog is not known to it, so the next one subscribes
    anew as it starts; the S-CSCF's NOTIFYs in the old one then meet a P-CSCF that
    knows no such subscription and are refused 481, which ends it there."""
    own = f"@{net.config.pcscf.name}\r\n".encode()
    held: list = []
    incoming = net.pcscf._incoming

    def gate(data: bytes, arrival) -> None:
        head = data.split(b"\r\n\r\n", 1)[0]
        if own in head and (b"NOTIFY " in head[:7] or b" SUBSCRIBE\r\n" in head):
            held.append(data)
            return
        incoming(data, arrival)

    net.pcscf._incoming = gate
    scscf = net.scscf.scscf
    async with UeClient(net.ue_config(subscribers[0])) as ue:
        assert (await ue.register(10)).ok
        assert await eventually(lambda: len(scscf.subscriptions) == 2 and len(held) >= 2)
        (old,) = net.pcscf.core.subscriptions.values()
        assert not old.confirmed
        await net.restart_pcscf(planned=True)
        assert net.pcscf.restored == 1
        assert net.pcscf.core.counters["reg-resubscribed"] == 1
        (new,) = net.pcscf.core.subscriptions.values()
        assert new.call_id != old.call_id
        assert await eventually(lambda: new.confirmed)
        assert await eventually(
            lambda: old.call_id not in {s.call_id for s in scscf.subscriptions}, timeout=10
        )
        assert len(scscf.subscriptions) == 2
        assert (await ue.deregister(10)).ok


async def test_a_deregister_whose_200_was_lost_is_answered_by_the_next_pcscf(net, subscribers):
    """The 200 OK to the UE's de-REGISTER is lost on its way out and the P-CSCF
    restarts: the set it left over is carried with that answer (its hold, RFC 3261
    §17.2.2; TS 33.203 §7.4), so the UE's retransmission gets it again over the same
    SA from the next P-CSCF (before, the de-REGISTER ran out: 408)."""
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        lost = lose_dereg_200(net.pcscf)
        net.pcscf.core.dereg_grace = 3.0  # (Timer J: 32 s) the hold carried with its end
        task = asyncio.ensure_future(ue.deregister(10))
        assert await eventually(lambda: bool(lost))
        assert net.pcscf.census()["sa_sets_in_grace"] == 1
        await net.restart_pcscf(planned=True)
        assert net.pcscf.census()["sa_sets_in_grace"] == 1
        result = await task
        assert result.ok, result
        assert net.pcscf.core.counters["deregister-answered-again-in-grace"] == 1
    assert await eventually(lambda: net.pcscf.census()["sa_sets_in_grace"] == 0, timeout=10)


async def test_a_record_the_table_cannot_take_is_skipped_not_fatal(net, subscribers, caplog):
    """A set whose SPI this P-CSCF would never allocate (below its range): that one
    registration is not taken back (one warning); the P-CSCF starts and serves."""
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        path = await _stopped_as_asked(net)
        doc = json.loads(path.read_text())
        doc["registrations"][0]["sa"]["spi_pc"] = 5
        path.write_text(json.dumps(doc))
        await net.restart_pcscf()
        assert net.pcscf.restored == 0
        assert any("not taken back" in r.getMessage() for r in caplog.records)
        result = await ue.reregister(20)  # as after a crash: registers anew
        assert result.ok and [e for e in result.events if isinstance(e, RegisteringAnew)]


async def test_a_registration_ended_while_no_pcscf_held_it_goes_after_a_long_stop(
    subscribers, tmp_path
):
    """Stopped as asked, the P-CSCF is not started again for longer than the S-CSCF
    retransmits a NOTIFY, and the HSS de-registers the user meanwhile (RTR): the
    terminated NOTIFYs find no P-CSCF. Its successor takes the registration back as
    written, sees the file is older than a transaction's lifetime, and refreshes the
    subscription at once (RFC 6665 §4.1.2.2); the S-CSCF answers 480 (not registered)
    and the registration and its SAs go after `dereg_grace` (before 2026-11-28 they
    stayed until expiry). A UE still registered at such a start keeps its registration,
    its subscription refreshed once."""
    state = tmp_path / "pcscf.state"
    extra = {"pcscf": {"state_file": str(state), "dereg_grace": 0.5}}
    net = Network(subscribers[:2], NetworkOptions(extra=extra))
    await net.start()
    try:
        gone, stays = subscribers[0], subscribers[1]
        async with (
            UeClient(net.ue_config(gone), timers=FAST) as ue,
            UeClient(net.ue_config(stays), timers=FAST) as other,
        ):
            assert (await ue.register(10)).ok and (await other.register(10)).ok
            assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 2)
            scscf = net.scscf.scscf
            # its NOTIFYs given up after 3.2 s (Timer F, as 32 s in the product)
            net.scscf.endpoint.layer.config = FAST
            path = await _stopped_as_asked(net)
            assert (await net.hss.deregister_impi(gone.impi)).get("ok")
            assert await eventually(lambda: scscf.core.lookup(gone.impus[0], 0.0) is None)
            await asyncio.sleep(3.5)  # every NOTIFY of the end given up
            doc = json.loads(path.read_text())
            doc["saved_at"] -= 60.0  # written a minute ago: NOTIFYs since were lost
            path.write_text(json.dumps(doc))

            await net.restart_pcscf()

            pcscf = net.pcscf
            assert pcscf.restored == 2
            counters = pcscf.core.counters
            assert await eventually(lambda: counters["reg-subscription-audited"] == 2)
            assert await eventually(lambda: counters["audit-found-not-registered"] == 1)
            assert gone.impi in pcscf.core.registrations  # (for dereg_grace yet)
            census = pcscf.census
            assert await eventually(lambda: census()["registrations"] == 1, 3), census()
            assert set(pcscf.core.registrations) == {stays.impi}
            assert await eventually(lambda: census()["sa_sets"] == 1, 3), census()
            assert census()["reg_subscriptions"] == 1
            refresh = await other.reregister(10)
            assert refresh.ok and refresh.protected
            assert not [e for e in refresh.events if isinstance(e, RegisteringAnew)]
    finally:
        await net.stop()


async def test_a_restart_soon_after_the_stop_refreshes_nothing(net, subscribers):
    """Started again within a transaction's lifetime, the P-CSCF would still get what
    the S-CSCF sends meanwhile (its NOTIFYs are retransmitted): no audit."""
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        assert await eventually(lambda: net.pcscf.core.counters["reg-subscribed"] == 1)
        await net.restart_pcscf(0.2, planned=True)
        assert net.pcscf.restored == 1
        await asyncio.sleep(0.5)
        assert net.pcscf.core.counters["reg-subscription-audited"] == 0
