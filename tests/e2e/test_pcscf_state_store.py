"""The P-CSCF's registrations in Redis as it runs (``[pcscf].state_store``,
`imsaka.cscf.pcscf_store`), through the whole core on loopback: a P-CSCF that stopped
without warning comes back with the UEs it served (TS 24.229 §5.2.2; TS 33.203 §7).

After a crash the records are as last written: every outbound SA goes on 2^20 past
the sequence number written (the UE takes it: it is above any it had), every inbound
window counts all up to its written top as received (a packet from before the write
is a replay). A registration made after the last write is lost, as without the store;
a stop asked for writes everything exactly (``clean``)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from imsaka.cscf.pcscf import HELD
from imsaka.cscf.pcscf_state import SEQ_MARGIN
from imsaka.cscf.pcscf_store import PcscfStateStore
from imsaka.ipsec.esp import REPLAY
from imsaka.network import Network, NetworkOptions
from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from imsaka.ue.core import RegisteringAnew
from tests.e2e.pcscf_gate import first_held, lose_dereg_200
from tests.polling import eventually

pytestmark = pytest.mark.redis

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
INTERVAL = 0.2


@pytest.fixture
async def net(subscribers, redis_url):
    extra = {"pcscf": {"state_store": redis_url, "state_interval": INTERVAL}}
    n = Network(subscribers, NetworkOptions(extra=extra))
    await n.start()
    own = n.pcscf._own()
    store = PcscfStateStore(redis_url, f"{n.config.pcscf.name}@{own['address']}:{own['port']}")
    try:
        yield n
    finally:
        await n.stop()
        await store.clear()
        await store.close()


def _counters(pcscf) -> dict[int, tuple[int, ...]]:
    (s,) = pcscf.table.sets()
    return s.counters()


async def test_a_ue_stays_registered_across_a_crash(net, subscribers):
    scscf = net.scscf.scscf
    seen: list = []
    async with UeClient(net.ue_config(subscribers[0]), observers=[seen.append], timers=FAST) as ue:
        assert (await ue.register(10)).ok
        assert await eventually(lambda: len(scscf.subscriptions) == 2)
        await asyncio.sleep(3 * INTERVAL)  # written since
        before = _counters(net.pcscf)
        # the last ESP packet the UE sent to the P-CSCF's port-s, to replay after
        port_s = net.pcscf.protected_ports[1]
        (last, *_) = [
            e
            for e in reversed(seen)
            if e.owner == "ue" and e.protocol == "esp" and e.direction == "out"
            and e.dst[1] == port_s
        ]  # fmt: skip
        challenges = scscf.core.counters["challenge"]

        await net.restart_pcscf(0.2)  # at once, nothing written at the stop

        pcscf = net.pcscf
        assert pcscf.restored == 1
        after = _counters(pcscf)
        for spi, value in before.items():
            if len(value) == 1:  # outbound: on past what was written
                assert after[spi] == (value[0] + SEQ_MARGIN,)
            else:  # inbound: the same top, everything up to it received
                assert after[spi][0] == value[0] and after[spi][1] == (1 << 64) - 1
        census = pcscf.census()
        assert (census["registrations"], census["sa_sets"]) == (1, 1), census
        assert await eventually(lambda: pcscf.census()["reg_subscriptions"] == 1)

        # a packet the old P-CSCF took is not taken again
        (sock,) = [p.sock for p in ue.backend._ports.values() if p.address[1] == last.src[1]]
        sock.sendto(last.payload, last.dst)
        assert await eventually(lambda: pcscf.backend.drops.get(REPLAY, 0) == 1)

        result = await ue.reregister(10)
        assert result.ok and result.protected, result
        assert not [e for e in result.events if isinstance(e, RegisteringAnew)], result.events
        assert scscf.core.counters["challenge"] == challenges
        assert not ue.backend.drops, ue.backend.drops
        assert (await ue.deregister(10)).ok
    assert await eventually(lambda: net.pcscf.census()["registrations"] == 0)


async def test_a_registration_made_after_the_last_write_is_lost_as_without_a_store(
    net, subscribers
):
    pcscf = net.pcscf
    pcscf._store_task.cancel()  # no write after the one at the start
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        await net.restart_pcscf()
        assert net.pcscf.restored == 0
        result = await ue.reregister(20)
        assert result.ok
        assert [e for e in result.events if isinstance(e, RegisteringAnew)]


async def test_a_stop_asked_for_writes_everything_exactly(net, subscribers):
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        before = _counters(net.pcscf)
        await net.restart_pcscf(planned=True)
        assert net.pcscf.restored == 1
        assert _counters(net.pcscf) == before  # clean: no margin
        result = await ue.reregister(10)
        assert result.ok and not [e for e in result.events if isinstance(e, RegisteringAnew)]
        assert not ue.backend.drops
        assert (await ue.deregister(10)).ok
        # de-registered: gone from the store at the next write, not taken back again
        await asyncio.sleep(3 * INTERVAL)
        await net.restart_pcscf()
        assert net.pcscf.restored == 0


async def test_a_deregister_whose_200_was_lost_is_answered_after_a_crash(net, subscribers):
    """The set a de-REGISTER's 200 OK left over is held for its retransmissions (RFC
    3261 §17.2.2) and written as a record of its own: after a crash the UE's
    retransmission gets the answer again over the same SA (before, it ran out: 408)."""
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        lost = lose_dereg_200(net.pcscf, every=True)  # (each copy the crashing one sends)
        net.pcscf.core.dereg_grace = 3.0  # (Timer J: 32 s) the hold carried with its end
        task = asyncio.ensure_future(ue.deregister(10))
        assert await eventually(lambda: bool(lost))
        await asyncio.sleep(3 * INTERVAL)  # written since
        await net.restart_pcscf(0.05)  # at once, nothing written at the stop
        assert net.pcscf.census()["sa_sets_in_grace"] == 1
        result = await task
        assert result.ok, result
        assert net.pcscf.core.counters["deregister-answered-again-in-grace"] == 1
        # (a retransmission sent while no P-CSCF listened came back as ICMP)
        assert set(ue.backend.drops) <= {"recv-error"}, ue.backend.drops
    assert await eventually(lambda: net.pcscf.census()["sa_sets_in_grace"] == 0, timeout=10)


def _ok_to_register(head: bytes) -> bool:
    return head.startswith(b"SIP/2.0 200") and b" REGISTER" in head


async def test_a_200_relayed_just_before_a_crash_leaves_the_ues_set_in_use(net, subscribers):
    """The 200 to the challenge response relayed after the last write (it came late),
    then a crash: the store says challenged, the UE took the set as established. Its
    refresh over that set, with new offers, is its next REGISTER (a later CSeq), not a
    bid-down of its challenge response: it goes on over the set (chaos seeds 9861 and
    9862 ended on 494 here)."""
    gate = first_held(net, subscribers[0], _ok_to_register, 10, keep=_ok_to_register)
    async with gate as (ue, task, held, incoming):
        await asyncio.sleep(3 * INTERVAL)  # the challenge response's record written
        store_task, net.pcscf._store_task = net.pcscf._store_task, None
        store_task.cancel()  # ... and nothing after it
        incoming(*held)
        assert (await task).ok
        await net.restart_pcscf(0.05)  # at once, nothing written at the stop
        pcscf = net.pcscf
        assert pcscf.restored == 1
        (reg,) = pcscf.core.registrations.values()
        # as written: challenged, with the challenge response's CSeq (unless the UE's
        # reg-event SUBSCRIBE, sent again over the set, made it established since)
        restored = reg.temporary is not None and reg.sa is None and reg.answered_cseq == 2
        assert restored or pcscf.core.counters["established-by-later-register"] == 1

        result = await ue.reregister(10)
        assert result.ok and result.protected, result
        assert not [e for e in result.events if isinstance(e, RegisteringAnew)], result.events
        assert pcscf.core.counters["established-by-later-register"] == 1
        assert pcscf.core.counters["downgrade-refused"] == 0
        assert (await ue.deregister(10)).ok
    assert await eventually(lambda: net.pcscf.census()["registrations"] == 0)


async def test_redis_away_at_the_start_and_for_a_while(subscribers, caplog):
    """Nothing to read (Redis not answering): the P-CSCF starts without, serves, and
    says so in one line."""
    extra = {"pcscf": {"state_store": "redis://127.0.0.1:1/0", "state_interval": INTERVAL}}
    net = Network(subscribers, NetworkOptions(extra=extra))
    await net.start()
    try:
        async with UeClient(net.ue_config(subscribers[0])) as ue:
            assert (await ue.register(10)).ok
            await asyncio.sleep(3 * INTERVAL)
            assert (await ue.deregister(10)).ok
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("state store" in m and "not read" in m for m in errors), errors
        assert sum("not written" in m for m in errors) == 1, errors  # once per outage
    finally:
        await net.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_imsaka_run_pcscf_killed_comes_back_with_its_ues(subscribers, redis_url):
    """The functions as ``imsaka run`` processes; the P-CSCF's is SIGKILLed and started
    again: the UE's refresh goes over its old SAs."""
    extra = {"pcscf": {"state_store": redis_url, "state_interval": INTERVAL}}
    net = Network(subscribers, NetworkOptions(processes=True, extra=extra))
    cfg = None
    try:
        await net.start()
        cfg = net.config.pcscf
        async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
            assert (await ue.register(20)).ok
            await asyncio.sleep(5 * INTERVAL)
            assert await net.restart_process("pcscf", kill=True) == -9
            census = await net.census("pcscf")
            assert (census["registrations"], census["sa_sets"]) == (1, 1), census
            result = await ue.reregister(20)
            assert result.ok and result.protected, result
            assert not [e for e in result.events if isinstance(e, RegisteringAnew)]
            assert not ue.backend.drops, ue.backend.drops
            assert (await ue.deregister(20)).ok
        assert "Traceback" not in net.process_errors("pcscf")
    finally:
        net.kill_processes()
        await net.stop()
        if cfg is not None:
            store = PcscfStateStore(redis_url, f"{cfg.name}@{cfg.address}:{cfg.port}")
            await store.clear()
            await store.close()


