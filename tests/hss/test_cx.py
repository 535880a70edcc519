"""Cx over real TCP on loopback: a DiameterNode client in the test acts as I-CSCF /
S-CSCF against a running HssServer (TS 29.228 §6, TS 29.229 §6.2 result codes)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from imsaka.aka.digest import password_for
from imsaka.aka.isim import AkaSuccess, AkaSyncFailure, Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import build_auts
from imsaka.aka.sqn import SqnArray
from imsaka.diameter import codec, cx
from imsaka.diameter.errors import DiameterRequestError
from imsaka.diameter.node import DiameterNode, PeerSpec
from imsaka.hss.models import RegState

from .conftest import (
    HOME,
    HSS_HOST,
    ICSCF_HOST,
    OP,
    SCSCF_HOST,
    SCSCF_NAME,
    K,
    alice,
    client_node,
    lir,
    mar,
    sar,
    uar,
)

SAT = cx.ServerAssignmentType
UAT = cx.UserAuthorizationType


def milenage():
    return Milenage(bytes.fromhex(K), op=bytes.fromhex(OP))


# ---------------------------------------------------------------------------------- UAR


async def test_uar_first_then_subsequent_registration(hss, scscf):
    first = await scscf.request(uar())
    assert first.experimental_result_code == cx.DIAMETER_FIRST_REGISTRATION
    assert first.server_capabilities is not None and first.server_name is None
    assert first.server_capabilities.server_names == (SCSCF_NAME,)
    # After the MAR the second REGISTER goes to the S-CSCF holding the challenge.
    await scscf.request(mar(server="sip:scscf9.home1.net"))
    pending = await scscf.request(uar())
    assert pending.experimental_result_code == cx.DIAMETER_SUBSEQUENT_REGISTRATION
    assert pending.server_name == "sip:scscf9.home1.net"
    await scscf.request(sar(SAT.REGISTRATION))
    again = await scscf.request(uar())
    assert again.experimental_result_code == cx.DIAMETER_SUBSEQUENT_REGISTRATION
    assert again.server_name == SCSCF_NAME
    caps = await scscf.request(uar(uat=UAT.REGISTRATION_AND_CAPABILITIES))
    assert (
        caps.experimental_result_code == cx.DIAMETER_FIRST_REGISTRATION and caps.server_capabilities
    )


async def test_a_registered_users_challenge_at_another_scscf_gets_its_answer(hss, scscf):
    """The serving S-CSCF did not answer the I-CSCF, which took the re-REGISTER to another
    S-CSCF; that one challenged it (its MAR). The REGISTER that answers the challenge
    must reach it, not the serving one (which holds no such challenge and would issue
    another: chaos seed 11001); terminating requests still go to the serving one until
    the new one's SAR."""
    other = "sip:scscf2.home1.net:5080"
    await scscf.request(sar(SAT.REGISTRATION))
    assert (await scscf.request(uar())).server_name == SCSCF_NAME
    await scscf.request(mar(server=other))
    answer = await scscf.request(uar())
    assert answer.experimental_result_code == cx.DIAMETER_SUBSEQUENT_REGISTRATION
    assert answer.server_name == other
    assert (await scscf.request(lir())).server_name == SCSCF_NAME
    assert (await scscf.request(sar(SAT.REGISTRATION, server=other))).is_success
    assert (await scscf.request(uar())).server_name == other
    assert (await scscf.request(lir())).server_name == other


async def test_a_move_takes_another_devices_open_challenge_to_the_new_scscf(hss, scscf):
    """Two devices (IMPIs) of one subscription: the tablet has a challenge open at the
    serving S-CSCF when the phone's registration moves to another one. The tablet's
    next REGISTER goes to the new S-CSCF (one S-CSCF per subscription), not to the old
    one, where registering would move the whole subscription back."""
    from imsaka.hss.subscriber import validate_subscriber

    tablet = "tablet@home1.net"
    spec = validate_subscriber(
        impi=tablet, impus=["sip:alice@home1.net", "tel:+15550001"], k=K, op=OP
    )
    await hss.store.add_impi("alice@home1.net", spec)
    other = "sip:scscf2.home1.net:5080"
    await scscf.request(sar(SAT.REGISTRATION))
    await scscf.request(mar(impi=tablet))  # the tablet's challenge, at the serving one
    assert (await scscf.request(uar(impi=tablet))).server_name == SCSCF_NAME
    assert (await scscf.request(sar(SAT.REGISTRATION, server=other))).is_success
    assert (await scscf.request(uar(impi=tablet))).server_name == other
    assert (await hss.store.get_subscriber(tablet)).pending_scscf is None


