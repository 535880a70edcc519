"""I-CSCF + S-CSCF + a real HSS over loopback sockets, driven by a client that plays the
P-CSCF (the seed's packets 2 and 9); packets 3/4/5 and 10/11/12 checked header by header."""

from __future__ import annotations

import asyncio
import math
import os
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import pytest

from imsaka.aka.digest import compute_response, password_for, split_nonce
from imsaka.aka.isim import AkaSuccess, Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.sqn import SqnArray
from imsaka.diameter import cx
from imsaka.hss.subscriber import validate_subscriber
from imsaka.sip import parse_message

from .conftest import HSS_HOST, IMPUS, REALM, SCSCF2_HOST, SCSCF_HOST, VISITED, HomeNetwork
from .fakes import IMPI, OPC, K

UE_VIA = "SIP/2.0/UDP [5555::aaa:bbb:ccc:ddd];comp=sigcomp;branch=z9hG4bKnashds7"
UE_VIA_PROTECTED = "SIP/2.0/UDP [5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp;branch=z9hG4bKnashds7"
CONTACT = "<sip:[5555::aaa:bbb:ccc:ddd];comp=sigcomp>;expires=600000"
CONTACT_PROTECTED = "<sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp>;expires=600000"
PATH = "<sip:term@pcscf1.visited1.net;lr>"
ICID = 'icid-value="AyretyU0dm+6O2IrT5tAFrbHLso=023551024"'
CALL_ID = "apb03a0s09dkjdfglkj49111"


# A re-REGISTER's Authorization over the SAs (TS 24.229 §5.1.1.4.1): no AKA run.
PROTECTED_YES = (
    f'Digest username="{IMPI}", realm="{REALM}", nonce="", uri="sip:registrar.home1.net", '
    f'response="", integrity-protected="yes"'
)


def register(
    net: HomeNetwork,
    *,
    cseq: int,
    authorization: str,
    protected: bool,
    impu: str = IMPUS[0],
    visited: str = VISITED,
    expires: int = 600000,
    call_id: str = CALL_ID,
):
    """Packet 2 (protected=False) or packet 9 (protected=True) as the P-CSCF sends it."""
    contact = CONTACT_PROTECTED if protected else CONTACT
    contact = contact.replace("expires=600000", f"expires={expires}")
    lines = [
        "REGISTER sip:registrar.home1.net SIP/2.0",
        f"Via: SIP/2.0/UDP pcscf1.visited1.net:{net.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}",
        f"Via: {UE_VIA_PROTECTED if protected else UE_VIA}",
        "Max-Forwards: 69",
        "P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=234151D0FCE11",
        f"Path: {PATH}",
        "Require: path",
        f'P-Visited-Network-ID: "{visited}"',
        f"P-Charging-Vector: {ICID}",
        f"From: <{impu}>;tag=4fa3",
        f"To: <{impu}>",
        f"Contact: {contact}",
        f"Call-ID: {call_id}",
        f"Authorization: {authorization}",
        f"CSeq: {cseq} REGISTER",
        "Supported: path",
        "Content-Length: 0",
        "",
        "",
    ]
    return parse_message("\r\n".join(lines).encode())


def empty_auth(impi: str = IMPI) -> str:
    return (
        f'Digest username="{impi}", realm="{REALM}", nonce="", '
        f'uri="sip:registrar.home1.net", response="", integrity-protected="no"'
    )


def answer_auth(www, ue: Isim, impi: str = IMPI, *, wrong: bool = False) -> str:
    nonce = www.get("nonce")
    rand, autn, _ = split_nonce(nonce)
    result = ue.authenticate(rand, autn)
    assert isinstance(result, AkaSuccess), result
    res = bytes(16) if wrong else result.res
    password = password_for("AKAv1-MD5", res=res[: len(result.res)])
    response = compute_response(
        algorithm="AKAv1-MD5",
        username=impi,
        realm=REALM,
        password=password,
        method="REGISTER",
        uri="sip:registrar.home1.net",
        nonce=nonce,
    )
    return (
        f'Digest username="{impi}", realm="{REALM}", nonce="{nonce}", algorithm=AKAv1-MD5, '
        f'uri="sip:registrar.home1.net", response="{response}", integrity-protected="yes"'
    )


def from_hss(kind, destination_host: str, **fields):
    """An HSS-initiated Cx request (RTR, PPR) of `kind` for IMPI to `destination_host`."""
    return kind(
        session_id="hss;1;1",
        origin_host=HSS_HOST,
        origin_realm=REALM,
        destination_host=destination_host,
        destination_realm=REALM,
        user_name=IMPI,
        **fields,
    )


def new_ue() -> Isim:
    return Isim(Milenage(K, opc=OPC), SqnArray())


def sip_seen(net: HomeNetwork, owner: str, direction: str) -> list:
    return [
        parse_message(e.payload)
        for e in net.events
        if e.protocol == "sip" and e.owner == owner and e.direction == direction
    ]


def cx_seen(net: HomeNetwork, owner: str, direction: str = "out") -> list:
    return [
        cx.decode_bytes(e.payload)
        for e in net.events
        if e.protocol == "diameter"
        and e.owner == owner
        and e.direction == direction
        and cx.is_cx(__import__("imsaka.diameter.codec", fromlist=["x"]).decode_message(e.payload))
    ]


async def send(net: HomeNetwork, request):
    return await net.client.send_request(request, ("127.0.0.1", net.icscf_port))


async def full_registration(net: HomeNetwork, ue: Isim, **kw):
    r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False, **kw))
    assert r401.status == 401, r401
    r200 = await send(
        net,
        register(
            net, cseq=2, authorization=answer_auth(r401.www_authenticate, ue), protected=True, **kw
        ),
    )
    return r401, r200


def as_from_icscf(net: HomeNetwork, req, *, to: str):
    """`req` as the I-CSCF forwards it to the S-CSCF named `to` (its Via on top, the
    Request-URI that S-CSCF's name)."""
    req.add(
        "Via",
        f"SIP/2.0/UDP icscf1_p.home1.net:{net.pcscf_port};branch=z9hG4bK{os.urandom(5).hex()}",
        first=True,
    )
    req.uri = to
    return req


def via_values(msg) -> list[str]:
    return msg.get_all("via")


async def test_two_phase_registration_packets_2_to_12(home):
    ue = new_ue()
    p2 = register(home, cseq=1, authorization=empty_auth(), protected=False)
    p5 = await send(home, p2)

    # Packet 3: I-CSCF → S-CSCF.
    (p3,) = [m for m in sip_seen(home, "scscf", "in") if m.get("cseq") == "1 REGISTER"]
    assert p3.uri == home.server_name  # REGISTER sip:scscf1.home1.net[:port]
    vias = via_values(p3)
    assert len(vias) == 3
    assert vias[0].startswith(f"SIP/2.0/UDP icscf1_p.home1.net:{home.icscf_port};branch=z9hG4bK")
    assert vias[1].startswith(f"SIP/2.0/UDP pcscf1.visited1.net:{home.pcscf_port};branch=")
    assert vias[2] == UE_VIA
    assert p3.get("max-forwards") == "68"
    for name in (
        "P-Access-Network-Info",
        "Path",
        "Require",
        "P-Visited-Network-ID",
        "P-Charging-Vector",
        "From",
        "To",
        "Contact",
        "Call-ID",
        "Authorization",
        "CSeq",
        "Supported",
    ):
        assert p3.get(name) == p2.get(name), name

    # UAR between packets 2 and 3.
    (uar,) = [m for m in cx_seen(home, "icscf") if isinstance(m, cx.UserAuthorizationRequest)]
    assert uar.user_name == IMPI
    assert uar.public_identity == IMPUS[0]
    assert uar.visited_network_identifier == VISITED
    assert uar.user_authorization_type == cx.UserAuthorizationType.REGISTRATION

    # Packet 4: S-CSCF → I-CSCF.
    (p4,) = sip_seen(home, "scscf", "out")
    assert p4.status == 401 and p4.reason == "Unauthorized"
    assert via_values(p4)[0].startswith("SIP/2.0/UDP icscf1_p.home1.net")
    assert len(via_values(p4)) == 3
    assert p4.from_.tag == "4fa3" and p4.to.tag
    assert p4.call_id == CALL_ID and p4.get("cseq") == "1 REGISTER"
    assert p4.get("content-length") == "0"
    www = p4.www_authenticate
    assert www.get("realm") == REALM and www.get("algorithm") == "AKAv1-MD5"
    rand, autn, _ = split_nonce(www.get("nonce"))
    ik, ck = www.get("ik"), www.get("ck")
    assert len(ik) == 32 and len(ck) == 32
    ue_result = ue.authenticate(rand, autn)  # the network authenticates: AUTN verifies
    assert isinstance(ue_result, AkaSuccess)
    assert bytes.fromhex(ik) == ue_result.ik and bytes.fromhex(ck) == ue_result.ck

    # Packet 5: I-CSCF → P-CSCF, the I-CSCF's Via gone, the rest as packet 4.
    assert p5.status == 401
    assert len(via_values(p5)) == 2 and via_values(p5)[1] == UE_VIA
    for name in ("From", "To", "Call-ID", "WWW-Authenticate", "CSeq", "Content-Length"):
        assert p5.get(name) == p4.get(name), name

    # MAR between packets 3 and 4.
    (mar,) = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.MultimediaAuthRequest)]
    assert mar.user_name == IMPI and mar.public_identity == IMPUS[0]
    assert mar.server_name == home.server_name and mar.sip_number_auth_items == 3

    # Packets 9 → 10 → 11 → 12 (the UE answers with RES over its SAs).
    nonce = www.get("nonce")
    password = password_for("AKAv1-MD5", res=ue_result.res)
    response = compute_response(
        algorithm="AKAv1-MD5",
        username=IMPI,
        realm=REALM,
        password=password,
        method="REGISTER",
        uri="sip:registrar.home1.net",
        nonce=nonce,
    )
    p9 = register(
        home,
        cseq=2,
        protected=True,
        authorization=(
            f'Digest username="{IMPI}", realm="{REALM}", nonce="{nonce}", algorithm=AKAv1-MD5, '
            f'uri="sip:registrar.home1.net", response="{response}", integrity-protected="yes"'
        ),
    )
    p12 = await send(home, p9)
    (p10,) = [m for m in sip_seen(home, "scscf", "in") if m.get("cseq") == "2 REGISTER"]
    assert p10.uri == home.server_name and p10.get("max-forwards") == "68"
    assert via_values(p10)[2] == UE_VIA_PROTECTED
    assert p10.get("authorization") == p9.get("authorization")

    (p11,) = [m for m in sip_seen(home, "scscf", "out") if m.status == 200]
    assert p11.reason == "OK"
    assert len(via_values(p11)) == 3
    assert p11.get_all("path") == [PATH]
    assert p11.get("service-route") == f"<sip:orig@scscf1.home1.net:{home.scscf_port};lr>"
    assert p11.get("contact") == CONTACT_PROTECTED
    assert p11.get("date").endswith(" GMT")
    assert p11.get_all("p-associated-uri") == [f"<{u}>" for u in IMPUS]
    assert p11.call_id == CALL_ID and p11.get("cseq") == "2 REGISTER"

    assert p12.status == 200
    assert len(via_values(p12)) == 2 and via_values(p12)[1] == UE_VIA_PROTECTED
    for name in (
        "Path",
        "Service-Route",
        "From",
        "To",
        "Call-ID",
        "Contact",
        "CSeq",
        "Date",
        "P-Associated-URI",
        "Content-Length",
    ):
        assert p12.get_all(name) == p11.get_all(name), name

    # SAR between packets 10 and 11.
    (sar,) = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    assert sar.server_assignment_type == cx.ServerAssignmentType.REGISTRATION
    assert sar.public_identities == (IMPUS[0],) and sar.user_name == IMPI