async def test_a_store_it_could_not_read_is_replaced_at_the_first_write(
    subscribers, redis_url, monkeypatch
):
    """Records it never read (Redis away at its start) are not its own: its first
    write replaces them all, so a later crash takes back none of them."""
    from imsaka.ports import free_port

    port = free_port("127.0.0.1")
    extra = {"pcscf": {"state_store": redis_url, "state_interval": INTERVAL}}
    net = Network(subscribers, NetworkOptions(pcscf_port=port, extra=extra))
    store = PcscfStateStore(redis_url, f"pcscf1.home1.net@127.0.0.1:{port}")
    await store.write({"clean": False}, {"stale@x": "{}"}, [])

    async def unreadable(self):
        raise ConnectionError("Redis not answering")

    monkeypatch.setattr(PcscfStateStore, "read", unreadable)
    await net.start()
    try:
        assert net.config.pcscf.name == "pcscf1.home1.net"
        monkeypatch.undo()
        head, records = await store.read()
        assert records == {} and json.loads(head)["clean"] is False
    finally:
        await net.stop()
        await store.clear()
        await store.close()


def _same(stored: object, full: object, at: tuple[float, float], path: str = "") -> None:
    """`stored` (written at some pass) says what `full` (written now) says: times as
    seconds left at each record's own ``saved_at`` (`at`: theirs), so compared as the
    moments they name."""
    if isinstance(full, dict):
        assert isinstance(stored, dict) and stored.keys() == full.keys(), (path, stored, full)
        for k in full:
            if k == "saved_at":
                continue
            s, f = stored[k], full[k]
            if k.endswith("_in") and f is not None:
                assert s is not None and abs((at[0] + s) - (at[1] + f)) < 0.05, (path + k, s, f)
            elif k == "age":
                assert abs((at[0] - s) - (at[1] - f)) < 0.05, (path + k, s, f)
            else:
                _same(s, f, at, f"{path}{k}.")
    else:
        assert stored == full, (path, stored, full)