async def test_uar_always_names_a_server_or_capabilities_even_with_empty_pool(hss, scscf):
    await hss.store.sync_scscf_pool([])
    first = await scscf.request(uar())
    assert first.is_success
    assert first.server_name is not None or first.server_capabilities is not None


async def test_uar_deregistration(hss, scscf):
    not_reg = await scscf.request(uar(uat=UAT.DE_REGISTRATION))
    assert not_reg.experimental_result_code == cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED
    await scscf.request(sar(SAT.REGISTRATION))
    ok = await scscf.request(uar(uat=UAT.DE_REGISTRATION))
    assert ok.result_code == cx.DIAMETER_SUCCESS and ok.server_name == SCSCF_NAME


async def test_uar_errors(hss, scscf):
    await hss.store.add_subscriber(alice(impi="bob@home1.net", impus=["sip:bob@home1.net"]))
    unknown = await scscf.request(uar(impi="nobody@home1.net", impu="sip:nobody@home1.net"))
    assert unknown.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    mismatch = await scscf.request(uar(impu="sip:bob@home1.net"))
    assert mismatch.experimental_result_code == cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH


async def test_roaming_refused_and_allowed(hss, scscf):
    refused = await scscf.request(uar(visited="evil.example"))
    assert refused.experimental_result_code == cx.DIAMETER_ERROR_ROAMING_NOT_ALLOWED
    assert refused.experimental_result_vendor == codec.VENDOR_3GPP
    allowed = await scscf.request(uar(visited="visited1.net"))  # [hss].visited_networks
    assert allowed.is_success
    await hss.store.update_subscriber("alice@home1.net", visited_networks=["roam.example"])
    per_user = await scscf.request(uar(visited="Roam.Example"))
    assert per_user.is_success
    assert hss.service.counters["roaming-refused"] == 1
    # the P-Visited-Network-ID's text as Kamailio's I-CSCF copies it: a quoted-string
    # (RFC 7315 §4.3), a parameter after it, names the same network
    quoted = await scscf.request(uar(visited='"visited1.net";p=1'))
    assert quoted.is_success
    refused = await scscf.request(uar(visited='"evil.example"'))
    assert refused.experimental_result_code == cx.DIAMETER_ERROR_ROAMING_NOT_ALLOWED


async def test_uar_barred_identity_is_rejected_except_emergency(hss, scscf):
    await hss.store.update_subscriber("alice@home1.net", barred={"sip:alice@home1.net": True})
    barred = await scscf.request(uar())
    assert barred.result_code == cx.DIAMETER_AUTHORIZATION_REJECTED
    emergency = await scscf.request(uar(flags=1))
    assert emergency.is_success


# ---------------------------------------------------------------------------------- MAR


async def test_mar_vectors_pass_the_isim(hss, scscf):
    answer = await scscf.request(mar(n=3))
    assert answer.result_code == cx.DIAMETER_SUCCESS
    assert answer.user_name == "alice@home1.net" and answer.public_identity == "sip:alice@home1.net"
    assert answer.sip_number_auth_items == 3 and len(answer.sip_auth_data_items) == 3
    isim = Isim(milenage(), SqnArray())
    sqns = []
    for i, item in enumerate(answer.sip_auth_data_items, 1):
        assert item.sip_item_number == i
        assert item.sip_authentication_scheme == cx.SCHEME_AKAV1_MD5
        assert len(item.sip_authenticate) == 32 and len(item.confidentiality_key) == 16
        result = isim.authenticate(item.rand, item.autn)
        assert isinstance(result, AkaSuccess)
        assert result.res == item.sip_authorization and result.ck == item.confidentiality_key
        assert result.ik == item.integrity_key
        ak = milenage().f2345(item.rand)[3]
        sqns.append(
            int.from_bytes(bytes(a ^ b for a, b in zip(item.autn[:6], ak, strict=True)), "big")
        )
    assert sqns == sorted(sqns) and len(set(sqns)) == 3
    assert await hss.store.sqn_of("alice@home1.net") == sqns[-1]
    assert (await hss.store.get_subscriber("alice@home1.net")).pending_scscf == SCSCF_NAME


async def test_mar_caps_vectors_and_defaults_scheme(hss, scscf):
    answer = await scscf.request(mar(n=50, scheme=cx.SCHEME_UNKNOWN))
    assert len(answer.sip_auth_data_items) == hss.config.max_vectors
    # The scheme comes from the subscriber's record, never MD5 by default.
    assert {i.sip_authentication_scheme for i in answer.sip_auth_data_items} == {
        cx.SCHEME_AKAV1_MD5
    }