async def test_wrong_response_is_403(home):
    ue = new_ue()
    r401 = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    auth = answer_auth(r401.www_authenticate, ue, wrong=True)
    r = await send(home, register(home, cseq=2, authorization=auth, protected=True))
    assert r.status == 403


async def test_unknown_user_is_404(home):
    r = await send(
        home,
        register(
            home,
            cseq=1,
            authorization=empty_auth("nobody@home1.net"),
            protected=False,
            impu="sip:nobody@home1.net",
        ),
    )
    assert r.status == 404


async def test_identities_that_do_not_match_are_403(home):
    r = await send(
        home,
        register(
            home, cseq=1, authorization=empty_auth("user2_private@home1.net"), protected=False
        ),
    )
    assert r.status == 403


async def test_roaming_not_allowed_is_403(home):
    r = await send(
        home,
        register(
            home, cseq=1, authorization=empty_auth(), protected=False, visited="Some Other Network"
        ),
    )
    assert r.status == 403 and "roaming" in r.reason.lower()


async def test_reregistration_and_deregistration(home):
    ue = new_ue()
    _, r200 = await full_registration(home, ue)
    assert r200.status == 200
    mars = len([m for m in cx_seen(home, "scscf") if isinstance(m, cx.MultimediaAuthRequest)])
    # Re-REGISTER over the SAs: integrity-protected="yes", no new AKA run, no MAR.
    r = await send(
        home,
        register(
            home,
            cseq=3,
            protected=True,
            authorization=PROTECTED_YES,
        ),
    )
    assert r.status == 200
    assert (
        len([m for m in cx_seen(home, "scscf") if isinstance(m, cx.MultimediaAuthRequest)]) == mars
    )
    # Once registered, the HSS names the serving S-CSCF in the UAA (no capabilities).
    uaas = [m for m in cx_seen(home, "icscf", "in") if isinstance(m, cx.UserAuthorizationAnswer)]
    assert uaas[-1].server_name == home.server_name
    sars = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    assert sars[-1].server_assignment_type == cx.ServerAssignmentType.RE_REGISTRATION
    # De-REGISTER.
    r = await send(
        home,
        register(
            home,
            cseq=4,
            protected=True,
            expires=0,
            authorization=PROTECTED_YES,
        ),
    )
    assert r.status == 200
    assert r.get("contact").endswith(";expires=0")
    sars = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    assert sars[-1].server_assignment_type == cx.ServerAssignmentType.USER_DEREGISTRATION
    uars = [m for m in cx_seen(home, "icscf") if isinstance(m, cx.UserAuthorizationRequest)]
    assert uars[-1].user_authorization_type == cx.UserAuthorizationType.DE_REGISTRATION
    assert home.scscf.scscf.core.pending_counts()["registrations"] == 0


async def test_network_initiated_deregistration_rtr(home):
    ue = new_ue()
    _, r200 = await full_registration(home, ue)
    assert r200.status == 200
    result = await home.hss.deregister_impi(IMPI)
    assert result["ok"], result
    assert home.scscf.scscf.core.pending_counts()["registrations"] == 0
    assert await home.scscf.scscf.store.get(IMPUS[0]) is None


async def test_an_rtr_ends_the_registration_of_an_associated_impi(home):
    """The subscription has a second IMPI (a tablet sharing the IMPUs, TS 23.228
    §4.3.3.4) and the tablet registered. The HSS's RTR names the subscription's first
    IMPI in User-Name and the tablet in Associated-Identities (TS 29.228 §6.1.3): the
    S-CSCF ends the registrations of both (before: of User-Name's only, so the tablet
    stayed registered at the S-CSCF while the HSS took the user for de-registered)."""
    tablet = "tablet_private@home1.net"
    await home.store.add_impi(
        IMPI, validate_subscriber(impi=tablet, impus=IMPUS, k=K.hex(), opc=OPC.hex())
    )
    r401 = await send(
        home, register(home, cseq=1, authorization=empty_auth(tablet), protected=False)
    )
    assert r401.status == 401, r401
    auth = answer_auth(r401.www_authenticate, new_ue(), tablet)
    r200 = await send(home, register(home, cseq=2, authorization=auth, protected=True))
    assert r200.status == 200, r200
    assert home.scscf.scscf.core.registrations[IMPUS[0]].impi == tablet
    result = await home.hss.deregister_impi(tablet)
    assert result["ok"], result
    rtr = [
        m for m in cx_seen(home, "scscf", "in") if isinstance(m, cx.RegistrationTerminationRequest)
    ]
    assert rtr and rtr[-1].user_name == IMPI  # (the subscription's first IMPI)
    assert home.scscf.scscf.core.pending_counts()["registrations"] == 0
    assert await home.scscf.scscf.store.get(IMPUS[0]) is None


async def test_a_pushed_profile_reaches_each_implicit_set_with_its_own_user_data(home):
    """The subscription has a second implicit registration set (TS 23.228 §4.3.3.3),
    registered too. A profile change pushes each registered set's User-Data, and the
    S-CSCF puts a pushed User-Data only on the registrations whose IMPUs it lists
    (before: the HSS pushed the first set's only and the S-CSCF put it on every
    registration of the IMPI, so the second set's registration took the first set's
    identities and services)."""
    from imsaka.cscf.userdata import parse_user_data

    work = "sip:user1_work@home1.net"
    await home.store.add_impus(IMPI, [work], new_set=True)
    ue = new_ue()
    assert (await full_registration(home, ue))[1].status == 200
    assert (await full_registration(home, ue, impu=work, call_id="work"))[1].status == 200
    regs = home.scscf.scscf.core.registrations
    assert set(regs) >= {IMPUS[0], work}
    result = await home.hss.push_profile(IMPI)
    assert result["ok"], result
    pprs = [m for m in cx_seen(home, "scscf", "in") if isinstance(m, cx.PushProfileRequest)]
    assert len(pprs) == 2  # one per registered set
    for impu, members in ((IMPUS[0], set(IMPUS)), (work, {work})):
        _, identities = parse_user_data(regs[impu].user_data)
        assert {p.identity for p in identities} == members, impu


TABLET = "tablet_private@home1.net"


async def phone_and_tablet(home) -> None:
    """Two devices of one subscription, each with its own IMPI, sharing its IMPUs (TS
    23.228 §4.3.3.4): the phone registers IMPUS[0] (contact ...ddd), then the tablet
    a contact of its own for it (...eee); the record names the tablet's IMPI."""
    await home.store.add_impi(
        IMPI, validate_subscriber(impi=TABLET, impus=IMPUS, k=K.hex(), opc=OPC.hex())
    )
    assert (await full_registration(home, new_ue()))[1].status == 200
    first = register(home, cseq=1, authorization=empty_auth(TABLET), protected=False)
    r401 = await send(home, with_second_contact(first, "tablet"))
    assert r401.status == 401, r401
    auth = answer_auth(r401.www_authenticate, new_ue(), TABLET)
    second = register(home, cseq=2, authorization=auth, protected=True)
    assert (await send(home, with_second_contact(second, "tablet"))).status == 200
    stored = await home.scscf.scscf.store.get(IMPUS[0])
    assert len(stored.contacts) == 2 and stored.impi == TABLET


def _uris(record) -> list[str]:
    return sorted("ddd" if "ddd" in u else "eee" for u in record.contacts)


async def test_devices_sharing_an_impu_refresh_and_de_register_their_own_contacts(home):
    """Each binding knows the IMPI that registered it, so the phone's protected refresh
    of its contact in the record the tablet wrote last is accepted without a new AKA
    run (TS 24.229 §5.4.1.2.2; before: challenged on every refresh, as the record named
    the other IMPI), and so is the tablet's after it; the phone's de-REGISTER removes
    its own contact and keeps the tablet's."""
    core = home.scscf.scscf.core
    await phone_and_tablet(home)
    assert core.counters["challenge"] == 2
    phone = register(home, cseq=3, protected=True, authorization=PROTECTED_YES)
    assert (await send(home, phone)).status == 200
    tablet_yes = PROTECTED_YES.replace(IMPI, TABLET)
    tablet = register(home, cseq=3, protected=True, authorization=tablet_yes)
    assert (await send(home, with_second_contact(tablet, "tablet"))).status == 200
    assert core.counters["reregister_without_aka"] == 2 and core.counters["challenge"] == 2
    dereg = register(home, cseq=4, protected=True, authorization=PROTECTED_YES, expires=0)
    assert (await send(home, dereg)).status == 200
    assert core.counters["challenge"] == 2
    left = await home.scscf.scscf.store.get(IMPUS[0])
    assert left is not None and _uris(left) == ["eee"]


async def test_an_rtr_for_one_device_of_a_shared_impu_ends_its_contact_only(home):
    """The tablet's IMPI is deleted at the HSS: its RTR names the tablet alone, and the
    S-CSCF removes the tablet's contact from the IMPU's record and keeps the phone's;
    the subscriber hears of the tablet's contact `rejected` and the phone's active
    (before: the record went whole, or, when the phone had registered last, nothing)."""
    import xml.etree.ElementTree as ET

    await phone_and_tablet(home)
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    result = await home.hss.deregister_impi(TABLET, this_impi_only=True)
    assert result["ok"], result
    left = await home.scscf.scscf.store.get(IMPUS[0])
    assert left is not None and _uris(left) == ["ddd"]
    # the record, named after the tablet that registered last, is the phone's now
    assert left.impi == IMPI and all(not c.impi for c in left.contacts.values())
    assert home.scscf.scscf.core._impus_of(TABLET) == ()
    await wait_for(lambda: len(notifies) == 2)
    ns = {"r": "urn:ietf:params:xml:ns:reginfo"}
    first = ET.fromstring(notifies[1].body).find("r:registration", ns)
    states = {
        ("ddd" if "ddd" in c.findtext("r:uri", "", ns) else "eee"): (c.get("state"), c.get("event"))
        for c in first.findall("r:contact", ns)
    }
    assert states == {"ddd": ("active", "registered"), "eee": ("terminated", "rejected")}
    assert (notifies[1].get("subscription-state") or "").startswith("active")


