"""S-CSCF: the reg-event subscribers hear of a contact that comes or goes while the
IMPU stays registered (TS 24.229 §5.4.2.1.2; RFC 3680 §5.3: the contact listed
`terminated` with its event, `unregistered` or `expired`), not only of the whole
registration's end; and the 200 to a de-REGISTER that leaves other bindings lists them
(RFC 3261 §10.3 step 8)."""

from __future__ import annotations

import dataclasses

import pytest

from imsaka.cscf.scscf_core import ContactSpec, RegistrarCore

from .fakes import IMPI, FakeHss, FakeUe
from .test_home_network import (
    REALM,
    answer_auth,
    empty_auth,
    new_ue,
    reg_event_subscribe,
    register,
    send,
    wait_for,
)
from .test_scscf_core import T0, Harness, header, policy

SECOND = "sip:[5555::aaa:bbb:ccc:eee]:1358"
PROTECTED = "sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp"
YES = (
    f'Digest username="{IMPI}", realm="{REALM}", nonce="", uri="sip:registrar.home1.net", '
    'response="", integrity-protected="yes"'
)


def _at(request, contact: str, expires: int):
    request.set("Contact", f"<{contact}>;expires={expires}")
    return request


async def test_subscribers_hear_of_a_second_contact_and_of_its_deregistration(home):
    first = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    ok = await send(
        home,
        register(
            home,
            cseq=2,
            protected=True,
            authorization=answer_auth(first.www_authenticate, new_ue()),
        ),
    )
    assert ok.status == 200
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)

    # another device of the user registers a second contact (its own AKA run)
    ue2 = new_ue()
    r401 = await send(
        home,
        _at(register(home, cseq=3, authorization=empty_auth(), protected=False), SECOND, 3600),
    )
    assert r401.status == 401
    auth = answer_auth(r401.www_authenticate, ue2)
    r200 = await send(
        home, _at(register(home, cseq=4, authorization=auth, protected=True), SECOND, 3600)
    )
    assert r200.status == 200
    await wait_for(lambda: len(notifies) == 2)
    added = notifies[1].body.decode()
    assert notifies[1].get("subscription-state").startswith("active;")
    assert added.count('state="active" event="registered"') >= 2
    assert SECOND.replace("[", "").split("]")[0] in added.replace("[", "")
    assert 'version="1"' in added

    # it de-registers: the first contact stays, the subscribers hear which one went
    dereg = await send(
        home, _at(register(home, cseq=5, authorization=YES, protected=True), SECOND, 0)
    )
    assert dereg.status == 200
    contacts = dereg.get_all("contact")
    # the bindings that stay (RFC 3261 §10.3 step 8); the one removed is not among them
    assert not any(SECOND in c and not c.endswith(";expires=0") for c in contacts), contacts
    assert any(PROTECTED in c and not c.endswith(";expires=0") for c in contacts), contacts
    await wait_for(lambda: len(notifies) == 3)
    gone = notifies[2].body.decode()
    assert notifies[2].get("subscription-state").startswith("active;")
    assert 'state="terminated" event="unregistered" expires="0"' in gone
    assert '<registration aor="sip:user1_public1@home1.net" id="r0" state="active">' in gone
    assert home.scscf.census()["bindings"] == 1 and home.scscf.census()["subscriptions"] == 1
    assert home.scscf.scscf.core.counters["notify_contacts_changed"] == 2


def test_refresh_changes_no_contact_and_a_lapsed_one_is_expired():
    """The registrar core says what changed (`StoreRegistration.ended` / `added`): a
    refresh of the same contacts nothing; a binding lapsing beside another `expired`."""
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register(), T0)
    answer = ue.answer(header(r401, "WWW-Authenticate")[0])
    both = (ContactSpec(ue.contact, 1000), ContactSpec(SECOND, 3000))
    stores = h.writes
    assert h.send(dataclasses.replace(answer, contacts=both), T0).status == 200
    assert stores[-1].added and not stores[-1].ended
    refresh = dataclasses.replace(ue.register(integrity="yes"), contacts=both)
    assert h.send(refresh, T0 + 10).status == 200
    assert not stores[-1].added and not stores[-1].ended
    h.run(h.core.handle_timer(T0 + 10 + 1001), T0 + 10 + 1001)
    (binding, event), *rest = stores[-1].ended
    assert binding.uri == ue.contact and event == "expired" and not rest
    assert stores[-1].if_unchanged