async def test_mar_akav2(hss, scscf):
    answer = await scscf.request(mar(scheme=cx.SCHEME_AKAV2_MD5))
    item = answer.sip_auth_data_items[0]
    assert item.sip_authentication_scheme == cx.SCHEME_AKAV2_MD5
    res = Isim(milenage(), SqnArray()).authenticate(item.rand, item.autn)
    # the S-CSCF derives the AKAv2 password (RFC 4169) from XRES, IK, CK
    assert password_for("AKAv2-MD5", res=res.res, ik=res.ik, ck=res.ck) == password_for(
        "AKAv2-MD5", res=item.sip_authorization, ik=item.integrity_key, ck=item.confidentiality_key
    )


async def test_mar_errors(hss, scscf):
    unknown = await scscf.request(mar(impi="nobody@home1.net", impu="sip:nobody@home1.net"))
    assert unknown.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    wrong_impu = await scscf.request(mar(impu="sip:ghost@home1.net"))
    assert wrong_impu.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN
    await hss.store.add_subscriber(alice(impi="bob@home1.net", impus=["sip:bob@home1.net"]))
    mismatch = await scscf.request(mar(impu="sip:bob@home1.net"))
    assert mismatch.experimental_result_code == cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH
    for scheme in ("SIP Digest", "NASS-Bundled", "Digest-SHA-1024"):
        bad = await scscf.request(mar(scheme=scheme))
        assert bad.experimental_result_code == cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED
    short = await scscf.request(mar(authorization=b"\x01" * 20))
    assert short.result_code == cx.DIAMETER_INVALID_AVP_VALUE
    # the server still serves
    assert (await scscf.request(mar())).result_code == cx.DIAMETER_SUCCESS


async def test_resync_with_valid_auts_moves_sqn(hss, scscf):
    first = (await scscf.request(mar())).sip_auth_data_items[0]
    # The ISIM has seen far more than the HSS (e.g. restored from an old backup).
    array = SqnArray(entries=[0x2000000] * 32)
    isim = Isim(milenage(), array)
    failure = isim.authenticate(first.rand, first.autn)
    assert isinstance(failure, AkaSyncFailure)
    resync = await scscf.request(mar(authorization=first.rand + failure.auts))
    assert resync.result_code == cx.DIAMETER_SUCCESS
    item = resync.sip_auth_data_items[0]
    assert isinstance(isim.authenticate(item.rand, item.autn), AkaSuccess)
    assert hss.service.counters["resync"] == 1


async def test_resync_with_forged_mac_s_never_moves_sqn(hss, scscf):
    first = (await scscf.request(mar())).sip_auth_data_items[0]
    before = await hss.store.sqn_of("alice@home1.net")
    auts = bytearray(build_auts(milenage(), first.rand, 0x7FFFFFFF00))
    auts[-1] ^= 0x01  # MAC-S broken
    answer = await scscf.request(mar(authorization=first.rand + bytes(auts)))
    assert answer.result_code == cx.DIAMETER_AUTHORIZATION_REJECTED
    assert not answer.sip_auth_data_items
    assert await hss.store.sqn_of("alice@home1.net") == before
    # AUTS built with another K: MAC-S fails as well
    other = Milenage(bytes(16), opc=bytes(16))
    answer = await scscf.request(
        mar(authorization=first.rand + build_auts(other, first.rand, 0x1000))
    )
    assert answer.result_code == cx.DIAMETER_AUTHORIZATION_REJECTED
    assert await hss.store.sqn_of("alice@home1.net") == before
    assert hss.service.counters["resync-mac-s-failure"] == 2


# ---------------------------------------------------------------------------------- SAR


async def test_sar_registration_returns_user_data_and_keeps_state(hss, scscf):
    answer = await scscf.request(sar(SAT.REGISTRATION))
    assert answer.result_code == cx.DIAMETER_SUCCESS and answer.user_name == "alice@home1.net"
    root = ET.fromstring(answer.user_data)
    identities = [e.text for e in root.iter("Identity")]
    assert identities == ["sip:alice@home1.net", "tel:+15550001"]
    view = await hss.store.get_subscriber("alice@home1.net")
    assert {u.reg_state for u in view.impus} == {RegState.REGISTERED}  # the implicit set
    assert view.scscf_name == SCSCF_NAME and view.scscf_host == SCSCF_HOST
    assert view.pending_scscf is None
    re = await scscf.request(sar(SAT.RE_REGISTRATION, udaa=1))
    assert re.result_code == cx.DIAMETER_SUCCESS and re.user_data is None


