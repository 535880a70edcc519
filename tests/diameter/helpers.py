"""Shared builders for the Diameter tests."""

from __future__ import annotations

from imsaka.diameter import cx

RAND = bytes(range(16))
AUTN = bytes(range(16, 32))
XRES = bytes.fromhex("a54211d5e3ba50bf")
CK = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")
IK = bytes.fromhex("f769bcd751044604127672711c6d3441")
AUTS = bytes.fromhex("00112233445566778899aabbccdd")


def mar(**over: object) -> cx.MultimediaAuthRequest:
    fields: dict = dict(
        session_id="scscf.ims.test;1;2",
        origin_host="scscf.ims.test",
        origin_realm="ims.test",
        destination_realm="ims.test",
        user_name="001010000000001@ims.test",
        public_identity="sip:001010000000001@ims.test",
        server_name="sip:scscf.ims.test:6060",
        sip_number_auth_items=1,
        sip_auth_data_item=cx.SipAuthDataItem(sip_authentication_scheme=cx.SCHEME_AKAV1_MD5),
    )
    fields.update(over)
    return cx.MultimediaAuthRequest(**fields)


def maa_for(req: cx.MultimediaAuthRequest, **over: object) -> cx.MultimediaAuthAnswer:
    item = cx.SipAuthDataItem.aka_vector(
        rand=RAND, autn=AUTN, xres=XRES, ck=CK, ik=IK, item_number=1
    )
    fields: dict = dict(
        origin_host="hss.ims.test",
        origin_realm="ims.test",
        result_code=cx.DIAMETER_SUCCESS,
        user_name=req.user_name,
        public_identity=req.public_identity,
        sip_number_auth_items=1,
        sip_auth_data_items=(item,),
    )
    fields.update(over)
    return req.answer(**fields)


def all_commands() -> list:
    """One filled-in instance of every Cx request and answer."""
    common = dict(session_id="s;1", origin_host="a.ims.test", origin_realm="ims.test")
    req_common = dict(common, destination_realm="ims.test")
    caps = cx.ServerCapabilities(
        mandatory_capabilities=(1, 2), optional_capabilities=(3,), server_names=("sip:s1",)
    )
    m = mar()
    return [
        cx.UAR(
            **req_common,
            user_name="u@ims.test",
            public_identity="sip:u@ims.test",
            visited_network_identifier="visited.test",
            user_authorization_type=cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES,
            uar_flags=1,
            destination_host="hss.ims.test",
        ),
        cx.UAA(
            **common,
            experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
            server_capabilities=caps,
        ),
        cx.UAA(
            **common,
            experimental_result_code=cx.DIAMETER_SUBSEQUENT_REGISTRATION,
            server_name="sip:scscf.ims.test",
        ),
        m,
        mar(
            sip_auth_data_item=cx.SipAuthDataItem(
                sip_authentication_scheme=cx.SCHEME_AKAV1_MD5, sip_authorization=RAND + AUTS
            )
        ),
        maa_for(m),
        maa_for(
            m,
            sip_auth_data_items=(
                cx.SipAuthDataItem.sip_digest(
                    realm="ims.test", ha1="0123456789abcdef0123456789abcdef", item_number=1
                ),
            ),
        ),
        cx.MAA(**common, experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN),
        cx.SAR(
            **req_common,
            server_name="sip:scscf.ims.test",
            server_assignment_type=cx.ServerAssignmentType.REGISTRATION,
            user_data_already_available=cx.UserDataAlreadyAvailable.USER_DATA_NOT_AVAILABLE,
            user_name="u@ims.test",
            public_identities=("sip:u@ims.test", "tel:+15550001"),
            multiple_registration_indication=0,
        ),
        cx.SAA(
            **common,
            result_code=2001,
            user_name="u@ims.test",
            user_data=b'<?xml version="1.0"?><IMSSubscription/>',
            charging_information=cx.ChargingInformation(
                primary_event_charging_function_name="aaa://ecf.ims.test",
                primary_charging_collection_function_name="aaa://ccf.ims.test",
            ),
            associated_identities=cx.AssociatedIdentities(("u2@ims.test",)),
            server_name="sip:scscf.ims.test",
        ),
        cx.LIR(
            **req_common,
            public_identity="sip:u@ims.test",
            originating_request=0,
            user_authorization_type=0,
        ),
        cx.LIA(**common, result_code=2001, server_name="sip:scscf.ims.test"),
        cx.LIA(
            **common,
            experimental_result_code=cx.DIAMETER_UNREGISTERED_SERVICE,
            server_capabilities=caps,
        ),
        cx.RTR(
            **common,
            destination_host="scscf.ims.test",
            destination_realm="ims.test",
            user_name="u@ims.test",
            deregistration_reason=cx.DeregistrationReason(
                cx.ReasonCode.PERMANENT_TERMINATION, "removed by operator"
            ),
            public_identities=("sip:u@ims.test",),
            associated_identities=cx.AssociatedIdentities(("u@ims.test", "v@ims.test")),
        ),
        cx.RTA(**common, result_code=2001),
        cx.PPR(
            **common,
            destination_host="scscf.ims.test",
            destination_realm="ims.test",
            user_name="u@ims.test",
            user_data=b"<IMSSubscription/>",
        ),
        cx.PPA(**common, result_code=2001),
    ]