def test_a_contact_bound_again_by_a_new_registration_is_a_change():
    """A UE that registers from scratch (another Call-ID: after a P-CSCF restart or a
    failed refresh, TS 24.229 §5.1.1.4.1) with the contact it had binds it anew: the
    subscribers are told (the old P-CSCF's and the UE's old subscriptions may be dead,
    and the NOTIFY's 481 ends them). A refresh under the same Call-ID is no change."""
    h = Harness(RegistrarCore(policy(max_expires=3600, default_expires=3600)), FakeHss())
    ue = FakeUe()
    r401 = h.send(ue.register(), T0)
    assert h.send(ue.answer(header(r401, "WWW-Authenticate")[0]), T0).status == 200
    stores = h.writes
    assert h.send(ue.register(integrity="yes"), T0 + 10).status == 200
    assert not stores[-1].added and not stores[-1].ended
    ue.call_id = "a-new-registration-of-the-same-contact"
    ue.cseq = 1
    r401 = h.send(ue.register(), T0 + 20)
    assert r401.status == 401
    assert h.send(ue.answer(header(r401, "WWW-Authenticate")[0]), T0 + 20).status == 200
    assert stores[-1].added and not stores[-1].ended
    assert list(stores[-1].registration.contacts) == [ue.contact]


@pytest.mark.parametrize("answer", [200, 481])
async def test_a_notify_waits_for_the_answer_to_the_one_before(home, answer):
    """Two changes in a row (a second contact registers, then goes) while the first
    NOTIFY's answer is slow (its copies lost under loss, here held 1.5 s): the second
    NOTIFY leaves only once the first is answered, so the subscriber gets them in
    CSeq order. Before, it left at once, and the first's late copy then met a
    subscriber that had taken CSeq 3: a UE answers it 500 (RFC 3261 §12.2.2), the
    S-CSCF ended the subscription on that 500, and what the first told was lost (a
    lifecycle chaos run with two devices sharing an IMPU: the RTR of one device was
    never heard by it). Answered 481 (the subscriber has no such subscription), the
    subscription ends and the NOTIFY that waited is not sent."""
    import asyncio

    notifies: list = []
    first = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    auth = answer_auth(first.www_authenticate, new_ue())
    ok = await send(home, register(home, cseq=2, protected=True, authorization=auth))
    assert ok.status == 200
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, str, float]] = []  # (CSeq, what, when)

    def on_request(req, tx):
        seq = req.cseq.seq
        seen.append((seq, "in", loop.time()))
        if seq == 2:  # slow: answered 1.5 s later
            loop.call_later(
                1.5, lambda: (seen.append((2, "answered", loop.time())), tx.reply(answer))
            )
        else:
            tx.reply(200)

    home.client.set_request_handler(on_request)
    r401 = await send(
        home,
        _at(register(home, cseq=3, authorization=empty_auth(), protected=False), SECOND, 3600),
    )
    auth = answer_auth(r401.www_authenticate, new_ue())
    r = await send(
        home, _at(register(home, cseq=4, authorization=auth, protected=True), SECOND, 3600)
    )
    assert r.status == 200
    r = await send(home, _at(register(home, cseq=5, authorization=YES, protected=True), SECOND, 0))
    assert r.status == 200
    if answer == 481:
        await wait_for(lambda: home.scscf.census()["subscriptions"] == 0, 5)
        await asyncio.sleep(0.3)
        assert [(s, what) for s, what, _ in seen] == [(2, "in"), (2, "answered")]
        return
    await wait_for(lambda: any(s == 3 for s, _, _ in seen), 5)
    order = [(s, what) for s, what, _ in seen]
    assert order.index((2, "answered")) < order.index((3, "in")), order
    assert home.scscf.scscf.core.counters["notify_waits_for_the_one_before"] == 1
    assert home.scscf.census()["subscriptions"] == 1
