"""Open challenges across an S-CSCF restart asked for (SIGTERM, `ScscfServer.drain`):
written to the shared store at the stop (`RegistrarCore.challenges_to_keep`: XRES, the
AKAv2-MD5 or MD5 password, never IK/CK) and taken by the next S-CSCF (`adopt_challenges`), so a UE's
challenge response that meets the new one is answered 200, not challenged again with
one more MAR and AKA run (TS 24.229 §5.4.1.2.1; RFC 3310 §3.3)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from imsaka.cscf.scscf_core import AskAssignment, AskVectors, RegistrarCore
from imsaka.diameter import cx

from .conftest import HomeNetwork
from .fakes import FakeHss, FakeUe
from .test_home_network import answer_auth, cx_seen, empty_auth, new_ue, register, send
from .test_scscf_core import T0, Harness, header, policy


def _handed_over(core: RegistrarCore, hss: FakeHss, now: float) -> Harness:
    """A new core taking `core`'s open challenges (through JSON, as a store does)."""
    records = json.loads(json.dumps(core.challenges_to_keep(now)))
    after = Harness(RegistrarCore(policy()), hss)
    assert after.core.adopt_challenges(records, now) == len(records)
    return after


def test_a_response_to_the_challenge_of_the_one_before_is_answered_200():
    hss = FakeHss()
    before = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    r401 = before.send(ue.register())
    assert r401.status == 401
    (kept,) = before.core.challenges_to_keep(T0 + 1)
    assert "ik" not in kept and "ck" not in kept and kept["left"] == 239.0
    after = _handed_over(before.core, hss, T0 + 1)
    mars = hss.mars
    r200 = after.send(ue.answer(header(r401, "WWW-Authenticate")[0]), T0 + 2)
    assert r200.status == 200 and hss.mars == mars
    assert isinstance(after.asks[-1], AskAssignment)
    assert after.core.counters["challenge_restored"] == 1
    assert after.core.pending_counts()["challenges"] == 0


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_an_akav2_challenge_is_kept_with_its_password_and_never_ik_or_ck(right):
    """AKAv2-MD5's digest password is made from XRES, IK and CK (RFC 4169 §3): the
    record carries that password, made by the S-CSCF that challenged, and no IK, CK or
    XRES, so the next S-CSCF verifies the answer (200 without a second MAR) and refuses
    a wrong one; before, such a challenge was not kept and the UE was challenged again."""
    hss = FakeHss(algorithm="AKAv2-MD5")
    before = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    r401 = before.send(ue.register())
    assert r401.status == 401 and "algorithm=AKAv2-MD5" in header(r401, "WWW-Authenticate")[0]
    (kept,) = before.core.challenges_to_keep(T0 + 1)
    vector = next(iter(before.core._challenges.values())).vector
    text = json.dumps(kept)
    for secret in (vector.ik, vector.ck, vector.xres):
        assert secret.hex() not in text
    assert kept["xres"] == "" and len(bytes.fromhex(kept["password"])) == 24  # base64 of 16
    after = _handed_over(before.core, hss, T0 + 1)
    mars = hss.mars
    answer = ue.answer(header(r401, "WWW-Authenticate")[0])
    if not right:
        answer = replace(answer, auth=replace(answer.auth, response="0" * 32))
    r = after.send(answer, T0 + 2)
    assert r.status == (200 if right else 403) and hss.mars == mars
    assert after.core.counters["challenge_restored"] == 1


def test_an_auts_to_a_kept_challenge_resynchronises_through_its_rand():
    hss = FakeHss()
    before = Harness(RegistrarCore(policy()), hss)
    ue = FakeUe()
    for ind in range(32):  # an ISIM far ahead of the HSS
        ue.isim.sqn_array.accept((1000 << 5) | ind)
    r401 = before.send(ue.register())
    after = _handed_over(before.core, hss, T0)
    r = after.send(ue.answer(header(r401, "WWW-Authenticate")[0]))
    assert r.status == 401 and hss.resyncs == 1
    (ask,) = [a for a in after.asks if isinstance(a, AskVectors)]
    assert ask.resync is not None
    assert after.send(ue.answer(header(r, "WWW-Authenticate")[0])).status == 200


def test_what_is_not_kept_and_what_is_not_taken():
    hss = FakeHss()
    before = Harness(RegistrarCore(policy()), hss)
    before.send(FakeUe().register())
    assert before.core.challenges_to_keep(T0 + 240) == []  # run out
    (record,) = before.core.challenges_to_keep(T0)
    core = RegistrarCore(policy())
    bad = [
        {**record, "algorithm": "AKAv2-MD5"},  # with no password made from IK and CK
        {**record, "left": -1},
        {**record, "xres": "not hex"},
        {k: v for k, v in record.items() if k != "nonce"},
        "not a record",
    ]
    assert core.adopt_challenges(bad, T0) == 0
    assert core.adopt_challenges([record, record], T0) == 1  # (one nonce, once)
    assert core.next_deadline() == T0 + 240