async def test_a_move_of_one_device_tells_the_other_to_register_again(home):
    """The phone registered at another S-CSCF (the I-CSCF chose anew when this one did
    not answer); the HSS's RTR NEW_SERVER_ASSIGNED names the phone as User-Name and the
    tablet in Associated-Identities. This S-CSCF lets the phone's contact go quietly (it
    lives on at the new one) and tells the tablet's `deactivated`, so that the tablet
    registers again, which takes it to the new one (TS 24.229 §5.4.1.5). Before, both
    went quietly and the tablet was registered nowhere until its next refresh."""
    import xml.etree.ElementTree as ET

    await phone_and_tablet(home)
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    sars = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    rtr = from_hss(
        cx.RegistrationTerminationRequest,
        home.config.scscf.diameter.host,
        deregistration_reason=cx.DeregistrationReason(cx.ReasonCode.NEW_SERVER_ASSIGNED, None),
        public_identities=tuple(IMPUS),
        associated_identities=cx.AssociatedIdentities((TABLET,)),
    )
    answer = await home.scscf.scscf.handle_cx_request(rtr)
    assert answer.result_code == cx.DIAMETER_SUCCESS
    assert await home.scscf.scscf.store.get(IMPUS[0]) is None
    await wait_for(lambda: len(notifies) == 2)
    last = notifies[1]
    assert last.get("subscription-state") == "terminated;reason=deactivated"
    ns = {"r": "urn:ietf:params:xml:ns:reginfo"}
    registration = ET.fromstring(last.body).find("r:registration", ns)
    assert registration.get("state") == "terminated"
    contacts = [
        (c.findtext("r:uri", "", ns), c.get("state"), c.get("event"))
        for c in registration.findall("r:contact", ns)
    ]
    assert [("eee" in uri, state, event) for uri, state, event in contacts] == [
        (True, "terminated", "deactivated")
    ]
    # no de-registration SAR: the HSS has the subscription at the new S-CSCF
    after = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.ServerAssignmentRequest)]
    assert after == sars


async def test_a_pushed_profile_for_nobody_held_here_is_user_unknown(home):
    """A PPR whose User-Data lists no IMPU registered at this S-CSCF (the user
    de-registered meanwhile, or another IMPI's) is answered
    DIAMETER_ERROR_USER_UNKNOWN, on which the HSS may try another IMPI of the user
    (TS 29.228 §6.1.4); before: 2001, as if the profile had been taken."""
    user_data, _ = await home.store.user_data(IMPI, IMPUS[0])
    ppr = from_hss(cx.PushProfileRequest, home.config.scscf.diameter.host, user_data=user_data)
    answer = await home.scscf.scscf.handle_cx_request(ppr)
    assert answer.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    assert (await full_registration(home, new_ue()))[1].status == 200
    answer = await home.scscf.scscf.handle_cx_request(ppr)
    assert answer.result_code == cx.DIAMETER_SUCCESS


async def test_hss_down_is_480_at_the_icscf(home):
    await home.hss.stop()
    home.hss = None
    r = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    assert r.status == 480 and r.get("retry-after")


async def test_hss_down_after_uaa_is_504_at_the_scscf(tmp_path):
    net = HomeNetwork(tmp_path)
    try:
        await net.start()
        # Cut only the S-CSCF's Diameter: it cannot fetch vectors.
        await net.scscf.node.stop()
        r = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r.status == 504 and r.get("retry-after")
    finally:
        await net.stop()


@pytest.mark.redis
async def test_redis_bindings_survive_an_scscf_restart(redis_home):
    net = redis_home.net
    ue = new_ue()
    _, r200 = await full_registration(net, ue)
    assert r200.status == 200
    # A new S-CSCF process on the same Redis: the registration is still there.
    await redis_home.restart_scscf()
    assert net.scscf.scscf.core.pending_counts()["registrations"] == 1
    r = await send(
        net,
        register(
            net,
            cseq=3,
            protected=True,
            authorization=PROTECTED_YES,
        ),
    )
    assert r.status == 200  # accepted without a challenge: the binding survived
    stored = await net.scscf.scscf.store.get(IMPUS[0])
    assert stored is not None and stored.impi == IMPI


async def test_bad_register_is_400_and_the_core_keeps_serving(home):
    req = register(home, cseq=1, authorization=empty_auth(), protected=False)
    req.set("Contact", "<sip:broken")
    r = await send(home, req)
    assert r.status == 400
    r = await send(home, register(home, cseq=2, authorization=empty_auth(), protected=False))
    assert r.status == 401


async def test_icscf_retries_another_scscf_when_the_selected_one_is_dead(tmp_path):
    net = HomeNetwork(tmp_path, dead_scscf=True)
    try:
        await net.start()
        r401, r200 = await full_registration(net, new_ue())
        assert r401.status == 401 and r200.status == 200
        uars = [m for m in cx_seen(net, "icscf") if isinstance(m, cx.UserAuthorizationRequest)]
        kinds = [u.user_authorization_type for u in uars]
        assert cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES in kinds
        assert net.icscf.icscf.counters["scscf_retry"] >= 1
    finally:
        await net.stop()


async def test_hss_restart_is_recovered_without_restarting_the_cscfs(home):
    from imsaka.hss.server import HssServer

    port = home.hss.diameter_port
    config = home.hss.config
    await home.hss.stop()
    r = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    assert r.status == 480
    home.hss = HssServer(replace(config, diameter_port=port), store=home.store)
    await home.hss.start()
    await home.icscf.node.wait_open(HSS_HOST, timeout=10)
    await home.scscf.node.wait_open(HSS_HOST, timeout=10)
    r401, r200 = await full_registration(home, new_ue())
    assert r401.status == 401 and r200.status == 200


async def test_binding_expiry_sends_timeout_deregistration(tmp_path):
    net = HomeNetwork(tmp_path, min_expires=1, max_expires=1, default_expires=1)
    try:
        await net.start()
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200 and r200.get("contact").endswith(";expires=1")
        core = net.scscf.scscf.core
        for _ in range(40):
            if not core.registrations:
                break
            await asyncio.sleep(0.1)
        assert not core.registrations
        sars = lambda: [  # noqa: E731
            m for m in cx_seen(net, "scscf") if isinstance(m, cx.ServerAssignmentRequest)
        ]
        await wait_for(
            lambda: (
                sars()[-1].server_assignment_type == cx.ServerAssignmentType.TIMEOUT_DEREGISTRATION
            )
        )
        sars = sars()
        assert sars[-1].server_assignment_type == cx.ServerAssignmentType.TIMEOUT_DEREGISTRATION
        assert await net.scscf.scscf.store.get(IMPUS[0]) is None
        # (the SAR is seen when sent; its operation ends with the SAA)
        await wait_for(lambda: core.pending_counts()["operations"] == 0)
    finally:
        await net.stop()


@asynccontextmanager
async def two_scscfs_on_redis(tmp_path, redis_url, other_url: str | None = None, **scscf_over):
    """The home network with its S-CSCF on a Redis prefix of its own and a second
    S-CSCF behind the same Server-Name on the same prefix (reaching Redis at
    `other_url`, if given: through a proxy that a test cuts): yields (net, the second
    one's server, its port, `via_icscf`: a request made as the I-CSCF would send it
    to the second one). Both stopped and the keys removed after, also on failure."""
    from imsaka.cscf.registrar import RedisBindingStore
    from imsaka.cscf.scscf import ScscfServer

    prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"
    # (both on the test's own prefix: the stores are given, the document's URL unused)
    net = HomeNetwork(tmp_path, binding_store=redis_url, share_challenges=True, **scscf_over)
    other = None
    try:
        await net.start()
        await net.scscf.stop()
        await net.start_scscf(RedisBindingStore(redis_url, prefix=prefix))
        other_port = __import__("tests.conftest", fromlist=["x"]).free_port(2)
        # (its own Diameter identity: two peers of one Origin-Host would take the HSS's
        # connection from each other, over and over)
        diameter = replace(net.config.scscf.diameter, host=SCSCF2_HOST)
        other = ScscfServer(
            replace(net.config.scscf, port=other_port, diameter=diameter),
            store=RedisBindingStore(other_url or redis_url, prefix=prefix),
            reconnect=0.5,
        )
        await other.start()
        await other.node.wait_open(HSS_HOST, timeout=5)

        yield net, other, other_port, partial(as_from_icscf, net, to=net.server_name)
    finally:
        if other is not None:
            await other.stop()
        cleanup = RedisBindingStore(redis_url, prefix=prefix)
        await cleanup.clear()
        await cleanup.close()
        await net.stop()


@pytest.mark.redis
async def test_two_scscfs_share_redis_bindings(tmp_path, redis_url):
    """Two S-CSCF processes behind one Server-Name share the Redis store: a registration
    made through one is refreshed and removed through the other."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, via_icscf):
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        r = await net.client.send_request(
            via_icscf(register(net, cseq=3, protected=True, authorization=PROTECTED_YES)),
            ("127.0.0.1", other_port),
        )
        assert r.status == 200  # the other S-CSCF knew the registration from Redis
        r = await net.client.send_request(
            via_icscf(
                register(net, cseq=4, protected=True, authorization=PROTECTED_YES, expires=0)
            ),
            ("127.0.0.1", other_port),
        )
        assert r.status == 200
        assert await net.scscf.scscf.store.get(IMPUS[0]) is None
        assert other.census()["bindings"] == 0
        # the first one heard of the end through the store's channel and dropped its
        # copy (it stayed until the grant ran out, a week, before)
        await wait_for(lambda: net.scscf.census()["bindings"] == 0)
        assert net.scscf.scscf.core.counters["ended_elsewhere_forgotten"] == 1
        assert net.hss.node.counters["replaced-connection"] == 0  # (each its own identity)


@pytest.mark.redis
async def test_an_rtr_the_serving_instance_cannot_take_goes_to_the_other(tmp_path, redis_url):
    """The registration's SAR came from the first instance, which then stops: the
    HSS's RTR finds no connection to it and goes to the other instance of the same
    Server-Name, which reads the registration from the store and removes it (before,
    the RTR failed and the binding stayed until it expired)."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, *_):
        net.hss.config = replace(
            net.hss.config,
            scscf_instances=((net.server_name, SCSCF_HOST), (net.server_name, SCSCF2_HOST)),
        )
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        await net.scscf.stop()
        result = await net.hss.deregister_impi(IMPI)
        assert result["ok"] and result["to"] == SCSCF2_HOST, result
        assert await other.scscf.store.get(IMPUS[0]) is None
        assert other.scscf.core.counters["rtr_removed"] == 1


