"""Interop with a third-party Diameter stack: python-diameter's own Node (threads),
with the Cx commands as corrected by imsaka.diameter.codec, on loopback TCP."""

from __future__ import annotations

import asyncio
import logging

import pytest

from imsaka.diameter import codec, loadgen
from imsaka.diameter.node import DiameterNode, PeerSpec
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


def start_library_node(port: int, *, connect_to: int | None = None):
    from diameter.message.avp.grouped import SipAuthDataItem3gpp, VendorSpecificApplicationId
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication

    logging.getLogger("diameter").setLevel(logging.CRITICAL)
    seen = []

    def handle(app, message):
        seen.append(message)
        answer = app.generate_answer(message)
        answer.vendor_specific_application_id = VendorSpecificApplicationId(
            vendor_id=10415, auth_application_id=16777216
        )
        answer.auth_session_state = 1
        answer.result_code = 2001
        answer.user_name = message.user_name
        answer.public_identity = message.public_identity[0]
        answer.sip_number_auth_items = 1
        item = loadgen.FIXED_ITEM
        answer.sip_auth_data_item = [
            SipAuthDataItem3gpp(
                sip_item_number=1,
                sip_authentication_scheme=item.sip_authentication_scheme,
                sip_authenticate=item.sip_authenticate,
                sip_authorization=item.sip_authorization,
                confidentiality_key=item.confidentiality_key,
                integrity_key=item.integrity_key,
            )
        ]
        return answer

    node = Node(
        loadgen.SERVER_HOST,
        loadgen.REALM,
        ip_addresses=["127.0.0.1"],
        tcp_port=port,
        vendor_ids=[10415],
    )
    peer = node.add_peer(f"aaa://{loadgen.CLIENT_HOST}", loadgen.REALM)
    app = SimpleThreadingApplication(16777216, is_auth_application=True, request_handler=handle)
    node.add_application(app, [peer])
    node.start()
    return node, seen


async def test_our_client_against_python_diameter_server():
    port = free_port()
    lib_node, seen = await asyncio.to_thread(start_library_node, port)
    client = DiameterNode(
        origin_host=loadgen.CLIENT_HOST,
        origin_realm=loadgen.REALM,
        peers=[PeerSpec(loadgen.SERVER_HOST, "127.0.0.1", port)],
        tc=0.3,
    )
    await client.start()
    try:
        await client.wait_open(loadgen.SERVER_HOST, 10)
        req = loadgen.default_mar(7)
        maa = await client.request(req, timeout=5)
        assert maa.is_success
        assert maa.sip_auth_data_items[0] == loadgen.FIXED_ITEM
        assert maa.public_identity == req.public_identity
        # The library, with the corrected definitions, read our MAR field by field.
        lib_mar = seen[0]
        assert lib_mar.sip_auth_data_item.sip_authentication_scheme == "Digest-AKAv1-MD5"
        assert lib_mar.sip_number_auth_items == 1
        assert codec.missing_required(lib_mar) == []
    finally:
        await client.stop()
        await asyncio.to_thread(lib_node.stop, 1, True)


async def test_python_diameter_client_against_our_server():
    """Its CER/MAR reach our node, it accepts our CEA and MAA, its DPR gets our DPA."""
    from diameter.message.avp.grouped import SipAuthDataItem3gpp, VendorSpecificApplicationId
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication

    logging.getLogger("diameter").setLevel(logging.CRITICAL)
    seen = []
    server = await loadgen.start_fixed_maa_server()
    server.add_observer(seen.append)
    node = Node(loadgen.CLIENT_HOST, loadgen.REALM, vendor_ids=[10415])
    peer = node.add_peer(
        f"aaa://{loadgen.SERVER_HOST}:{server.port}",
        loadgen.REALM,
        ip_addresses=["127.0.0.1"],
        is_persistent=True,
        is_default=True,
    )
    app = SimpleThreadingApplication(16777216, is_auth_application=True)
    node.add_application(app, [peer])
    try:
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(app.wait_for_ready, 10)
        assert server.open_peers == [loadgen.CLIENT_HOST]
        req = codec.corrected_command("MultimediaAuthRequest")()
        req.session_id = "lib;1"
        req.vendor_specific_application_id = VendorSpecificApplicationId(
            vendor_id=10415, auth_application_id=16777216
        )
        req.auth_session_state = 1
        req.origin_host = loadgen.CLIENT_HOST.encode()
        req.origin_realm = loadgen.REALM.encode()
        req.destination_realm = loadgen.REALM.encode()
        req.destination_host = loadgen.SERVER_HOST.encode()
        req.user_name = "u@bench.test"
        req.public_identity = ["sip:u@bench.test"]
        req.server_name = "sip:scscf.bench.test"
        req.sip_number_auth_items = 1
        req.sip_auth_data_item = SipAuthDataItem3gpp(sip_authentication_scheme="Digest-AKAv1-MD5")
        ans = await asyncio.to_thread(app.send_request, req, 5)
        assert ans.result_code == 2001
        item = ans.sip_auth_data_item[0]
        assert item.confidentiality_key == loadgen.FIXED_ITEM.confidentiality_key
        assert item.sip_authenticate == loadgen.FIXED_ITEM.sip_authenticate
    finally:
        await asyncio.to_thread(node.stop, 3, False)  # orderly: DPR → our DPA
        await server.stop()
    codes = [(e.direction, codec.decode_message(e.payload).code) for e in seen]
    assert ("in", 282) in codes and ("out", 282) in codes
    assert server.counters == {}