async def test_sar_reregistration_that_changes_nothing_writes_nothing(hss, scscf):
    """TS 29.228 §6.1.2: RE_REGISTRATION keeps the state; when the store already holds
    exactly that (registered, this S-CSCF, nothing pending) no transaction is run, and
    whenever something differs the write still happens."""
    await scscf.request(sar(SAT.REGISTRATION))
    store, counters = hss.store, hss.service.counters
    batches = store.batches
    re = await scscf.request(sar(SAT.RE_REGISTRATION, udaa=1))
    assert re.result_code == cx.DIAMETER_SUCCESS and re.user_name == "alice@home1.net"
    assert store.batches == batches and counters["sar_reregistration_unchanged"] == 1

    # A pending S-CSCF (a MAR from another one) must be cleared: written.
    await scscf.request(mar(server="sip:scscf9.home1.net"))
    assert (await store.get_subscriber("alice@home1.net")).pending_scscf is not None
    batches = store.batches
    await scscf.request(sar(SAT.RE_REGISTRATION, udaa=1))
    assert store.batches > batches and counters["sar_reregistration_unchanged"] == 1
    assert (await store.get_subscriber("alice@home1.net")).pending_scscf is None

    # Another S-CSCF name: written, and the HSS now names that one.
    await scscf.request(sar(SAT.RE_REGISTRATION, udaa=1, server="sip:scscf9.home1.net"))
    assert (await store.get_subscriber("alice@home1.net")).scscf_name == "sip:scscf9.home1.net"
    assert counters["sar_reregistration_unchanged"] == 1

    # Not registered any more (administrative de-registration): registered again.
    await scscf.request(sar(SAT.ADMINISTRATIVE_DEREGISTRATION))
    await scscf.request(sar(SAT.RE_REGISTRATION, udaa=1))
    view = await store.get_subscriber("alice@home1.net")
    assert {u.reg_state for u in view.impus} == {RegState.REGISTERED}
    assert view.scscf_name == SCSCF_NAME and counters["sar_reregistration_unchanged"] == 1


async def test_sar_reregistration_asking_for_user_data_clears_a_pending_scscf(hss, scscf):
    """A RE_REGISTRATION SAR with User-Data-Already-Available 0 reads the User-Data along
    with the state; it must read the IMPI's pending S-CSCF too, or an otherwise unchanged
    re-registration is taken for one that writes nothing and the pending S-CSCF stays."""
    await scscf.request(sar(SAT.REGISTRATION))
    store, counters = hss.store, hss.service.counters
    await scscf.request(mar(server="sip:scscf9.home1.net"))
    assert (await store.get_subscriber("alice@home1.net")).pending_scscf is not None
    re = await scscf.request(sar(SAT.RE_REGISTRATION, udaa=0))
    assert re.result_code == cx.DIAMETER_SUCCESS and re.user_data is not None
    assert (await store.get_subscriber("alice@home1.net")).pending_scscf is None
    assert counters["sar_reregistration_unchanged"] == 0
    # Now nothing differs: answered with the User-Data, nothing written.
    batches = store.batches
    again = await scscf.request(sar(SAT.RE_REGISTRATION, udaa=0))
    assert again.user_data == re.user_data and store.batches == batches
    assert counters["sar_reregistration_unchanged"] == 1


@pytest.mark.parametrize(
    ("sat", "keeps_name"),
    [
        (SAT.USER_DEREGISTRATION, False),
        (SAT.TIMEOUT_DEREGISTRATION, False),
        (SAT.ADMINISTRATIVE_DEREGISTRATION, False),
        (SAT.DEREGISTRATION_TOO_MUCH_DATA, False),
        (SAT.USER_DEREGISTRATION_STORE_SERVER_NAME, True),
        (SAT.TIMEOUT_DEREGISTRATION_STORE_SERVER_NAME, True),
    ],
)
async def test_sar_deregistration_types(hss, scscf, sat, keeps_name):
    await scscf.request(sar(SAT.REGISTRATION))
    answer = await scscf.request(sar(sat))
    assert answer.result_code == cx.DIAMETER_SUCCESS
    view = await hss.store.get_subscriber("alice@home1.net")
    assert {u.reg_state for u in view.impus} == {RegState.NOT_REGISTERED}
    assert (view.scscf_name == SCSCF_NAME) is keeps_name
    after = await scscf.request(uar())
    expected = cx.DIAMETER_SUBSEQUENT_REGISTRATION if keeps_name else cx.DIAMETER_FIRST_REGISTRATION
    assert after.experimental_result_code == expected


