"""A UE keeps itself registered through an outage of its P-CSCF (TS 24.229 §5.1.1.4.1;
RFC 5626 §4.5 back-off), through the whole core on loopback.

The P-CSCF is down for longer than the UE's refresh and the initial registration that
follows it (each runs out at Timer F). A UE with `recovery_base_time` then waits
rand(½…1) · base · 2^failures and registers again, and again, until the P-CSCF is
back; without it the UE stays failed (the previous behaviour, kept for tests and load
runs that decide for themselves)."""

from __future__ import annotations

import asyncio
import dataclasses

from imsaka.sip.transaction import TimerConfig
from imsaka.ue.client import UeClient
from imsaka.ue.core import RecoveryScheduled, RegisteringAnew, RegistrationFailed, UeState
from tests.polling import eventually

# Timer F = 64·T1 = 3.2 s instead of 32 s.
FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
DOWN = 7.0  # the refresh (3.2 s) and the initial registration after it (3.2 s) run out


async def test_a_ue_registers_again_by_itself_once_its_pcscf_is_back(home_network, subscribers):
    net = home_network
    impu = subscribers[0].impus[0]
    config = dataclasses.replace(net.ue_config(subscribers[0]), recovery_base_time=1)
    seen: list[object] = []
    async with UeClient(config, observers=[net.trace], timers=FAST) as ue:
        ue.on_event = seen.append
        assert (await ue.register(10)).ok
        outage = asyncio.ensure_future(net.restart_pcscf(down=DOWN))
        await asyncio.sleep(0.2)  # the P-CSCF is down now
        result = await ue.reregister(15)
        assert not result.ok and result.status == 408, result
        kinds = [type(e) for e in seen]
        assert RegisteringAnew in kinds and RegistrationFailed in kinds
        assert RecoveryScheduled in kinds
        await outage
        assert await eventually(lambda: ue.core.state is UeState.REGISTERED, timeout=15)
        recoveries = [e for e in seen if isinstance(e, RecoveryScheduled)]
        assert all(0.5 * 2**r.failures <= r.after <= 2**r.failures for r in recoveries)
        assert ue.core.recoveries == 0
        contact = ue.core.contact_uri(protected=True).strip("<>")
        assert list(net.scscf.scscf.core.registrations[impu].contacts) == [contact]
        census = net.pcscf.census()
        assert census["registrations"] == 1 and census["sa_sets"] == 1, census
        assert (await ue.deregister(10)).ok


async def test_a_reg_event_subscription_that_could_not_be_made_is_made_again(
    home_network, subscribers
):
    """Every copy of the UE's first reg-event SUBSCRIBE is lost: its transaction runs
    out (Timer F), and a UE with `recovery_base_time` subscribes anew (a new dialog)
    after the back-off, so that it hears of a network-initiated de-registration
    (TS 24.229 §5.1.1.3, §5.1.1.7) after all."""
    net = home_network
    config = dataclasses.replace(net.ue_config(subscribers[1]), recovery_base_time=1)
    async with UeClient(config, observers=[net.trace], timers=FAST) as ue:
        send = ue.send_protected
        lost: list[bytes] = []  # every copy of the first SUBSCRIBE (one Call-ID)
        first: list[bytes] = []  # that Call-ID, once seen

        def lose_the_first_subscribe(sa, data: bytes) -> bool:
            if data.startswith(b"SUBSCRIBE "):
                call_id = data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0]
                if not first:
                    first.append(call_id)
                if call_id == first[0]:
                    lost.append(data)
                    return True
            return send(sa, data)

        ue.send_protected = lose_the_first_subscribe  # type: ignore[method-assign]
        assert (await ue.register(10)).ok
        assert await ue.wait_subscribed(15)
        assert len(lost) >= 2  # the SUBSCRIBE and its retransmissions, all lost
        assert ue.core.subscription.call_id.encode() != first[0]
        assert (await net.hss.deregister_impi(subscribers[1].impi)).get("ok")
        assert await ue.wait_network_deregistration(5) == "rejected"