@pytest.mark.redis
@pytest.mark.parametrize("share", [False, True], ids=["list-at-the-stop", "shared-per-nonce"])
async def test_a_challenge_response_after_a_restart_asked_for_gets_its_200(
    tmp_path, redis_url, share
):
    """Through the I-CSCF and the S-CSCF on Redis: the 401 from one S-CSCF, a drain and
    stop, the response to the next one: 200, with one MAR in all. Without
    `share_challenges` the open challenges are written as a list at the stop and taken
    at the start; with it, each is in the store under its nonce already, so no list is
    written (it would be held twice: the next start could answer a challenge another
    instance took and verified)."""
    from .conftest import RedisHome

    redis_home = RedisHome(
        HomeNetwork(tmp_path, binding_store=redis_url, share_challenges=share), redis_url
    )
    net = redis_home.net
    try:
        await net.start()
        await redis_home.restart_scscf()  # on the test's own prefix
        ue = new_ue()
        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401
        await net.scscf.drain()
        await redis_home.restart_scscf()
        scscf = net.scscf.scscf
        counters = scscf.core.counters
        assert counters["challenge_restored"] == (0 if share else 1)
        auth = answer_auth(r401.www_authenticate, ue)
        r200 = await send(net, register(net, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200, r200
        assert counters["challenge_taken_from_store"] == (1 if share else 0)
        assert counters["challenge"] == 0  # (none of its own)
        reader = redis_home.store()
        try:
            assert await reader.take_challenges(scscf._contact) == []  # taken once
            assert await reader.take_challenge(r401.www_authenticate.get("nonce")) is None
        finally:
            await reader.close()
    finally:
        cleanup = redis_home.store()
        await cleanup.clear()
        await cleanup.close()
        await net.stop()


@pytest.mark.redis
async def test_after_a_crash_the_response_is_verified_from_the_challenge_kept_at_once(redis_home):
    """Without the drain (a crash): each challenge was written to the store under its
    nonce before its 401 went (`share_challenge`), so the next S-CSCF takes the one the
    response names and answers 200 with no second MAR; the record is taken once. Before,
    the response met a new challenge."""
    net = redis_home.net
    ue = new_ue()
    r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
    assert r401.status == 401
    mars = len(hss_mars(net))
    await redis_home.restart_scscf()
    scscf = net.scscf.scscf
    assert scscf.core.counters["challenge_restored"] == 0  # (no list kept at a stop)
    auth = answer_auth(r401.www_authenticate, ue)
    r = await send(net, register(net, cseq=2, authorization=auth, protected=True))
    assert r.status == 200, r
    assert scscf.core.counters["challenge_taken_from_store"] == 1
    assert scscf.core.counters["challenge"] == 0
    assert len(hss_mars(net)) == mars
    nonce = split_nonce_of(r401)
    reader = redis_home.store()
    try:
        assert await reader.take_challenge(nonce) is None  # taken once
    finally:
        await reader.close()


@pytest.mark.redis
async def test_a_challenge_answered_where_it_was_made_leaves_no_record(redis_home):
    """The usual case: the 401 and its response at one S-CSCF. The record written for
    another one is removed once the response is verified (not left for its 4 minutes)."""
    net = redis_home.net
    r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
    nonce = split_nonce_of(r401)
    reader = redis_home.store()
    try:
        assert (await reader._redis.exists(reader._challenge_key(nonce))) == 1
        auth = answer_auth(r401.www_authenticate, new_ue())
        r = await send(net, register(net, cseq=2, authorization=auth, protected=True))
        assert r.status == 200
        for _ in range(50):
            if not await reader._redis.exists(reader._challenge_key(nonce)):
                break
            await asyncio.sleep(0.02)
        assert await reader.take_challenge(nonce) is None
        assert net.scscf.scscf.core.counters["challenge_taken_from_store"] == 0
    finally:
        await reader.close()


def hss_mars(net) -> list:
    return [m for m in cx_seen(net, "hss", "in") if isinstance(m, cx.MultimediaAuthRequest)]


def split_nonce_of(r401) -> str:
    return r401.www_authenticate.get("nonce")


def test_an_answer_to_a_challenge_gone_is_named_in_the_log(caplog):
    """The challenge response that made the bindings, again under another Via branch
    with its challenge gone (an S-CSCF instance that did not share it, or a restart):
    logged with both branches and counted, so that a trace shows why it is challenged
    again. A refresh carrying the last nonce (TS 24.229 §5.1.1.4.1) is not."""
    import dataclasses
    import logging

    h = Harness(RegistrarCore(policy()), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register())
    answer = dataclasses.replace(ue.answer(header(r401, "WWW-Authenticate")[0]), branch="z9hG4bKb1")
    assert h.send(answer).status == 200
    refresh = dataclasses.replace(answer, cseq=answer.cseq + 1, branch="z9hG4bKb3")
    with caplog.at_level(logging.INFO, logger="imsaka.cscf.scscf"):
        assert h.send(refresh).status == 200  # (protected: no new AKA run)
        assert h.core.counters["answer_to_unknown_challenge"] == 0
        again = dataclasses.replace(refresh, branch="z9hG4bKb4")
        h.send(again)
    assert h.core.counters["answer_to_unknown_challenge"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "not held here" in r.getMessage()]
    assert "branch z9hG4bKb3, this with z9hG4bKb4" in line