async def test_sar_unregistered_user_and_lir(hss, scscf):
    none = await scscf.request(lir())
    assert none.experimental_result_code == cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED
    answer = await scscf.request(sar(SAT.UNREGISTERED_USER, impi=None, impus=("tel:+15550001",)))
    assert answer.result_code == cx.DIAMETER_SUCCESS and answer.user_data
    assert answer.user_name == "alice@home1.net"
    state = await hss.store.user_state("tel:+15550001")
    assert state.reg_state == RegState.UNREGISTERED
    located = await scscf.request(lir("tel:+15550001"))
    assert located.result_code == cx.DIAMETER_SUCCESS and located.server_name == SCSCF_NAME
    unknown = await scscf.request(lir("sip:nobody@home1.net"))
    assert unknown.experimental_result_code == cx.DIAMETER_ERROR_USER_UNKNOWN


async def test_lir_unregistered_service_with_ifc(hss, scscf):
    ifc = (
        "<InitialFilterCriteria><Priority>1</Priority><ApplicationServer><ServerName>sip:vm.home1.net</ServerName>"
        "</ApplicationServer><ProfilePartIndicator>1</ProfilePartIndicator></InitialFilterCriteria>"
    )
    await hss.store.update_subscriber("alice@home1.net", ifc_xml=ifc)
    answer = await scscf.request(lir())
    assert answer.experimental_result_code == cx.DIAMETER_UNREGISTERED_SERVICE
    assert answer.server_capabilities is not None


async def test_sar_auth_failure_clears_pending(hss, scscf):
    await scscf.request(mar())
    assert (await hss.store.get_subscriber("alice@home1.net")).pending_scscf == SCSCF_NAME
    answer = await scscf.request(sar(SAT.AUTHENTICATION_FAILURE))
    assert answer.result_code == cx.DIAMETER_SUCCESS
    assert (await hss.store.get_subscriber("alice@home1.net")).pending_scscf is None
    assert (await scscf.request(uar())).experimental_result_code == cx.DIAMETER_FIRST_REGISTRATION


async def test_sar_errors(hss, scscf):
    assert (
        await scscf.request(sar(SAT.REGISTRATION, impi="nobody@home1.net"))
    ).experimental_result_code == 5001
    assert (
        await scscf.request(sar(SAT.REGISTRATION, impus=("sip:x@home1.net",)))
    ).experimental_result_code == 5001
    assert (await scscf.request(sar(SAT.AAA_USER_DATA_REQUEST))).experimental_result_code == 5007
    assert (await scscf.request(sar(99))).result_code == cx.DIAMETER_INVALID_AVP_VALUE
    wrong = await scscf.request(sar(SAT.NO_ASSIGNMENT))
    assert wrong.result_code == cx.DIAMETER_UNABLE_TO_COMPLY
    await scscf.request(sar(SAT.REGISTRATION))
    ok = await scscf.request(sar(SAT.NO_ASSIGNMENT))
    assert ok.result_code == cx.DIAMETER_SUCCESS and ok.user_data


# ---------------------------------------------------------------------------------- robustness


async def test_missing_mandatory_avp_gets_5005_and_server_keeps_serving(hss, scscf):
    msg = uar().to_message()
    stripped = codec.Message(
        msg.code,
        msg.flags,
        msg.app_id,
        0,
        0,
        tuple(a for a in msg.avps if a.code != cx.AVP_PUBLIC_IDENTITY),
    )
    answer = await scscf.request(stripped)
    assert codec.Message is type(answer)
    assert answer.find(codec.AVP_RESULT_CODE).u32 == cx.DIAMETER_MISSING_AVP
    assert (await scscf.request(uar())).is_success


async def test_unknown_peer_is_refused(hss):
    intruder = DiameterNode(
        origin_host="evil.example",
        origin_realm="example",
        peers=[PeerSpec(host=HSS_HOST, address="127.0.0.1", port=hss.diameter_port)],
        tc=0.5,
    )
    await intruder.start()
    try:
        with pytest.raises(DiameterRequestError):
            await intruder.request(mar(), timeout=1.5)
    finally:
        await intruder.stop()
    assert await hss.store.sqn_of("alice@home1.net") == 0x20  # nothing handed out


async def test_concurrent_mars_over_tcp_never_share_an_sqn(hss, scscf):
    answers = await asyncio.gather(*[scscf.request(mar(n=2)) for _ in range(100)])
    m = milenage()
    sqns = []
    for a in answers:
        for item in a.sip_auth_data_items:
            ak = m.f2345(item.rand)[3]
            sqns.append(
                int.from_bytes(bytes(x ^ y for x, y in zip(item.autn[:6], ak, strict=True)), "big")
            )
    assert len(sqns) == 200 and len(set(sqns)) == 200
    assert max(sqns) == await hss.store.sqn_of("alice@home1.net")


# ---------------------------------------------------------------------------------- RTR / PPR