async def test_without_recovery_the_ue_stays_failed(home_network, subscribers):
    net = home_network
    async with UeClient(net.ue_config(subscribers[0]), timers=FAST) as ue:
        assert (await ue.register(10)).ok
        outage = asyncio.ensure_future(net.restart_pcscf(down=DOWN))
        await asyncio.sleep(0.2)
        assert not (await ue.reregister(15)).ok
        await outage
        await asyncio.sleep(2.5)  # longer than a first back-off with base-time 1
        assert ue.core.state is UeState.FAILED and ue.core.next_deadline() is None


def test_the_cli_keeps_a_staying_ue_registered_unless_the_file_says_otherwise(tmp_path):
    """`imsaka ue register --stay`: RFC 5626's base-time of 30 s unless ue.toml sets
    `recovery_base_time` (0 switches it off); a plain registration keeps none."""
    import argparse

    from imsaka.ue import cli

    seen = []

    async def fake_register(config, args):
        seen.append(config.recovery_base_time)
        return 0

    base = (
        'impi = "a@home1.net"\nimpus = ["sip:a@home1.net"]\nhome_domain = "home1.net"\n'
        f'k = "{"00" * 16}"\nopc = "{"11" * 16}"\n'
    )
    plain, off = tmp_path / "ue.toml", tmp_path / "off.toml"
    plain.write_text(base)
    off.write_text(base + "recovery_base_time = 0\n")
    original = cli._register
    cli._register = fake_register
    try:
        for path, stay in ((plain, 60.0), (plain, 0.0), (off, 60.0)):
            args = argparse.Namespace(
                config=str(path), pcscf=None, timeout=10.0, stay=stay, esp_keys=None, json=False
            )
            assert cli._cmd_register(args) == 0
    finally:
        cli._register = original
    assert seen == [cli.STAY_RECOVERY_BASE_TIME, None, 0]


async def test_a_registration_ended_before_the_ue_heard_of_it_is_made_again(
    home_network, subscribers
):
    """Every 200 OK to the UE's answer to its challenge is lost, and before one gets
    through the operator ends the registration (RTR): the P-CSCF, told by its reg-event
    NOTIFY, lets the set go (the UE has no subscription yet to be told over it), so the
    REGISTER's retransmissions over it are dropped and its transaction runs out. The UE
    starts a new registration at once (TS 33.203 O.3.1.4) and is registered again,
    with no `recovery_base_time`. Before, it failed with 408 (lifecycle chaos seed
    11102, `--devices 2 --scscf-moves`)."""
    net = home_network
    sub = subscribers[2]
    seen: list[object] = []
    lost: list[bytes] = []
    async with UeClient(net.ue_config(sub), observers=[net.trace], timers=FAST) as ue:
        ue.on_event = seen.append
        take = ue.backend.on_message
        ended = asyncio.Event()

        def losing_the_200(msg) -> None:
            if (
                not ended.is_set()
                and msg.data.startswith(b"SIP/2.0 200")
                and b" REGISTER\r\n" in msg.data
            ):
                lost.append(msg.data)
                return
            take(msg)

        ue.backend.on_message = losing_the_200
        attempt = asyncio.ensure_future(ue.register(20))
        pcscf = net.pcscf.core
        assert await eventually(lambda: bool(lost), timeout=5)
        answer = await net.hss.deregister_impi(sub.impi)
        assert answer.get("ok"), answer
        assert await eventually(lambda: sub.impi not in pcscf.registrations, timeout=5)
        ended.set()
        result = await attempt
        assert result.ok, result
        anew = [e for e in seen if isinstance(e, RegisteringAnew)]
        assert len(anew) == 1 and anew[0].unanswered, seen
        assert not [e for e in seen if isinstance(e, RegistrationFailed)]
        assert pcscf.counters["network-deregistered"] == 1
        census = net.pcscf.census()
        assert census["registrations"] == 1 and census["sa_sets"] == 1, census
        assert (await ue.deregister(10)).ok
