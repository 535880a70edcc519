"""A REGISTER retransmitted across an S-CSCF restart on a shared (Redis) store (RFC 3261
§17.2.3, §10.3 step 7): the restarted S-CSCF has none of its predecessor's transactions,
but the binding keeps the top Via branch of the REGISTER that last refreshed it, so the
retransmission (same Call-ID, CSeq and branch) is answered 200 instead of 500 "out of
order"; a different REGISTER with that CSeq is still refused. Found by
`lifecycle_chaos --scscf-restarts` (a 200 lost on its way to the I-CSCF, then a
restart: the I-CSCF's next retransmission met the new S-CSCF)."""

from __future__ import annotations

import pytest

from imsaka.sip import parse_message
from imsaka.sip.transaction import client_key

from .conftest import REALM, HomeNetwork
from .fakes import IMPI
from .test_home_network import full_registration, new_ue, register

_PROTECTED = (
    f'Digest username="{IMPI}", realm="{REALM}", nonce="", uri="sip:registrar.home1.net", '
    'response="", integrity-protected="yes"'
)


async def _to_scscf(net: HomeNetwork, text: bytes):
    """The REGISTER as the I-CSCF sends it, straight to the S-CSCF. (A retransmission
    that outlived our side's transaction, too: that one is forgotten first, as the
    I-CSCF's is not.)"""
    request = parse_message(text)
    layer = net.client.layer
    layer._client.pop(client_key(request), None)
    return await net.client.send_request(request, ("127.0.0.1", net.scscf_port))


@pytest.mark.redis
async def test_a_retransmission_after_a_restart_is_not_out_of_order(redis_home):
    net = redis_home.net
    _, r200 = await full_registration(net, new_ue())
    assert r200.status == 200
    refresh = register(net, cseq=3, protected=True, authorization=_PROTECTED).to_bytes()
    assert (await _to_scscf(net, refresh)).status == 200
    stored = await net.scscf.scscf.store.get(r200.to.uri)
    branch = parse_message(refresh).via[-1].branch  # the UE's: no proxy changes it
    assert [c.branch for c in stored.contacts.values()] == [branch]
    await redis_home.restart_scscf()
    again = await _to_scscf(net, refresh)  # its retransmission, the same octets
    assert again.status == 200, again
    assert again.get("contact")
    # another REGISTER (the UE's Via another branch) with the same Call-ID and CSeq:
    # still out of order
    other = register(net, cseq=3, protected=True, authorization=_PROTECTED).to_bytes()
    other = other.replace(branch.encode(), b"z9hG4bKanother")
    assert parse_message(other).via[-1].branch != branch
    refused = await _to_scscf(net, other)
    assert refused.status == 500 and "out-of-order" in refused.reason
    assert net.scscf.scscf.core.counters["out_of_order"] == 1


@pytest.mark.redis
async def test_the_retransmission_is_answered_from_the_store_without_a_second_sar(redis_home):
    """The same retransmission, the HSS down meanwhile: answered 200 from the stored
    registration, no SAR. Before, it ran the SAR again, which failed (504 with
    Retry-After), so the UE started over with a new contact while the network kept the
    registration it had made: its binding stayed behind (`lifecycle_chaos
    --icscf-restarts --scscf-restarts --hss-restarts`, seed 8000)."""
    from imsaka.diameter import cx

    from .test_home_network import cx_seen

    net = redis_home.net
    _, r200 = await full_registration(net, new_ue())
    assert r200.status == 200
    refresh = register(net, cseq=3, protected=True, authorization=_PROTECTED).to_bytes()
    assert (await _to_scscf(net, refresh)).status == 200
    await redis_home.restart_scscf()
    sars = len([m for m in cx_seen(net, "scscf") if isinstance(m, cx.ServerAssignmentRequest)])
    await net.hss.stop()
    again = await _to_scscf(net, refresh)
    assert again.status == 200, again
    assert again.get("contact") and again.get_all("p-associated-uri")
    after = [m for m in cx_seen(net, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    assert len(after) == sars
    assert net.scscf.scscf.core.counters["retransmission_answered_from_store"] == 1


async def test_the_memory_store_keeps_no_branch(home):
    """With the memory store the transactions absorb retransmissions for as long as the
    bindings live (no restart keeps them): no branch is kept per binding."""
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    reg = home.scscf.scscf.core.registrations[r200.to.uri]
    assert [c.branch for c in reg.contacts.values()] == [""]


@pytest.mark.redis
async def test_a_register_that_comes_while_the_restarted_one_starts_waits_for_it(redis_home):
    """The restarted S-CSCF binds its port, then reads the registrations back and brings
    its Diameter node up; a REGISTER that comes meanwhile (the I-CSCF's retransmission)
    got 501 "Not Implemented" from the endpoint, which had no handler yet, and the
    UE's de-registration failed (`lifecycle_chaos --scscf-restarts --hss-restarts`,
    seed 6102). Now it waits for the handler and is answered as any other."""
    import asyncio

    from imsaka.cscf.registrar import RedisBindingStore

    net = redis_home.net
    _, r200 = await full_registration(net, new_ue())
    assert r200.status == 200
    await net.scscf.stop()

    class SlowStore(RedisBindingStore):
        async def all(self):
            await asyncio.sleep(0.6)  # a long read back: the port is bound meanwhile
            return await super().all()

    starting = asyncio.ensure_future(
        net.start_scscf(SlowStore(redis_home.url, prefix=redis_home.prefix))
    )
    try:
        await asyncio.sleep(0.2)
        assert not starting.done()
        refresh = register(net, cseq=3, protected=True, authorization=_PROTECTED).to_bytes()
        answer = await _to_scscf(net, refresh)
        assert answer.status == 200, answer
        assert starting.done()
        assert net.scscf.scscf.core.counters["reregister_without_aka"] == 1
    finally:
        await starting