async def test_rtr_and_ppr_reach_the_serving_scscf(hss):
    received = []

    async def handler(request, peer):
        received.append((request, peer.origin_host))
        return request.answer(
            origin_host=SCSCF_HOST, origin_realm=HOME, result_code=cx.DIAMETER_SUCCESS
        )

    node = await client_node(hss.diameter_port)
    node.set_request_handler(handler)
    try:
        await node.request(sar(SAT.REGISTRATION))
        await hss.store.update_subscriber(
            "alice@home1.net",
            ifc_xml=(
                "<InitialFilterCriteria><Priority>0</Priority><ApplicationServer><ServerName>sip:as.home1.net"
                "</ServerName></ApplicationServer></InitialFilterCriteria>"
            ),
        )
        ppr = await hss.push_profile("alice@home1.net")
        assert ppr == {"sent": True, "to": SCSCF_HOST, "ok": True, "result": 2001}
        rtr = await hss.deregister_impu("tel:+15550001", "test")
        assert rtr["ok"] is True
    finally:
        await node.stop()
    (p, host1), (r, host2) = received
    assert host1 == host2 == HSS_HOST  # arrived from the HSS over the S-CSCF's own connection
    assert isinstance(p, cx.PushProfileRequest) and b"sip:as.home1.net" in p.user_data
    assert p.destination_host == SCSCF_HOST and p.user_name == "alice@home1.net"
    assert isinstance(r, cx.RegistrationTerminationRequest)
    assert r.user_name == "alice@home1.net"
    assert set(r.public_identities) == {"sip:alice@home1.net", "tel:+15550001"}
    assert r.deregistration_reason.reason_code == cx.ReasonCode.PERMANENT_TERMINATION
    view = await hss.store.get_subscriber("alice@home1.net")
    assert view.scscf_name is None and {u.reg_state for u in view.impus} == {
        RegState.NOT_REGISTERED
    }


async def scscf_peer(hss):
    """An S-CSCF peer of the HSS that answers every RTR/PPR 2001: (its node, what it
    received)."""
    received = []

    async def handler(request, peer):
        received.append(request)
        return request.answer(
            origin_host=SCSCF_HOST, origin_realm=HOME, result_code=cx.DIAMETER_SUCCESS
        )

    node = await client_node(hss.diameter_port)
    node.set_request_handler(handler)
    return node, received


async def test_deregistering_one_impu_ends_its_implicit_set_alone(hss):
    """`deregister_impu` sends an RTR naming the IMPUs of that IMPU's implicit set
    (TS 29.228 §6.1.3), every IMPI of the subscription as User-Name and
    Associated-Identities, and leaves the subscription's other set registered at its
    S-CSCF. Before the twelfth session (2026-11-29) the RTR named every IMPU and the
    HSS forgot the whole subscription's registration."""
    work = ["sip:alice.work@home1.net", "sip:alice.work2@home1.net"]
    await hss.store.add_impus("alice@home1.net", work, new_set=True)
    node, received = await scscf_peer(hss)
    try:
        await node.request(sar(SAT.REGISTRATION))
        await node.request(sar(SAT.REGISTRATION, impus=(work[0],)))
        result = await hss.deregister_impu(work[1])
        assert result["ok"] is True, result
        (rtr,) = received
        assert set(rtr.public_identities) == set(work)
        assert rtr.user_name == "alice@home1.net"
        view = await hss.store.get_subscriber("alice@home1.net")
        states = {u.identity: u.reg_state for u in view.impus}
        assert states == {
            "sip:alice@home1.net": RegState.REGISTERED,
            "tel:+15550001": RegState.REGISTERED,
            work[0]: RegState.NOT_REGISTERED,
            work[1]: RegState.NOT_REGISTERED,
        }
        assert view.scscf_name == SCSCF_NAME
        assert await hss.deregister_impu(work[0]) == {"sent": False, "reason": "not registered"}
        assert len(received) == 1
        assert (await hss.deregister_impu("tel:+15550001"))["ok"] is True
        assert set(received[-1].public_identities) == {"sip:alice@home1.net", "tel:+15550001"}
        view = await hss.store.get_subscriber("alice@home1.net")
        assert view.scscf_name is None  # no set left registered
        assert {u.reg_state for u in view.impus} == {RegState.NOT_REGISTERED}
    finally:
        await node.stop()