async def _store_is_a_full_write(pcscf, store) -> None:
    """After a pass, the store holds exactly what a pass over every registration would
    write now."""
    from imsaka.cscf.pcscf_state import held_record, record_of

    await pcscf._store_pass()
    _, raw = await store.read()
    stored = {key: json.loads(text) for key, text in raw.items()}
    now, wall = asyncio.get_running_loop().time(), time.time()
    core = pcscf.core
    full = {}
    for impi, reg in core.registrations.items():
        record = record_of(reg, core.subscription_of(impi), pcscf._sets, now, wall)
        if record is not None:
            full[impi] = record
    for key in core.held_keys():
        record = held_record(core.held_set(key), pcscf._sets, now, wall)
        if record is not None:
            full[key] = record
    assert stored.keys() == full.keys()
    for key, record in full.items():
        _same(stored[key], record, (stored[key]["saved_at"], record["saved_at"]), repr(key))
    return stored.keys()


@pytest.mark.parametrize("reauthenticate", ["never", "always"])
async def test_each_pass_writes_what_changed_and_the_store_is_then_a_full_write(
    subscribers, redis_url, reauthenticate, monkeypatch
):
    """The pass looks only at what the core and the SA table named (O(changes)); after
    each step of two UEs' lives the store holds what writing every record would."""
    extra = {
        "pcscf": {"state_store": redis_url, "state_interval": 3600.0},  # (passes: here)
        "scscf": {"reauthenticate": reauthenticate},
    }
    writes: list[tuple[int, int]] = []  # (records written, records removed) per pass
    write = PcscfStateStore.write

    async def counted(self, head, changed, removed, *, replace=False):
        removed = list(removed)
        writes.append((len(changed), len(removed)))
        await write(self, head, changed, removed, replace=replace)

    monkeypatch.setattr(PcscfStateStore, "write", counted)
    net = Network(subscribers, NetworkOptions(extra=extra))
    store = None
    try:
        await net.start()
        pcscf = net.pcscf
        own = pcscf._own()
        name = f"{net.config.pcscf.name}@{own['address']}:{own['port']}"
        store = PcscfStateStore(redis_url, name)
        scscf = net.scscf.scscf
        async with (
            UeClient(net.ue_config(subscribers[0]), timers=FAST) as a,
            UeClient(net.ue_config(subscribers[1]), timers=FAST) as b,
        ):
            assert (await a.register(10)).ok and (await b.register(10)).ok
            # both UEs' and the P-CSCF's reg-event subscriptions
            assert await eventually(lambda: len(scscf.subscriptions) == 4)
            await _store_is_a_full_write(pcscf, store)
            assert writes[-1] == (2, 0)
            await pcscf._store_pass()  # nothing since: nothing looked at
            assert writes[-1] == (0, 0)

            assert (await a.reregister(10)).ok
            await asyncio.sleep(0.1)
            await _store_is_a_full_write(pcscf, store)
            assert writes[-1] == (1, 0)
            written = pcscf.core.counters["state-store-records-written"]
            assert written == sum(w for w, _ in writes), writes

            # traffic alone (a message to the UE over its set): counters written again
            s = pcscf._sets[pcscf.core.registrations[subscribers[0].impi].sa.spi_ps]
            s.server_sa().esp.protect(b"x")
            pcscf.table.message_sent(s, now=asyncio.get_running_loop().time())
            await _store_is_a_full_write(pcscf, store)
            assert writes[-1] == (1, 0)

            assert (await net.hss.deregister_impi(subscribers[1].impi)).get("ok")
            assert await eventually(lambda: subscribers[1].impi not in pcscf.core.registrations)
            assert subscribers[1].impi not in await _store_is_a_full_write(pcscf, store)
            assert writes[-1][1] == 1

            # the set its 200 OK left over, held for the de-REGISTER's retransmissions
            assert (await a.deregister(10)).ok
            assert await eventually(lambda: not pcscf.core.registrations)
            keys = await _store_is_a_full_write(pcscf, store)
            assert keys and all(k.startswith(HELD) for k in keys), keys
            for key in list(keys):
                pcscf.core._end_grace(pcscf.core._grace[key])  # (Timer J, early)
            assert not await _store_is_a_full_write(pcscf, store)

            assert (await a.register(10)).ok
            await asyncio.sleep(0.1)
            await _store_is_a_full_write(pcscf, store)
            await _store_is_a_full_write(pcscf, store)
            assert writes[-1] == (0, 0)
    finally:
        await net.stop()
        if store is not None:
            await store.clear()
            await store.close()
