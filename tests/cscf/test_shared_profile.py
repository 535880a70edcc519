"""A PPR (TS 29.228 §6.2.2) at an S-CSCF sharing a Redis binding store: the new
User-Data goes on the stored records, never on a stale copy held here, and an
instance cut off from the store answers DIAMETER_TOO_BUSY (the HSS tries the next
instance, RFC 6733 §7.1.3) rather than 2001 for a profile it could not write."""

from __future__ import annotations

import pytest

from imsaka.diameter import cx
from imsaka.diameter.errors import RequestRefused

from .conftest import IMPUS
from .fakes import IMPI
from .test_home_network import (
    PROTECTED_YES,
    full_registration,
    new_ue,
    reg_event_subscribe,
    register,
    send,
    two_scscfs_on_redis,
)
from .test_scscf_cut_off import cut_off_pair

pytestmark = pytest.mark.redis

IFC = (
    "<InitialFilterCriteria><Priority>0</Priority><ApplicationServer>"
    "<ServerName>sip:as.home1.net</ServerName></ApplicationServer></InitialFilterCriteria>"
)


def ppr(net, user_data: str) -> cx.PushProfileRequest:
    return cx.PushProfileRequest(
        session_id="hss;1;1",
        origin_host="hss.home1.net",
        origin_realm="home1.net",
        destination_host=net.config.scscf.diameter.host,
        destination_realm="home1.net",
        user_name=IMPI,
        user_data=user_data.encode(),
    )


def with_ifc(user_data: str) -> str:
    return user_data.replace("</ServiceProfile>", IFC + "</ServiceProfile>")


async def test_a_profile_pushed_to_an_instance_holding_a_stale_copy_keeps_the_refresh(
    tmp_path, redis_url
):
    """The second instance took up the registration (a SUBSCRIBE); the UE then
    refreshed it through the first for an hour. The PPR reaches the second: the new
    profile is written on the stored record with the refresh's expiry (before: the
    second wrote its own copy back, with the old expiry, and the registration would
    have ended at it)."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, port, _):
        here, there = net.scscf.scscf, other.scscf
        _, r200 = await full_registration(net, new_ue(), expires=60)
        assert r200.status == 200, r200
        assert (await reg_event_subscribe(net, [], port=port)).status == 200
        assert there.core.lookup(IMPUS[0], there._clock()) is not None
        refresh = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=3600)
        assert (await send(net, refresh)).status == 200
        stored = await here.store.get(IMPUS[0])
        assert stored is not None
        expiry = stored.earliest_expiry()
        assert expiry > here._clock() + 3000
        answer = await there.handle_cx_request(ppr(net, with_ifc(stored.user_data)))
        assert answer.result_code == cx.DIAMETER_SUCCESS
        after = await here.store.get(IMPUS[0])
        assert after is not None and after.earliest_expiry() == expiry
        assert IFC in after.user_data


async def test_a_profile_pushed_to_an_instance_cut_off_is_too_busy(
    tmp_path, redis_url, monkeypatch
):
    async with cut_off_pair(tmp_path, redis_url, monkeypatch) as (net, other, _p, _, proxy):
        there = other.scscf
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200, r200
        stored = await net.scscf.scscf.store.get(IMPUS[0])
        assert stored is not None
        await proxy.cut()
        with pytest.raises(RequestRefused) as refused:
            await there.handle_cx_request(ppr(net, with_ifc(stored.user_data)))
        assert refused.value.result_code == cx.DIAMETER_TOO_BUSY
        assert IFC not in (await net.scscf.scscf.store.get(IMPUS[0])).user_data