async def test_a_user_registered_at_another_scscf_is_taken_from_the_old_one(hss):
    """The I-CSCF chose a new S-CSCF when the serving one did not answer (TS 24.229
    §5.3.1.2), and the user registered there. The old one is sent an RTR with Reason-Code
    NEW_SERVER_ASSIGNED naming the subscription's IMPUs (TS 29.228 §6.1.3), and what it
    still sends for the registration it held (its binding lapsing, a late de-REGISTER)
    leaves the user registered at the new one. Before, the HSS switched S-CSCF without a
    word, and the old one's TIMEOUT_DEREGISTRATION SAR, when its binding lapsed, made the
    user not registered (LIR: 5003) while the new one served it."""
    other = "sip:scscf2.home1.net:5080"
    node, received = await scscf_peer(hss)
    try:
        await node.request(sar(SAT.REGISTRATION))
        assert not received  # (the first registration moves nothing)
        answer = await node.request(sar(SAT.REGISTRATION, server=other))
        assert answer.result_code == cx.DIAMETER_SUCCESS
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        (rtr,) = received
        assert isinstance(rtr, cx.RegistrationTerminationRequest)
        assert rtr.deregistration_reason.reason_code == cx.ReasonCode.NEW_SERVER_ASSIGNED
        assert rtr.user_name == "alice@home1.net"
        assert set(rtr.public_identities) == {"sip:alice@home1.net", "tel:+15550001"}
        assert hss.service.counters["rtr_new_server_sent"] == 1
        # the old one's binding lapses, its user de-registers there: nothing changes
        for sat in (SAT.TIMEOUT_DEREGISTRATION, SAT.USER_DEREGISTRATION):
            late = await node.request(sar(sat))
            assert late.result_code == cx.DIAMETER_SUCCESS
        assert hss.service.counters["sar_deregistration_not_serving"] == 2
        view = await hss.store.get_subscriber("alice@home1.net")
        assert view.scscf_name == other
        assert {u.reg_state for u in view.impus} == {RegState.REGISTERED}
        located = await node.request(lir())
        assert located.result_code == cx.DIAMETER_SUCCESS and located.server_name == other
        # the serving one's own de-registration still ends it, with no RTR to anyone
        assert (await node.request(sar(SAT.USER_DEREGISTRATION, server=other))).is_success
        view = await hss.store.get_subscriber("alice@home1.net")
        assert {u.reg_state for u in view.impus} == {RegState.NOT_REGISTERED}
        # registered anew at the first one: nothing held elsewhere, nothing to tell
        await node.request(sar(SAT.REGISTRATION))
        await asyncio.sleep(0.1)
        assert len(received) == 1 and hss.service.counters["scscf_reassigned"] == 1
    finally:
        await node.stop()


async def test_the_rtr_new_server_assigned_names_the_device_that_moved(hss):
    """Two devices (IMPIs) of one subscription registered at the serving S-CSCF; the
    tablet's registration moves to another. The RTR NEW_SERVER_ASSIGNED names the
    tablet as User-Name and the phone in Associated-Identities: the old S-CSCF lets the
    mover go quietly and tells the other to register again. Before 2026-11-29 (ninth
    session) User-Name was the subscription's first IMPI, whoever moved."""
    from imsaka.hss.subscriber import validate_subscriber

    tablet = "tablet@home1.net"
    spec = validate_subscriber(
        impi=tablet, impus=["sip:alice@home1.net", "tel:+15550001"], k=K, op=OP
    )
    await hss.store.add_impi("alice@home1.net", spec)
    node, received = await scscf_peer(hss)
    try:
        await node.request(sar(SAT.REGISTRATION))
        await node.request(sar(SAT.REGISTRATION, impi=tablet))
        other = "sip:scscf2.home1.net:5080"
        assert (await node.request(sar(SAT.REGISTRATION, impi=tablet, server=other))).is_success
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        (rtr,) = received
        assert rtr.deregistration_reason.reason_code == cx.ReasonCode.NEW_SERVER_ASSIGNED
        assert rtr.user_name == tablet
        assert tuple(rtr.associated_identities.user_names) == ("alice@home1.net",)
    finally:
        await node.stop()