@pytest.mark.redis
async def test_an_rtr_naming_no_impu_at_the_other_instance_ends_the_registration(
    tmp_path, redis_url
):
    """The UE registered through the first instance; an HSS's RTR naming no
    Public-Identity (all the IMPI's IMPUs, TS 29.228 §6.1.3) reaches the second, which
    never held the registration: it finds the IMPI's records in the store, removes them
    and publishes the end, on which the first forgets its copy (before: the second had
    nothing to end, answered 2001, and the UE stayed registered)."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, *_):
        here = net.scscf.scscf
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200, r200
        assert IMPUS[0] not in other.scscf.core.registrations
        rtr = from_hss(
            cx.RegistrationTerminationRequest,
            SCSCF2_HOST,
            deregistration_reason=cx.DeregistrationReason(0, "test"),
        )
        answer = await other.scscf.handle_cx_request(rtr)
        assert answer.result_code == cx.DIAMETER_SUCCESS
        assert other.scscf.core.counters["rtr_removed"] == 1
        assert await other.scscf.store.get(IMPUS[0]) is None
        await wait_for(lambda: IMPUS[0] not in here.core.registrations, timeout=5)


@pytest.mark.redis
async def test_an_end_published_late_leaves_a_newer_registration_made_here(tmp_path, redis_url):
    """An end published for a registration this S-CSCF has since made anew (the UE
    registered again through it before the end reached it) leaves that one alone."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, *_):
        here = net.scscf.scscf
        ue = new_ue()
        assert (await full_registration(net, ue))[1].status == 200
        ended = here.core.registrations[IMPUS[0]].to_json()
        r = await send(
            net, register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        )
        assert r.status == 200
        assert (await full_registration(net, ue, call_id="again"))[1].status == 200
        record = {"notifier": "<sip:elsewhere>", "kind": "ended", "impu": IMPUS[0]}
        await other.scscf.store.publish_change(
            {**record, "impi": IMPI, "reason": "user-deregistration", "registration": ended}
        )
        await asyncio.sleep(0.3)
        assert net.scscf.census()["bindings"] == 1
        # nor a refresh made here after the copy that ended (same Call-ID, higher CSeq)
        again = here.core.registrations[IMPUS[0]].to_json()
        refresh = register(
            net, cseq=3, protected=True, authorization=PROTECTED_YES, call_id="again"
        )
        assert (await send(net, refresh)).status == 200
        await other.scscf.store.publish_change(
            {**record, "impi": IMPI, "reason": "user-deregistration", "registration": again}
        )
        await asyncio.sleep(0.3)
        assert net.scscf.census()["bindings"] == 1
        assert here.core.counters["ended_elsewhere_forgotten"] == 0


