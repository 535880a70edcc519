"""A user moves to another S-CSCF (TS 24.229 §5.3.1.2: the I-CSCF chose anew when the
serving one did not answer), through a real HSS and two S-CSCFs of their own
Server-Names on loopback: the HSS tells the old one with an RTR NEW_SERVER_ASSIGNED
(TS 29.228 §6.1.3, TS 29.229 §6.3.17), which gives up the registration without a
SAR and ends its reg-event subscriptions as moving on (RFC 6665 §4.1.3
"deactivated", a reginfo telling no change), so that the P-CSCF subscribes again,
now at the S-CSCF that serves the user, and keeps the UE's SAs."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

from imsaka.cscf.scscf import ScscfServer
from imsaka.diameter import cx
from imsaka.hss.models import RegState
from tests.conftest import free_port

from .conftest import HSS_HOST, IMPUS, SCSCF2_HOST, HomeNetwork
from .fakes import IMPI
from .test_home_network import (
    PROTECTED_YES,
    answer_auth,
    as_from_icscf,
    cx_seen,
    new_ue,
    register,
    registered_and_subscribed_at,
    wait_for,
)


@asynccontextmanager
async def with_second_scscf(tmp_path):
    """The home network and a second S-CSCF, `scscf2`, of its own Server-Name (not an
    instance of the first). Yields (net, the second's server, its port, `via_icscf`:
    a request as the I-CSCF forwards it to the second one)."""
    net = HomeNetwork(tmp_path)
    other = None
    try:
        await net.start()
        port = free_port(2)
        name = f"sip:scscf2.home1.net:{port}"
        diameter = replace(net.config.scscf.diameter, host=SCSCF2_HOST)
        config = replace(net.config.scscf, name="scscf2.home1.net", port=port, server_name=name)
        other = ScscfServer(replace(config, diameter=diameter), reconnect=0.5)
        await other.start()
        await other.node.wait_open(HSS_HOST, timeout=5)

        yield net, other, port, partial(as_from_icscf, net, to=name)
    finally:
        if other is not None:
            await other.stop()
        await net.stop()


async def test_the_scscf_a_user_moved_from_lets_go_and_moves_its_subscribers_on(tmp_path):
    async with with_second_scscf(tmp_path) as (net, other, port, via_icscf):
        core = net.scscf.scscf.core
        notifies = await registered_and_subscribed_at(net, net.scscf_port)
        assert core.registrations
        # The UE's next re-REGISTER, integrity-protected, goes to scscf2 (scscf1 did not
        # answer the I-CSCF): nothing registered there, so it is challenged.
        to_other = ("127.0.0.1", port)
        r401 = await net.client.send_request(
            via_icscf(register(net, cseq=3, protected=True, authorization=PROTECTED_YES)),
            to_other,
        )
        assert r401.status == 401, r401
        auth = answer_auth(r401.www_authenticate, new_ue())
        r200 = await net.client.send_request(
            via_icscf(register(net, cseq=4, protected=True, authorization=auth)), to_other
        )
        assert r200.status == 200, r200
        assert IMPUS[0] in other.scscf.core.registrations
        view = await net.store.get_subscriber(IMPI)
        assert view.scscf_name == f"sip:scscf2.home1.net:{port}"

        # scscf1 is told, gives the registration up and moves its subscriber on
        await wait_for(lambda: not core.registrations and len(notifies) == 2)
        rtrs = [
            m
            for m in cx_seen(net, "scscf", "in")
            if isinstance(m, cx.RegistrationTerminationRequest)
        ]
        assert [r.deregistration_reason.reason_code for r in rtrs] == [
            cx.ReasonCode.NEW_SERVER_ASSIGNED
        ]
        last = notifies[-1]
        assert last.get("Subscription-State") == "terminated;reason=deactivated"
        assert b'state="partial"' in last.body and b"<registration" not in last.body
        assert await net.scscf.scscf.store.get(IMPUS[0]) is None
        assert core.counters["subscription_moved_on"] == 1
        # no de-registration SAR from scscf1: the HSS has the user at scscf2
        sars = [
            m.server_assignment_type
            for m in cx_seen(net, "scscf")
            if isinstance(m, cx.ServerAssignmentRequest)
        ]
        assert sars == [cx.ServerAssignmentType.REGISTRATION]
        view = await net.store.get_subscriber(IMPI)
        assert {u.reg_state for u in view.impus} == {RegState.REGISTERED}
        # scscf2 serves it: the next protected re-REGISTER there, unchallenged
        again = await net.client.send_request(
            via_icscf(register(net, cseq=5, protected=True, authorization=PROTECTED_YES)),
            to_other,
        )
        assert again.status == 200, again