async def test_an_rtr_new_server_assigned_the_old_scscf_did_not_take_is_sent_again(
    hss, monkeypatch
):
    """The S-CSCF the user moved from cannot take the RTR NEW_SERVER_ASSIGNED (down,
    restarting on its Redis store, cut off from it: TOO_BUSY here): the HSS sends it
    again after a wait, while the user stays registered elsewhere, so the old one does
    not keep the registration until it lapses there. Before 2026-11-29 it was sent once."""
    import imsaka.hss.server as server_module

    monkeypatch.setattr(server_module, "MOVED_RETRIES", (0.1, 0.1, 0.1))
    received = []

    async def handler(request, peer):
        received.append(request)
        busy = len(received) <= 2
        return request.answer(
            origin_host=SCSCF_HOST,
            origin_realm=HOME,
            result_code=cx.DIAMETER_TOO_BUSY if busy else cx.DIAMETER_SUCCESS,
        )

    other = "sip:scscf2.home1.net:5080"
    node = await client_node(hss.diameter_port)
    node.set_request_handler(handler)
    try:
        await node.request(sar(SAT.REGISTRATION))
        assert (await node.request(sar(SAT.REGISTRATION, server=other))).is_success
        for _ in range(100):
            if hss.service.counters["rtr_new_server_sent"]:
                break
            await asyncio.sleep(0.02)
        assert len(received) == 3 and hss.service.counters["rtr_new_server_failed"] == 2
        assert all(
            r.deregistration_reason.reason_code == cx.ReasonCode.NEW_SERVER_ASSIGNED
            for r in received
        )
        # moved again, then de-registered before the next try: nothing is sent
        received.clear()
        monkeypatch.setattr(server_module, "MOVED_RETRIES", (0.3,))
        assert (await node.request(sar(SAT.REGISTRATION))).is_success  # back to the first
        await asyncio.sleep(0.05)
        assert len(received) == 1  # (busy: answered TOO_BUSY, a try due in 0.3 s)
        assert (await node.request(sar(SAT.USER_DEREGISTRATION))).is_success
        await asyncio.sleep(0.5)
        assert len(received) == 1 and hss.service.counters["rtr_new_server_sent"] == 1
    finally:
        await node.stop()


async def test_rtr_to_unreachable_scscf_reports_it(hss, scscf):
    await scscf.request(sar(SAT.REGISTRATION))
    await scscf.stop()  # the S-CSCF is gone
    result = await hss.deregister_impu("sip:alice@home1.net")
    assert result["sent"] is True and result["ok"] is False
    assert (await hss.store.get_subscriber("alice@home1.net")).scscf_name is None


async def test_icscf_peer_is_served_too(hss):
    node = await client_node(hss.diameter_port, host=ICSCF_HOST)
    try:
        assert (await node.request(uar())).is_success
    finally:
        await node.stop()


async def test_sip_digest_returns_ha1_not_the_password(hss, scscf):
    import hashlib

    await hss.store.add_subscriber(
        alice(
            impi="carol@home1.net",
            impus=["sip:carol@home1.net"],
            schemes=["SIP Digest", "Digest-AKAv1-MD5"],
            digest_password="correct horse",
        )
    )
    raw = await scscf.request(
        mar(
            impi="carol@home1.net", impu="sip:carol@home1.net", scheme=cx.SCHEME_SIP_DIGEST
        ).to_message()
    )
    answer = cx.decode(raw)
    assert answer.result_code == cx.DIAMETER_SUCCESS and answer.sip_number_auth_items == 1
    assert answer.sip_auth_data_items[0].sip_authentication_scheme == cx.SCHEME_SIP_DIGEST
    item = raw.find(cx.AVP_SIP_AUTH_DATA_ITEM, codec.VENDOR_3GPP)
    digest = next(a for a in item.group if a.code == 635)
    fields = {a.code: a.text for a in digest.group}
    expected = hashlib.md5(b"carol@home1.net:home1.net:correct horse").hexdigest()
    assert fields == {104: "home1.net", 111: "MD5", 110: "auth", 121: expected}
    assert b"correct horse" not in raw.encode()
    assert (await hss.store.get_subscriber("carol@home1.net")).pending_scscf == SCSCF_NAME
    # alice has no SIP Digest in her record
    refused = await scscf.request(mar(scheme=cx.SCHEME_SIP_DIGEST))
    assert refused.experimental_result_code == cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED


async def test_sqn_at_its_maximum_is_refused_without_moving(hss, scscf):
    top = ((1 << 43) - 2) << 5  # one step left
    await hss.store.update_subscriber("alice@home1.net", sqn=top)
    assert (await scscf.request(mar(n=1))).result_code == cx.DIAMETER_SUCCESS
    last = await hss.store.sqn_of("alice@home1.net")
    refused = await scscf.request(mar(n=1))
    assert refused.result_code == cx.DIAMETER_UNABLE_TO_COMPLY and not refused.sip_auth_data_items
    assert await hss.store.sqn_of("alice@home1.net") == last
    assert hss.service.counters["sqn-exhausted"] == 1


async def test_resync_to_the_top_of_the_sqn_range_is_refused(hss, scscf):
    first = (await scscf.request(mar())).sip_auth_data_items[0]
    before = await hss.store.sqn_of("alice@home1.net")
    auts = build_auts(milenage(), first.rand, (1 << 48) - 1)
    answer = await scscf.request(mar(authorization=first.rand + auts))
    assert answer.result_code == cx.DIAMETER_UNABLE_TO_COMPLY
    assert await hss.store.sqn_of("alice@home1.net") == before