@pytest.mark.redis
async def test_an_end_through_the_other_scscf_reaches_the_subscribers_held_here(
    tmp_path, redis_url
):
    """The P-CSCF subscribed at one S-CSCF; the registration ends through the other
    one sharing the store, by a de-REGISTER and then (registered again) by an RTR. The
    other one publishes the end through Redis and the first NOTIFYs its subscriber
    (TS 24.229 §5.4.2.1.2): before, the P-CSCF never heard of it and kept the UE's
    SAs until the registration would have expired."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, via_icscf):
        here = net.scscf.scscf
        for end in ("de-REGISTER", "RTR"):
            _, r200 = await full_registration(net, new_ue())
            assert r200.status == 200, end
            notifies: list = []
            r = await reg_event_subscribe(net, notifies)
            assert r.status == 200
            await wait_for(lambda: len(notifies) == 1)  # noqa: B023
            if end == "de-REGISTER":
                r = await net.client.send_request(
                    via_icscf(
                        register(
                            net, cseq=4, protected=True, authorization=PROTECTED_YES, expires=0
                        )
                    ),
                    ("127.0.0.1", other_port),
                )
                assert r.status == 200
                event = "unregistered"
            else:
                rtr = from_hss(
                    cx.RegistrationTerminationRequest,
                    net.config.scscf.diameter.host,
                    deregistration_reason=cx.DeregistrationReason(0, "test"),
                    public_identities=(IMPUS[0],),
                )
                answer = await other.scscf.handle_cx_request(rtr)
                assert answer.result_code == cx.DIAMETER_SUCCESS
                event = "rejected"
            await wait_for(lambda: len(notifies) == 2)  # noqa: B023
            last = notifies[1]
            assert last.get("subscription-state").startswith("terminated"), end
            assert f'event="{event}"'.encode() in last.body, (end, last.body)
            assert net.scscf.census()["subscriptions"] == 0
            assert await here.store.get(IMPUS[0]) is None
        assert here.core.counters["ended_elsewhere_notified"] == 2
        assert other.scscf.core.counters["ended_elsewhere_notified"] == 0


def with_second_contact(request, call_id: str):
    """`request` as the same UE sends it for a second contact (another host) under
    another Call-ID."""
    text = bytes(request).replace(
        b"Contact: <sip:[5555::aaa:bbb:ccc:ddd]", b"Contact: <sip:[5555::aaa:bbb:ccc:eee]"
    )
    return parse_message(text.replace(CALL_ID.encode(), call_id.encode()))


async def register_second_contact(net: HomeNetwork, ue: Isim, call_id: str = "c2") -> None:
    """The UE registers a second contact (`with_second_contact`) through both phases."""
    r401 = await send(
        net,
        with_second_contact(
            register(net, cseq=1, authorization=empty_auth(), protected=False), call_id
        ),
    )
    auth = answer_auth(r401.www_authenticate, ue)
    second = register(net, cseq=2, authorization=auth, protected=True)
    assert (await send(net, with_second_contact(second, call_id))).status == 200


@pytest.mark.redis
async def test_a_contact_change_through_the_other_scscf_reaches_the_subscribers_held_here(
    tmp_path, redis_url
):
    """The P-CSCF subscribed at one S-CSCF; through the other one sharing the store the
    UE registers a second contact (a new AKA run), then de-registers that contact
    alone. Each change is published through Redis and the first S-CSCF NOTIFYs its
    subscriber with the record as written (TS 24.229 §5.4.2.1.2): before, a change short
    of an end reached nobody."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, via_icscf):
        here = net.scscf.scscf
        ue = new_ue()
        _, r200 = await full_registration(net, ue)
        assert r200.status == 200
        notifies: list = []
        r = await reg_event_subscribe(net, notifies)
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 1)
        assert b"ccc:eee" not in notifies[0].body

        def second(body: bytes) -> list[bytes]:
            """The second contact's elements (one in each registration of the implicit
            set)."""
            return [c for c in body.split(b"<contact ")[1:] if b"ccc:eee" in c]

        async def to_other(request):
            request = with_second_contact(request, "second-contact")
            return await net.client.send_request(via_icscf(request), ("127.0.0.1", other_port))

        r401 = await to_other(register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401, r401
        auth = answer_auth(r401.www_authenticate, ue)
        r = await to_other(register(net, cseq=2, authorization=auth, protected=True))
        assert r.status == 200, r
        assert len(r.get_all("contact")) == 2
        await wait_for(lambda: len(notifies) == 2)
        body = notifies[1].body
        assert notifies[1].get("subscription-state").startswith("active")
        assert len(second(body)) == len(IMPUS) and b'state="terminated"' not in body, body

        r = await to_other(
            register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        )
        assert r.status == 200, r
        await wait_for(lambda: len(notifies) == 3)
        body = notifies[2].body
        assert notifies[2].get("subscription-state").startswith("active")
        assert b'<registration aor="' in body and b'state="active"' in body
        assert len(second(body)) == len(IMPUS), body
        for gone in second(body):
            assert b'state="terminated"' in gone and b'event="unregistered"' in gone, body
        assert body.count(b'state="terminated"') == len(IMPUS)
        # the first S-CSCF took up the record as the other one wrote it
        assert list(here.core.registrations[IMPUS[0]].contacts) == [
            "sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp"
        ]
        assert here.core.counters["changed_elsewhere_notified"] == 2
        assert other.scscf.core.counters["changed_elsewhere_notified"] == 0
        assert net.scscf.census()["subscriptions"] == 1


@pytest.mark.redis
async def test_an_end_while_the_subscribers_scscf_was_down_is_told_when_it_is_back(
    tmp_path, redis_url
):
    """The subscription is held at the second S-CSCF, which is down when the UE
    de-registers through the first (the publication reaches nobody there). Started
    again, it takes back the subscription, finds the registration gone and sends the
    final NOTIFY with the reason the first one kept (before: dropped silently; the
    P-CSCF kept the UE's SAs, the UE never heard)."""
    from imsaka.cscf.registrar import RedisBindingStore
    from imsaka.cscf.scscf import ScscfServer

    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        notifies = await registered_and_subscribed_at(net, other_port)
        config, prefix = other.config, other.scscf.store._prefix
        await other.stop()
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        await asyncio.sleep(0.2)
        assert len(notifies) == 1  # nobody to tell
        back = ScscfServer(config, store=RedisBindingStore(redis_url, prefix=prefix))
        try:
            await back.start()
            await wait_for(lambda: len(notifies) == 2)
            assert notifies[1].get("subscription-state").startswith("terminated")
            assert b'event="unregistered"' in notifies[1].body
            assert back.scscf.core.counters["ended_while_down_notified"] == 1
            assert back.census()["subscriptions"] == 0
        finally:
            await back.stop()


@pytest.mark.redis
async def test_an_end_through_one_instance_reaches_the_subscribers_of_a_stopped_one(
    tmp_path, redis_url
):
    """The subscription is held at the second S-CSCF, which is stopped (SIGTERM: it says
    so in the store) and not started again. The UE de-registers through the first,
    which tells that subscriber itself, in its dialog, from the record the second kept
    (before: nobody did until the second came back, if ever). Started again later, the
    second finds nothing left to tell."""
    from imsaka.cscf.registrar import RedisBindingStore
    from imsaka.cscf.scscf import ScscfServer

    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        here = net.scscf.scscf
        notifies = await registered_and_subscribed_at(net, other_port)
        first = notifies[0]
        config, prefix, theirs = other.config, other.scscf.store._prefix, other.scscf._contact
        await other.drain()
        await other.stop()
        await wait_for(lambda: theirs in here._peers.stopped)
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        await wait_for(lambda: len(notifies) == 2)
        end = notifies[1]
        assert end.get("subscription-state").startswith("terminated")
        assert b'event="unregistered"' in end.body
        assert (end.call_id, end.from_.tag, end.to.tag) == (
            first.call_id,
            first.from_.tag,
            first.to.tag,
        )
        assert end.cseq.seq > first.cseq.seq
        assert here.core.counters["ended_for_stopped_notifier"] == 1
        assert await here.store.all_subscriptions(theirs) == []
        back = ScscfServer(config, store=RedisBindingStore(redis_url, prefix=prefix))
        try:
            await back.start()
            await asyncio.sleep(0.3)
            assert len(notifies) == 2
            assert back.scscf.core.counters["ended_while_down_notified"] == 0
        finally:
            await back.stop()


@pytest.mark.redis
async def test_a_change_through_one_instance_moves_the_subscriptions_of_a_stopped_one(
    tmp_path, redis_url
):
    """The subscription is held at the second S-CSCF, which is stopped and not started
    again. The UE registers a second contact through the first, which takes the
    subscription over: the NOTIFY of that change goes in its dialog, its Contact the
    first S-CSCF's (a target refresh), so the subscriber's refresh comes here and is
    taken; the contact's de-registration is then NOTIFYed from here as for any
    subscription of its own (before: the change reached nobody, the refresh went to the
    stopped one)."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        here = net.scscf.scscf
        ue = new_ue()
        notifies = await registered_and_subscribed_at(net, other_port, ue)
        first = notifies[0]
        theirs = other.scscf._contact
        await other.drain()
        await other.stop()
        await wait_for(lambda: theirs in here._peers.stopped)

        async def second_contact(request):
            return await send(net, with_second_contact(request, "second-contact"))

        r401 = await second_contact(
            register(net, cseq=1, authorization=empty_auth(), protected=False)
        )
        assert r401.status == 401, r401
        auth = answer_auth(r401.www_authenticate, ue)
        r = await second_contact(register(net, cseq=2, authorization=auth, protected=True))
        assert r.status == 200 and len(r.get_all("contact")) == 2, r
        await wait_for(lambda: len(notifies) == 2)
        change = notifies[1]
        assert (change.call_id, change.from_.tag, change.to.tag) == (
            first.call_id,
            first.from_.tag,
            first.to.tag,
        )
        assert change.cseq.seq > first.cseq.seq
        assert change.get("subscription-state").startswith("active")
        assert b"ccc:eee" in change.body
        assert change.contacts[0].uri == here._contact.strip("<>")
        assert here.core.counters["changed_for_stopped_notifier"] == 1
        assert await here.store.all_subscriptions(theirs) == []
        assert net.scscf.census()["subscriptions"] == 1

        r = await net.client.send_request(
            pcscf_refresh(net, change, cseq=2), ("127.0.0.1", net.scscf_port)
        )
        assert r.status == 200, r

        r = await second_contact(
            register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        )
        assert r.status == 200, r
        await wait_for(lambda: len(notifies) >= 4)  # (the refresh's NOTIFY, then this one)
        last = notifies[-1]
        assert last.call_id == first.call_id and last.get("subscription-state").startswith("active")
        assert b'event="unregistered"' in last.body


def pcscf_refresh(net: HomeNetwork, notify, cseq: int, impu: str = IMPUS[0]) -> object:
    """The P-CSCF's in-dialog refresh of its subscription to `impu` that `notify` came
    in, sent to that NOTIFY's Contact (the dialog's remote target)."""
    text = (
        f"SUBSCRIBE {notify.contacts[0].uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{net.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pcscf1.visited1.net>;tag={notify.to.tag}\r\n"
        f"To: <{impu}>;tag={notify.from_.tag}\r\n"
        f"Call-ID: {notify.call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n"
        "Event: reg\r\nExpires: 600000\r\n"
        f"Contact: <sip:127.0.0.1:{net.pcscf_port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


@pytest.mark.redis
async def test_an_instance_stopped_for_good_has_its_subscriptions_taken_over(
    tmp_path, redis_url, monkeypatch
):
    """Subscriptions to the registrations of two users are held at the second S-CSCF,
    which stops and does not come back. Until it has been stopped TAKE_OVER_AFTER
    nothing moves (a restart is left to itself); then the first takes both over, paced
    (one NOTIFY per batch here), each NOTIFY in its own dialog with the first one's
    Contact, so the P-CSCF's refresh, sent there, is taken (before: it went to the
    stopped one until the UE registered again). The registration's end is then told from
    here as for any subscription of its own; the second, started again, finds none."""
    import imsaka.cscf.scscf as scscf_module
    from imsaka.cscf.registrar import RedisBindingStore
    from imsaka.cscf.scscf import ScscfServer

    monkeypatch.setattr(scscf_module, "HEARTBEAT", 0.2)
    monkeypatch.setattr(scscf_module, "ALIVE_FOR", 1.0)
    monkeypatch.setattr(scscf_module, "TAKE_OVER_AFTER", 1.5)
    monkeypatch.setattr(scscf_module, "TAKE_OVER_BATCH", 1)
    monkeypatch.setattr(scscf_module, "TAKE_OVER_PAUSE", 0.4)
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        here = net.scscf.scscf
        notifies = await registered_and_subscribed_at(net, other_port)
        impi2, impu2 = "user2_private@home1.net", "sip:user2_public1@home1.net"
        kw = {"impu": impu2, "call_id": "user2-reg", "protected": False}
        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(impi2), **kw))
        auth = answer_auth(r401.www_authenticate, new_ue(), impi2)
        r = await send(net, register(net, cseq=2, authorization=auth, **{**kw, "protected": True}))
        assert r.status == 200, r
        r = await reg_event_subscribe(
            net, notifies, port=other_port, call_id="reg-event-2", impu=impu2
        )
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 2)
        firsts = {n.call_id: n for n in notifies}
        times = [0.0, 0.0]
        collect_notifies(net, notifies, times)
        config, prefix, theirs = other.config, other.scscf.store._prefix, other.scscf._contact
        await other.drain()
        await other.stop()
        await wait_for(lambda: theirs in here._peers.stopped)
        await asyncio.sleep(0.7)  # stopped, not yet for long
        assert len(notifies) == 2 and net.scscf.census()["subscriptions"] == 0
        await wait_for(lambda: len(notifies) == 4, timeout=5)
        moved = notifies[2:]
        assert times[3] - times[2] >= 0.35  # paced
        for notify in moved:
            first = firsts[notify.call_id]
            assert (notify.from_.tag, notify.to.tag) == (first.from_.tag, first.to.tag)
            assert notify.cseq.seq > first.cseq.seq
            assert notify.get("subscription-state").startswith("active")
            assert b'state="active"' in notify.body
            assert notify.contacts[0].uri == here._contact.strip("<>")
        assert {n.call_id for n in moved} == set(firsts)
        assert here.core.counters["taken_from_stopped_notifier"] == 2
        assert net.scscf.census()["subscriptions"] == 2
        assert await here.store.all_subscriptions(theirs) == []
        assert len(await here.store.all_subscriptions(here._contact)) == 2
        await wait_for(lambda: theirs not in here._peers.stopped)  # nothing of it left

        ours = next(n for n in moved if n.call_id == "reg-event-1")
        refresh = pcscf_refresh(net, ours, cseq=2)
        r = await net.client.send_request(refresh, ("127.0.0.1", net.scscf_port))
        assert r.status == 200, r
        await wait_for(lambda: len(notifies) == 5)

        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        await wait_for(lambda: len(notifies) == 6)
        end = notifies[5]
        assert end.call_id == "reg-event-1"
        assert end.get("subscription-state").startswith("terminated")
        assert here.core.counters["ended_for_stopped_notifier"] == 0
        back = ScscfServer(config, store=RedisBindingStore(redis_url, prefix=prefix))
        try:
            await back.start()
            await asyncio.sleep(0.3)
            assert len(notifies) == 6
            assert back.census()["subscriptions"] == 0
        finally:
            await back.stop()


@pytest.mark.redis
async def test_a_crashed_instances_subscriptions_to_an_end_it_missed_are_told(
    tmp_path, redis_url, monkeypatch
):
    """The second S-CSCF crashes (nothing said: its heartbeat runs out) and the UE
    de-registers through the first at once, while the second still counts as running:
    the publication reaches nobody. Once the second's heartbeat has run out, the first
    takes the subscriptions it kept to registrations that are gone and tells them."""
    import imsaka.cscf.scscf as scscf_module

    monkeypatch.setattr(scscf_module, "HEARTBEAT", 0.2)
    monkeypatch.setattr(scscf_module, "ALIVE_FOR", 1.0)
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        here = net.scscf.scscf
        notifies = await registered_and_subscribed_at(net, other_port)
        theirs = other.scscf._contact
        await other.stop()  # no drain: as a crash
        assert theirs not in here._peers.stopped
        dereg = register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        assert here.core.counters["ended_for_stopped_notifier"] == 0
        await wait_for(lambda: len(notifies) == 2)
        assert notifies[1].get("subscription-state").startswith("terminated")
        assert b'event="unregistered"' in notifies[1].body
        assert here.core.counters["ended_for_stopped_notifier"] == 1
        assert theirs in here._peers.stopped
        assert await here.store.all_subscriptions(theirs) == []


@pytest.mark.redis
async def test_a_damaged_change_on_the_channel_is_counted_and_changes_nothing(tmp_path, redis_url):
    """Records on the changes channel that do not read as a registration of the IMPU
    they name (another version's, damaged) are counted and dropped: no NOTIFY, the
    registration held here as it was, the follower still listening."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, *_):
        here = net.scscf.scscf
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        notifies: list = []
        assert (await reg_event_subscribe(net, notifies)).status == 200
        await wait_for(lambda: len(notifies) == 1)
        held = here.core.registrations[IMPUS[0]]
        good = held.to_json()
        base = {"notifier": "<sip:elsewhere>", "kind": "changed", "impu": IMPUS[0]}
        damaged = [
            {**base, "registration": "{not json"},
            {**base, "registration": None},
            {**base, "registration": good, "ended": [[{"uri": 7}, "unregistered"]]},
            {**base, "registration": good, "ended": "nothing"},
            {**base, "impu": IMPUS[1], "registration": good},
        ]
        for record in damaged:
            await other.scscf.store.publish_change(record)
        await wait_for(lambda: here.core.counters["change_unreadable"] == len(damaged) - 1)
        # (the IMPU of the last one is not held here: not read at all)
        await asyncio.sleep(0.2)
        assert len(notifies) == 1
        assert here.core.registrations[IMPUS[0]] is held
        assert here.core.counters["changed_elsewhere_notified"] == 0
        await other.scscf.store.publish_change({**base, "registration": good, "added": True})
        await wait_for(lambda: len(notifies) == 2)
        assert here.core.counters["changed_elsewhere_notified"] == 1


@pytest.mark.redis
async def test_a_subscription_at_the_other_scscf_to_a_registration_made_here(tmp_path, redis_url):
    """The SUBSCRIBE reaches the second S-CSCF (behind one Server-Name the I-CSCF may
    route it to either): it reads the registration from the store and takes it (it
    answered 480, not registered, before); the de-registration through the first one
    then reaches that subscriber through the store's channel."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        notifies: list = []
        r = await reg_event_subscribe(net, notifies, port=other_port)
        assert r.status == 200, r
        await wait_for(lambda: len(notifies) == 1)
        assert b'state="active"' in notifies[0].body
        assert other.census()["subscriptions"] == 1
        r = await send(
            net, register(net, cseq=3, protected=True, authorization=PROTECTED_YES, expires=0)
        )
        assert r.status == 200
        await wait_for(lambda: len(notifies) == 2)
        assert notifies[1].get("subscription-state").startswith("terminated")
        assert b'event="unregistered"' in notifies[1].body
        assert other.census()["subscriptions"] == 0
        assert other.scscf.core.counters["ended_elsewhere_notified"] == 1


async def icscf_with_instances(
    net: HomeNetwork, ports: list[int], timeout: float = 0.5, probe: float = 5.0
):
    """The I-CSCF restarted on its port with the S-CSCF's Server-Name served by an
    instance at each of `ports`, in that order (`[[icscf.scscfs]]` repeating a name),
    one that went silent probed every `probe` s."""
    from imsaka.config import ScscfEntry
    from imsaka.cscf.icscf import IcscfServer

    instances = tuple(
        ScscfEntry(name=net.server_name, address="127.0.0.1", port=port) for port in ports
    )
    config = replace(
        net.config.icscf, scscfs=instances, scscf_timeout=timeout, scscf_probe_interval=probe
    )
    await net.icscf.stop()
    net.icscf = IcscfServer(config, net.config.network, observers=(net.events.append,))
    await net.icscf.start()
    await net.icscf.node.wait_open(HSS_HOST, timeout=5)
    return net.icscf.icscf


async def test_an_scscf_instance_that_does_not_answer_is_passed_over(home):
    """The S-CSCF's first instance takes datagrams and answers none: after
    `scscf_timeout` of silence the I-CSCF sends the REGISTER to the next instance of the
    same Server-Name, with no second UAR, as a new client transaction with a branch of
    its own (RFC 3261 §16.6 step 7), sends the silent one no more copies (were it to
    come back, it would take a request answered elsewhere), and sends the next
    request to the other at once (the silent one is tried last for `scscf_down_time`)."""
    loop = asyncio.get_running_loop()
    copies: list[bytes] = []

    class Silent(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            copies.append(data)

    silent, _ = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", 0))
    try:
        silent_port = silent.get_extra_info("sockname")[1]
        icscf = await icscf_with_instances(home, [silent_port, home.scscf_port], timeout=0.6)
        t0 = loop.time()
        r401 = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
        waited = loop.time() - t0
        assert r401.status == 401 and 0.6 <= waited < 3.0, (r401, waited)
        taken = len(copies)
        assert taken == 2  # the first copy and Timer E's one at 0.5 s
        silent_branch = parse_message(copies[0]).top_via.branch
        (moved,) = [m for m in sip_seen(home, "scscf", "in") if m.get("cseq") == "1 REGISTER"]
        assert moved.top_via.branch != silent_branch
        assert moved.via[1:] == parse_message(copies[0]).via[1:]  # the same copy below it
        uars = [m for m in cx_seen(home, "icscf") if isinstance(m, cx.UserAuthorizationRequest)]
        assert len(uars) == 1
        t0 = loop.time()
        auth = answer_auth(r401.www_authenticate, new_ue())
        r200 = await send(home, register(home, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200
        assert loop.time() - t0 < 0.5
        assert icscf.counters["scscf_instance_failover"] == 1
        assert icscf.counters["scscf_instance_down"] == 1
        assert icscf.counters["scscf_retry"] == 0
        await asyncio.sleep(3.0)  # Timer E would have sent it at 1.5 and 3.5 s
        assert len(copies) == taken
        # the copy sent to the silent instance was abandoned: nothing waits
        assert home.icscf.census()["client_requests_waiting"] == 0
    finally:
        silent.close()


async def test_a_silent_instance_is_probed_and_tried_again_once_it_answers(home):
    """The first instance goes silent: passed over, it is asked with an OPTIONS every
    probe interval, each unanswered one given up on, and stays passed over while they go
    unanswered (the next REGISTER goes to the other at once, not after the silence
    again); its first answer puts it back in its turn and ends the probing. The real
    S-CSCF, and the I-CSCF, answer such an OPTIONS 200, with a To tag and what they
    allow; the S-CSCF does not take one for a user as its own."""
    from imsaka.cscf.probe import options_request

    loop = asyncio.get_running_loop()
    got: list = []
    answering = False

    class Instance(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            msg = parse_message(data)
            got.append(msg)
            if answering and msg.method == "OPTIONS":
                ok = __import__("imsaka.sip", fromlist=["x"]).make_response(msg, 200, to_tag="up")
                self.transport.sendto(ok.to_bytes(), addr)

    sock, _ = await loop.create_datagram_endpoint(Instance, local_addr=("127.0.0.1", 0))
    try:
        port = sock.get_extra_info("sockname")[1]
        icscf = await icscf_with_instances(home, [port, home.scscf_port], timeout=0.6, probe=0.3)
        r401 = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401
        assert icscf._down_until == {("127.0.0.1", port): math.inf}
        await wait_for(lambda: sum(m.method == "OPTIONS" for m in got) >= 3)
        probes = [m for m in got if m.method == "OPTIONS"]
        assert str(probes[0].uri) == f"sip:127.0.0.1:{port}"
        assert len({m.call_id for m in probes}) == 1
        assert [m.cseq.seq for m in probes[:3]] == [1, 2, 3]
        assert probes[0].get("via") != probes[1].get("via")  # a new branch each
        t0 = loop.time()
        auth = answer_auth(r401.www_authenticate, new_ue())
        r200 = await send(home, register(home, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200 and loop.time() - t0 < 0.5
        registers = sum(m.method == "REGISTER" for m in got)
        assert registers == 2  # the first copy and Timer E's: nothing since
        answering = True
        await wait_for(lambda: icscf.counters["scscf_instance_up"] == 1, timeout=3)
        assert icscf._down_until == {}
        assert icscf.counters["scscf_probe_answered"] == 1
        sent = icscf.counters["scscf_probe_sent"]
        await asyncio.sleep(0.8)
        assert icscf.counters["scscf_probe_sent"] == sent  # probing ended
        assert home.icscf.census()["client_requests_waiting"] == 0
        again = register(home, cseq=3, protected=True, authorization=PROTECTED_YES)
        assert (await send(home, again)).status == 200  # (passed over again after 0.6 s)
        assert sum(m.method == "REGISTER" for m in got) > registers  # tried first again
    finally:
        sock.close()
    for port in (home.scscf_port, home.icscf_port):  # (each asked itself)
        probe = options_request(("127.0.0.1", port), "pcscf.home1.net", 1, f"probe-{port}")
        r = await home.client.send_request(probe, ("127.0.0.1", port))
        assert r.status == 200 and r.to.tag and "OPTIONS" in r.get_all("allow"), (port, r)
    to_user = options_request(("127.0.0.1", home.scscf_port), "pcscf.home1.net", 1, "to-user")
    to_user.uri = IMPUS[0]  # (for the user's UE, which the S-CSCF does not reach yet)
    r = await home.client.send_request(to_user, ("127.0.0.1", home.scscf_port))
    assert r.status == 501, r


@pytest.mark.redis
async def test_an_scscf_instance_gone_leaves_its_registrations_to_the_other(tmp_path, redis_url):
    """Two instances of one S-CSCF share Redis behind one Server-Name. The registration
    is made through the first; that one stops; the refresh goes (after the first's
    silence) to the second, which knows the registration from the store and takes it
    without a new AKA run, and so the de-registration."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        # (long enough for the first REGISTER's cold start: a MAR to a fresh HSS)
        icscf = await icscf_with_instances(net, [net.scscf_port, other_port], timeout=3.0)
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        assert other.scscf.core.counters["register"] == 0
        await net.scscf.stop()
        mars = len(
            [m for m in cx_seen(net, "hss", "in") if isinstance(m, cx.MultimediaAuthRequest)]
        )
        refresh = register(net, cseq=3, protected=True, authorization=PROTECTED_YES)
        r = await send(net, refresh)
        assert r.status == 200, r
        assert other.scscf.core.counters["reregister_without_aka"] == 1
        dereg = register(net, cseq=4, protected=True, authorization=PROTECTED_YES, expires=0)
        assert (await send(net, dereg)).status == 200
        assert other.census()["bindings"] == 0
        assert await other.scscf.store.get(IMPUS[0]) is None
        after = [m for m in cx_seen(net, "hss", "in") if isinstance(m, cx.MultimediaAuthRequest)]
        assert len(after) == mars  # no new vector
        assert icscf.counters["scscf_instance_failover"] == 1


@pytest.mark.redis
async def test_a_challenge_of_an_instance_gone_is_answered_by_the_other(tmp_path, redis_url):
    """The 401 comes from the first instance, which then stops; the UE's response goes
    (after the first's silence) to the second, which takes the challenge from the store
    under its nonce and answers 200: no second AKA run for the UE."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        icscf = await icscf_with_instances(net, [net.scscf_port, other_port], timeout=3.0)
        ue = new_ue()
        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401
        await net.scscf.stop()
        auth = answer_auth(r401.www_authenticate, ue)
        r200 = await send(net, register(net, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200, r200
        counters = other.scscf.core.counters
        assert counters["challenge_taken_from_store"] == 1 and counters["challenge"] == 0
        assert icscf.counters["scscf_instance_failover"] == 1
        assert await other.scscf.store.get(IMPUS[0]) is not None


@pytest.mark.redis
async def test_a_challenge_answer_whose_sar_is_slow_is_taken_by_the_other_instance(
    tmp_path, redis_url
):
    """The first instance verifies the UE's answer and waits for its SAA (the HSS slow):
    the I-CSCF gives the silent instance's copy to the second, which finds the challenge
    still in the store and registers the UE, no second AKA run. (Before: the first
    removed the challenge's record as it verified, so the second found neither it nor
    the bindings and challenged again: chaos seeds 9779, 9785.) The first's late 200
    goes nowhere, and it keeps nothing of the answer."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, _):
        icscf = await icscf_with_instances(net, [net.scscf_port, other_port], timeout=1.5)
        first = net.scscf.scscf
        ue = new_ue()
        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401
        send_cx = first._cx_send

        async def slow_sar(request):
            if isinstance(request, cx.ServerAssignmentRequest):
                await asyncio.sleep(3.0)
            return await send_cx(request)

        first._cx_send = slow_sar
        auth = answer_auth(r401.www_authenticate, ue)
        r200 = await send(net, register(net, cseq=2, authorization=auth, protected=True))
        assert r200.status == 200, r200
        counters = other.scscf.core.counters
        assert counters["challenge_taken_from_store"] == 1 and counters["challenge"] == 0
        assert first.core.counters["auth_ok"] == 1
        assert icscf.counters["scscf_instance_failover"] == 1
        await wait_for(lambda: first.core.counters["registered"] == 1)
        assert net.scscf.census()["answered_challenges_open"] == 0
        assert await other.scscf.store.take_challenge(r401.www_authenticate.get("nonce")) is None


@pytest.mark.redis
@pytest.mark.parametrize("what", ["refresh", "de-registration of one contact"])
async def test_a_reauthenticated_register_answered_by_one_instance_is_answered_by_the_other(
    tmp_path, redis_url, what
):
    """reauthenticate = "always": a protected REGISTER is challenged and its answer
    verified by the first instance (200); the I-CSCF, that 200 lost, gives the copy (a
    branch of its own, the UE's Via the same) to the second, which must answer it 200
    too, not challenge it again: a
    refresh from the store as the REGISTER that made the bindings; the de-registration
    of one contact of two, whose binding is gone, as removing nothing (before: 401, and
    the UE's answer met a P-CSCF that had let the contact's SAs go: chaos seed 9960)."""
    async with two_scscfs_on_redis(tmp_path, redis_url, reauthenticate="always") as (
        net,
        other,
        other_port,
        via_icscf,
    ):
        ue = new_ue()
        _, r200 = await full_registration(net, ue)
        assert r200.status == 200
        expires = 600000
        if what != "refresh":
            # a second contact (its own Call-ID), which this REGISTER then removes
            await register_second_contact(net, ue)
            expires = 0

        def request(cseq: int, authorization: str):
            req = register(
                net, cseq=cseq, protected=True, authorization=authorization, expires=expires
            )
            return via_icscf(req if what == "refresh" else with_second_contact(req, "c2"))

        r401 = await net.client.send_request(
            request(3, PROTECTED_YES), ("127.0.0.1", net.scscf_port)
        )
        assert r401.status == 401, r401
        answer = request(4, answer_auth(r401.www_authenticate, ue))
        copy = parse_message(answer.to_bytes())
        client = net.client
        got: list = []
        key = client.send_request_callback(
            answer, ("127.0.0.1", net.scscf_port), client.transports[0], got.append
        )
        await wait_for(lambda: got)
        assert got[0].status == 200, got
        client.abandon_request(key)  # (the I-CSCF's failover: a new branch elsewhere)
        top = copy.top_via.branch
        copy = parse_message(copy.to_bytes().replace(top.encode(), f"{top}.moved".encode(), 1))
        assert copy.top_via.branch == f"{top}.moved"
        key = client.send_request_callback(
            copy, ("127.0.0.1", other_port), client.transports[0], got.append
        )
        await wait_for(lambda: len(got) == 2)
        assert got[1].status == 200, got[1]
        assert len(got[1].get_all("contact")) == 1
        counter = (
            "retransmission_answered_from_store"
            if what == "refresh"
            else "deregister_not_registered"
        )
        assert other.scscf.core.counters[counter] == 1


@pytest.mark.redis
async def test_a_challenge_answered_at_the_other_instance_gets_no_timeout_sar(tmp_path, redis_url):
    """The 401 comes from the first instance, the answer goes to the second (which
    registers the UE from the challenge's record): when reg-await-auth runs out at the
    first, the store has the UE registered, so no AUTHENTICATION_TIMEOUT SAR goes to the
    HSS. One that nobody answered still gets it."""
    async with two_scscfs_on_redis(tmp_path, redis_url) as (net, other, other_port, via_icscf):
        first = net.scscf.scscf

        def timeout_sars() -> int:
            return sum(
                1
                for m in cx_seen(net, "hss", "in")
                if isinstance(m, cx.ServerAssignmentRequest)
                and m.server_assignment_type == cx.ServerAssignmentType.AUTHENTICATION_TIMEOUT
            )

        r401 = await send(net, register(net, cseq=1, authorization=empty_auth(), protected=False))
        assert r401.status == 401
        auth = answer_auth(r401.www_authenticate, new_ue())
        r200 = await net.client.send_request(
            via_icscf(register(net, cseq=2, authorization=auth, protected=True)),
            ("127.0.0.1", other_port),
        )
        assert r200.status == 200, r200
        assert other.scscf.core.counters["challenge_taken_from_store"] == 1
        later = first._clock() + first.core.policy.reg_await_auth + 1
        await first._run_actions(first.core.handle_timer(later))
        assert first.core.counters["reg_await_auth_expired"] == 1
        assert first.core.counters["auth_timeout_registered_elsewhere"] == 1
        assert net.scscf.census()["cx_operations"] == 0
        await asyncio.sleep(0.2)
        assert timeout_sars() == 0
        # a challenge nobody answers (another user): its SAR goes
        impi2, impu2 = "user2_private@home1.net", "sip:user2_public1@home1.net"
        r401 = await send(
            net,
            register(
                net, cseq=1, authorization=empty_auth(impi2), protected=False, impu=impu2,
                call_id="never-answered",
            ),
        )  # fmt: skip
        assert r401.status == 401, r401
        later = first._clock() + first.core.policy.reg_await_auth + 1
        await first._run_actions(first.core.handle_timer(later))
        await wait_for(lambda: timeout_sars() == 1)


async def test_nothing_left_behind_after_many_register_and_deregister(home):

    n = 30
    await home.store.import_subscribers(
        [
            validate_subscriber(
                impi=f"u{i}@home1.net", impus=[f"sip:u{i}@home1.net"], k=K.hex(), opc=OPC.hex()
            )
            for i in range(n)
        ]
    )

    async def life(i: int) -> None:
        impi, impu = f"u{i}@home1.net", f"sip:u{i}@home1.net"
        ue = new_ue()
        r = await send(
            home,
            register(
                home,
                cseq=1,
                authorization=empty_auth(impi),
                protected=False,
                impu=impu,
                call_id=f"c{i}",
            ),
        )
        assert r.status == 401, r
        auth = answer_auth(r.www_authenticate, ue, impi)
        r = await send(
            home,
            register(home, cseq=2, authorization=auth, protected=True, impu=impu, call_id=f"c{i}"),
        )
        assert r.status == 200, r
        r = await send(
            home,
            register(
                home,
                cseq=3,
                authorization=auth,
                protected=True,
                impu=impu,
                call_id=f"c{i}",
                expires=0,
            ),
        )
        assert r.status == 200, r

    # A few at a time: the HSS's database pool is the limit here, not the CSCFs.
    gate = asyncio.Semaphore(3)

    async def gated(i: int) -> None:
        async with gate:
            await life(i)

    await asyncio.gather(*(gated(i) for i in range(n)))
    counts = home.scscf.census()
    assert counts["bindings"] == 0 and counts["challenges"] == 0, counts
    assert counts["cx_operations"] == 0 and counts["requests_awaiting_reply"] == 0, counts


async def test_sqn_resynchronisation_through_the_hss(home):
    """The ISIM has seen higher SQNs than the HSS hands out (a SIM moved between HSSs):
    it answers with AUTS, the S-CSCF sends a resync MAR (RAND‖AUTS), the new challenge
    passes."""
    from imsaka.aka.digest import encode_auts
    from imsaka.aka.isim import AkaSyncFailure

    ue = new_ue()
    for ind in range(32):
        ue.sqn_array.accept((5000 << 5) | ind)
    r401 = await send(home, register(home, cseq=1, authorization=empty_auth(), protected=False))
    nonce = r401.www_authenticate.get("nonce")
    rand, autn, _ = split_nonce(nonce)
    result = ue.authenticate(rand, autn)
    assert isinstance(result, AkaSyncFailure)
    response = compute_response(
        algorithm="AKAv1-MD5", username=IMPI, realm=REALM, password=b"", method="REGISTER",
        uri="sip:registrar.home1.net", nonce=nonce,
    )  # fmt: skip
    auth = (
        f'Digest username="{IMPI}", realm="{REALM}", nonce="{nonce}", algorithm=AKAv1-MD5, '
        f'uri="sip:registrar.home1.net", response="{response}", auts="{encode_auts(result.auts)}", '
        'integrity-protected="yes"'
    )
    again = await send(home, register(home, cseq=2, authorization=auth, protected=True))
    assert again.status == 401
    mars = [m for m in cx_seen(home, "scscf") if isinstance(m, cx.MultimediaAuthRequest)]
    resync = mars[-1].sip_auth_data_item
    assert resync.sip_authorization == rand + result.auts
    assert resync.sip_authentication_scheme == cx.SCHEME_AKAV1_MD5
    auth = answer_auth(again.www_authenticate, ue)
    r200 = await send(home, register(home, cseq=3, authorization=auth, protected=True))
    assert r200.status == 200


async def test_mw_over_tcp(tmp_path):
    """I-CSCF → S-CSCF over TCP (the entry's transport), P-CSCF leg over UDP."""
    net = HomeNetwork(tmp_path, transports=["udp", "tcp"])
    try:
        net_doc_patch = {"transport": "tcp"}
        await net.start()
        # Rebuild the I-CSCF with a TCP route to the S-CSCF.
        await net.icscf.stop()
        from imsaka.config import parse_config
        from imsaka.cscf.icscf import IcscfServer

        from .conftest import network_dict

        doc = network_dict(net.hss.diameter_port, net.icscf_port, net.scscf_port)
        doc["icscf"]["transports"] = ["udp", "tcp"]
        doc["icscf"]["scscfs"][0].update(net_doc_patch)
        cfg = parse_config(doc)
        net.icscf = IcscfServer(
            cfg.icscf, cfg.network, observers=(net.events.append,), reconnect=0.5
        )
        await net.icscf.start()
        await net.icscf.node.wait_open(HSS_HOST, timeout=5)
        _, r200 = await full_registration(net, new_ue())
        assert r200.status == 200
        tcp = [
            e
            for e in net.events
            if e.protocol == "sip" and e.owner == "scscf" and e.transport == "tcp"
        ]
        assert tcp, "nothing crossed the Mw over TCP"
    finally:
        await net.stop()


def collect_notifies(
    net: HomeNetwork, notifies: list | None = None, times: list | None = None
) -> list:
    """The requests the S-CSCF sends the harness (its NOTIFYs), each answered 200,
    appended to `notifies` (a new list if none), which is returned; the loop's time of
    each to `times`, if given."""
    got: list = [] if notifies is None else notifies

    def on_request(req, tx):
        got.append(req)
        if times is not None:
            times.append(asyncio.get_running_loop().time())
        tx.reply(200)

    net.client.set_request_handler(on_request)
    return got


async def reg_event_subscribe(
    net: HomeNetwork,
    notifies: list,
    *,
    expires: int = 600000,
    port: int | None = None,
    call_id: str = "reg-event-1",
    impu: str = IMPUS[0],
):
    """The P-CSCF's SUBSCRIBE to the reg event of `impu` (user1_public1; TS 24.229
    §5.2.3), to the S-CSCF (or another one at `port`)."""
    port = net.scscf_port if port is None else port
    collect_notifies(net, notifies)
    text = (
        f"SUBSCRIBE {impu} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{net.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: <sip:orig@scscf1.home1.net:{port};lr>\r\n"
        "From: <sip:pcscf1.visited1.net>;tag=sub1\r\n"
        f"To: <{impu}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n"
        "Event: reg\r\n"
        f"Expires: {expires}\r\n"
        f"Contact: <sip:127.0.0.1:{net.pcscf_port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return await net.client.send_request(parse_message(text.encode()), ("127.0.0.1", port))


async def registered_and_subscribed_at(net: HomeNetwork, port: int, ue: Isim | None = None) -> list:
    """The UE (`ue`, or a new one) registered (through the I-CSCF) and the P-CSCF's
    reg-event subscription made at the S-CSCF at `port`, its first NOTIFY in: the list
    its NOTIFYs go to."""
    _, r200 = await full_registration(net, ue or new_ue())
    assert r200.status == 200
    notifies: list = []
    assert (await reg_event_subscribe(net, notifies, port=port)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    return notifies


async def wait_for(predicate, timeout: float = 5.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("change", ["added", "barred"])
async def test_a_pushed_profile_that_changes_the_implicit_set_is_told_and_served(home, change):
    """While the UE is registered the operator adds an IMPU to its implicit
    registration set, or bars one of it; the HSS's PPR brings the new profile. The
    S-CSCF takes the set from it at once (an IMPU added is registered with the set and
    found for routing, one barred is not) and NOTIFYs the subscriber: the new IMPU's
    contacts `created`, the barred one's `registration` terminated (TS 24.229
    §5.4.2.1.2), while the P-CSCF keeps the UE's registration and SAs. Before, the set stayed as the last SAA gave it until the UE
    re-registered, and nobody was told."""
    import xml.etree.ElementTree as ET

    core = home.scscf.scscf.core
    notifies = await registered_and_subscribed_at(home, home.scscf_port)
    if change == "added":
        impu = "sip:user1_public4@home1.net"
        await home.store.add_impus(IMPI, [impu])
    else:
        impu = IMPUS[1]
        await home.store.update_subscriber(IMPI, barred={impu: True})
    result = await home.hss.push_profile(IMPI)
    assert result["ok"], result
    await wait_for(lambda: len(notifies) == 2)
    ns = {"r": "urn:ietf:params:xml:ns:reginfo"}
    root = ET.fromstring(notifies[1].body)
    regs = {r.get("aor"): r for r in root.findall("r:registration", ns)}
    mine = regs[impu]
    events = {c.get("event") for c in mine.findall("r:contact", ns)}
    if change == "added":
        assert mine.get("state") == "active" and events == {"created"}
        assert core.lookup(impu, core_now(home)) is not None
    else:
        # (no contact under it: the UE's contact stays registered for the rest)
        assert mine.get("state") == "terminated" and events == set()
        assert core.lookup(impu, core_now(home)) is None
    assert regs[IMPUS[0]].get("state") == "active"
    assert {c.get("event") for c in regs[IMPUS[0]].findall("r:contact", ns)} == {"registered"}
    stored = await home.scscf.scscf.store.get(IMPUS[0])
    assert (impu in stored.associated) is (change == "added")


def core_now(net: HomeNetwork) -> float:
    return net.scscf.scscf._clock()


async def test_reg_event_notify_on_rtr(home):
    """RTR → bindings removed and the subscribed P-CSCF told by NOTIFY (TS 24.229 §5.4.1.5)."""
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    notifies: list = []
    r = await reg_event_subscribe(home, notifies)
    assert r.status == 200 and r.to.tag and r.get("expires") == "600000"
    await wait_for(lambda: len(notifies) == 1)
    first = notifies[0]
    assert first.method == "NOTIFY" and first.get("event") == "reg"
    assert first.get("subscription-state").startswith("active;expires=")
    assert first.get("content-type") == "application/reginfo+xml"
    assert first.from_.tag == r.to.tag and first.to.tag == "sub1" and first.call_id == "reg-event-1"
    body = first.body.decode()
    assert 'state="full"' in body and 'version="0"' in body
    assert f'aor="{IMPUS[0]}"' in body and 'event="registered"' in body
    assert "sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp" in body
    assert f'aor="{IMPUS[2]}"' in body  # the implicit set too

    result = await home.hss.deregister_impi(IMPI)
    assert result["ok"], result
    await wait_for(lambda: len(notifies) == 2)
    last = notifies[1]
    assert last.get("subscription-state") == "terminated;reason=rejected"
    assert 'state="terminated" event="rejected" expires="0"' in last.body.decode()
    assert 'version="1"' in last.body.decode()
    assert last.cseq.seq == first.cseq.seq + 1
    assert home.scscf.census()["subscriptions"] == 0


async def test_reg_event_notify_on_user_deregistration(home):
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    r = await send(
        home, register(home, cseq=3, protected=True, expires=0, authorization=PROTECTED_YES)
    )
    assert r.status == 200
    await wait_for(lambda: len(notifies) == 2)
    assert notifies[1].get("subscription-state") == "terminated;reason=deactivated"
    assert 'event="unregistered"' in notifies[1].body.decode()


async def test_reg_event_subscribe_refused(home):
    notifies: list = []
    r = await reg_event_subscribe(home, notifies)
    assert r.status == 480  # not registered (TS 24.229 §5.4.2.1.1 step 0)
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    text = (
        f"SUBSCRIBE {IMPUS[0]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{home.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
        "From: <sip:x@y>;tag=1\r\n"
        f"To: <{IMPUS[0]}>\r\nCall-ID: e\r\nCSeq: 1 SUBSCRIBE\r\nEvent: presence\r\n"
        f"Contact: <sip:127.0.0.1:{home.pcscf_port}>\r\nContent-Length: 0\r\n\r\n"
    )
    r = await home.client.send_request(parse_message(text.encode()), ("127.0.0.1", home.scscf_port))
    assert r.status == 489 and r.get("allow-events") == "reg"


async def test_reg_event_subscribe_from_a_stranger_is_forbidden(home):
    """TS 24.229 §5.4.2.1.1 step 1: only the user's own identities and the P-CSCF in its
    Path may watch a registration (its contacts are the UE's addresses)."""
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200

    def subscribe(from_uri: str, asserted: str | None):
        pai = f"P-Asserted-Identity: <{asserted}>\r\n" if asserted else ""
        text = (
            f"SUBSCRIBE {IMPUS[0]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{home.pcscf_port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
            f"From: <{from_uri}>;tag=w1\r\nTo: <{IMPUS[0]}>\r\n{pai}"
            f"Call-ID: watch-{os.urandom(4).hex()}\r\nCSeq: 1 SUBSCRIBE\r\nEvent: reg\r\n"
            f"Contact: <sip:127.0.0.1:{home.pcscf_port}>\r\nContent-Length: 0\r\n\r\n"
        )
        return home.client.send_request(
            parse_message(text.encode()), ("127.0.0.1", home.scscf_port)
        )

    home.client.set_request_handler(lambda req, tx: tx.reply(200))
    stranger = await subscribe("sip:watcher@elsewhere.example", None)
    assert stranger.status == 403
    # an asserted identity decides over From: a stranger's From with the user's own IMPU
    assert (await subscribe("sip:watcher@elsewhere.example", IMPUS[1])).status == 200
    # and a stranger's asserted identity is refused whatever the From says
    assert (await subscribe(IMPUS[0], "sip:watcher@elsewhere.example")).status == 403
    assert home.scscf.scscf.core.counters["subscribe_forbidden"] == 2


async def test_reg_event_subscription_expires_with_a_final_notify(home):
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies, expires=1)).status == 200
    await wait_for(lambda: len(notifies) == 2, timeout=5)
    assert notifies[1].get("subscription-state") == "terminated;reason=timeout"
    assert home.scscf.census()["subscriptions"] == 0
    assert home.scscf.census()["bindings"] == 1  # the registration lives on


async def test_reg_event_refresh_to_a_shorter_expiry_ends_it_then(home):
    """A refresh may shorten the subscription (RFC 6665 §4.2.1.2): the new, earlier
    expiry is the one that ends it, not the 600,000 s one it replaced."""
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    notifies: list = []
    assert (await reg_event_subscribe(home, notifies)).status == 200
    await wait_for(lambda: len(notifies) == 1)
    assert (await reg_event_subscribe(home, notifies, expires=1)).status == 200
    await wait_for(lambda: len(notifies) == 3, timeout=5)
    assert notifies[2].get("subscription-state") == "terminated;reason=timeout"
    census = home.scscf.census()
    assert census["subscriptions"] == 0 and census["subscription_timers"] == 0


async def test_reg_event_refreshes_keep_one_expiry_timer(home):
    """RFC 6665 §4.2.1.2 (TS 24.229 §5.4.2.1.1): a refreshing SUBSCRIBE replaces the
    subscription's expiry, so however often it is refreshed a subscription holds one live
    expiry entry (the 600,000 s expiries of the refreshes must not pile up), and the
    S-CSCF one loop timer for all of them."""
    _, r200 = await full_registration(home, new_ue())
    assert r200.status == 200
    scscf = home.scscf.scscf
    loop = asyncio.get_running_loop()
    armed: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def counting_call_later(delay, callback, *args, **kw):
        handle = call_later(delay, callback, *args, **kw)
        if getattr(callback, "__func__", None) is type(scscf)._on_timer:
            armed.append(handle)
        return handle

    loop.call_later = counting_call_later  # type: ignore[method-assign]
    try:
        notifies: list = []
        for n in range(1, 31):
            r = await reg_event_subscribe(home, notifies)
            assert r.status == 200 and r.get("expires") == "600000"
            await wait_for(lambda n=n: len(notifies) == n)
    finally:
        del loop.call_later
    # One loop timer serves the registrar core and the subscriptions: the refreshes
    # arm no more than one (none if the registration's expiry comes first).
    assert sum(not h.cancelled() for h in armed) <= 1
    assert scscf._timer is not None and not scscf._timer.cancelled()
    census = home.scscf.census()
    assert census["subscriptions"] == 1
    assert census["subscription_timers"] == 1
    assert census["subscription_expiry_entries"] == 1
    # The registration ends: its subscription and its expiry with it.
    result = await home.hss.deregister_impi(IMPI)
    assert result["ok"], result
    await wait_for(lambda: len(notifies) == 31)
    assert home.scscf.census()["subscription_timers"] == 0
