"""REST provisioning API: bearer auth, write-only secrets, 4xx naming the field,
nothing half-written, RTR/PPR triggered towards a real S-CSCF peer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from imsaka.cli import main as cli_main
from imsaka.diameter import cx
from imsaka.hss.api import create_app
from imsaka.hss.server import HssServer

from ..conftest import free_port
from .conftest import HOME, OP, OPC, SCSCF_HOST, K, client_node, hss_config, mar, sar

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOB = {"impi": "bob@home1.net", "impus": ["sip:bob@home1.net", "tel:+15550002"], "k": K, "op": OP}


@pytest.fixture
async def api(hss):
    app = create_app(hss, TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hss"
    ) as client:
        yield client


@pytest.fixture
async def registered_scscf(hss):
    """An S-CSCF peer that registered alice and answers RTR/PPR with 2001."""
    received = []

    async def handler(request, peer):
        received.append(request)
        return request.answer(
            origin_host=SCSCF_HOST, origin_realm=HOME, result_code=cx.DIAMETER_SUCCESS
        )

    node = await client_node(hss.diameter_port)
    node.set_request_handler(handler)
    await node.request(sar(cx.ServerAssignmentType.REGISTRATION))
    node.received = received
    try:
        yield node
    finally:
        await node.stop()


async def test_auth_is_required(api):
    assert (await api.get("/health")).status_code == 200
    assert (await api.get("/api/v1/subscribers/alice@home1.net")).status_code == 401
    bad = await api.get(
        "/api/v1/subscribers/alice@home1.net", headers={"Authorization": "Bearer nope"}
    )
    assert bad.status_code == 401
    assert (await api.post("/api/v1/subscribers", json=BOB)).status_code == 401
    assert (await api.get("/api/v1/subscribers/alice@home1.net", headers=AUTH)).status_code == 200


async def test_add_show_never_returns_secrets(api):
    r = await api.post("/api/v1/subscribers", json=BOB, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["impi"] == "bob@home1.net" and body["op_kind"] == "op"
    assert [u["impu"] for u in body["impus"]] == BOB["impus"]
    shown = await api.get("/api/v1/subscribers/bob@home1.net", headers=AUTH)
    for text in (r.text, shown.text):
        assert K not in text and OP not in text and OPC not in text
        assert '"k"' not in text and '"opc"' not in text
    assert (await api.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"k": "12"}, 422, "k"),
        ({"k": 5}, 422, "k"),
        ({"opc": OPC}, 422, "op/opc"),
        ({"impus": ["http://x"]}, 422, "impu"),
        ({"impi": "nouser"}, 422, "impi"),
        ({"amf": "80000"}, 422, "amf"),
        ({"sqn": "xyz"}, 422, "sqn"),
        ({"ifc_xml": "<InitialFilterCriteria>"}, 422, "ifc_xml"),
        ({"colour": "blue"}, 422, "colour"),
        ({"impi": "alice@home1.net"}, 409, "impi"),
        ({"impus": ["tel:+15550001"]}, 409, "impu"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(api, change, status, field):
    body = {**BOB, **change}
    r = await api.post("/api/v1/subscribers", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["detail"]["field"] == field
    assert K not in r.text and OP not in r.text  # secrets never echoed
    if change.get("impi") != "alice@home1.net":
        assert (await api.get("/api/v1/subscribers/bob@home1.net", headers=AUTH)).status_code == 404


async def test_patch_is_all_or_nothing(api, hss):
    before = await hss.store.get_subscriber("alice@home1.net")
    r = await api.patch(
        "/api/v1/subscribers/alice@home1.net",
        json={"amf": "0000", "barred": {"sip:someone@else.net": True}},
        headers=AUTH,
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "barred"
    assert await hss.store.get_subscriber("alice@home1.net") == before
    ok = await api.patch(
        "/api/v1/subscribers/alice@home1.net", json={"amf": "0000", "opc": OPC}, headers=AUTH
    )
    assert ok.status_code == 200 and ok.json()["amf"] == "0000" and ok.json()["op_kind"] == "opc"
    _k, opc, amf = await hss.store.credentials("alice@home1.net")
    assert opc.hex() == OPC and amf == b"\0\0"
    nope = await api.patch(
        "/api/v1/subscribers/nobody@home1.net", json={"amf": "0000"}, headers=AUTH
    )
    assert nope.status_code == 404 and nope.json()["detail"]["field"] == "impi"


async def test_profile_change_pushes_ppr_and_delete_sends_rtr(api, registered_scscf):
    ifc = "<InitialFilterCriteria><Priority>0</Priority><ApplicationServer><ServerName>sip:as.home1.net</ServerName></ApplicationServer></InitialFilterCriteria>"
    r = await api.patch("/api/v1/subscribers/alice@home1.net", json={"ifc_xml": ifc}, headers=AUTH)
    assert r.status_code == 200 and r.json()["ppr"]["ok"] is True
    r = await api.post(
        "/api/v1/subscribers/alice@home1.net/impus",
        json={"impus": ["sip:alice2@home1.net"]},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["ppr"]["ok"] is True
    r = await api.delete("/api/v1/subscribers/alice@home1.net", headers=AUTH)
    assert r.status_code == 200 and r.json()["rtr"]["ok"] is True
    kinds = [type(x).__name__ for x in registered_scscf.received]
    assert kinds == ["PushProfileRequest", "PushProfileRequest", "RegistrationTerminationRequest"]
    assert b"sip:alice2@home1.net" in registered_scscf.received[1].user_data
    assert "sip:alice2@home1.net" in registered_scscf.received[2].public_identities
    assert (await api.get("/api/v1/subscribers/alice@home1.net", headers=AUTH)).status_code == 404


async def test_deregister_impu_sends_rtr(api, registered_scscf, hss):
    r = await api.post(
        "/api/v1/impus/tel:+15550001/deregister", json={"reason": "maintenance"}, headers=AUTH
    )
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    rtr = registered_scscf.received[-1]
    assert isinstance(rtr, cx.RegistrationTerminationRequest)
    assert rtr.deregistration_reason.reason_info == "maintenance"
    assert rtr.deregistration_reason.reason_code == cx.ReasonCode.PERMANENT_TERMINATION
    assert (await hss.store.get_subscriber("alice@home1.net")).scscf_name is None
    again = await api.post("/api/v1/impus/tel:+15550001/deregister", headers=AUTH)
    assert again.json() == {"sent": False, "reason": "not registered"}
    unknown = await api.post("/api/v1/impus/sip:ghost@home1.net/deregister", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["detail"]["field"] == "impu"


async def test_deregister_a_subscription_by_its_impi(api, registered_scscf, hss):
    r = await api.post(
        "/api/v1/subscribers/alice@home1.net/deregister",
        json={"reason_code": "SERVER_CHANGE"},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    rtr = registered_scscf.received[-1]
    assert rtr.user_name == "alice@home1.net"
    assert rtr.deregistration_reason.reason_code == cx.ReasonCode.SERVER_CHANGE
    assert (await hss.store.get_subscriber("alice@home1.net")).scscf_name is None
    unknown = await api.post("/api/v1/subscribers/ghost@home1.net/deregister", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["detail"]["field"] == "impi"
    bad = await api.post("/api/v1/subscribers/ghost/deregister", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "impi"


async def test_deregister_with_server_change_and_a_bad_reason_code(api, registered_scscf):
    bad = await api.post(
        "/api/v1/impus/tel:+15550001/deregister", json={"reason_code": "LATER"}, headers=AUTH
    )
    assert bad.status_code == 422 and "reason_code" in bad.text
    assert registered_scscf.received == []
    r = await api.post(
        "/api/v1/impus/tel:+15550001/deregister",
        json={"reason_code": "SERVER_CHANGE"},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    (rtr,) = registered_scscf.received
    assert rtr.deregistration_reason.reason_code == cx.ReasonCode.SERVER_CHANGE


async def test_csv_import_all_or_nothing(api, hss):
    good = "impi,impu,k,op,opc,amf,sqn\n" + "".join(
        f"c{i}@home1.net,sip:c{i}@home1.net|tel:+1666{i:04d},{K},,{OPC},8000,{i:x}\n"
        for i in range(20)
    )
    bad = good + f"bad@home1.net,sip:bad@home1.net,{K},{OP},{OPC},8000,0\n"
    r = await api.post("/api/v1/import", content=bad, headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 422
    assert r.json()["detail"] == {
        "field": "op/opc",
        "line": 22,
        "message": "give exactly one of OP or OPc",
    }
    assert await hss.store.count_subscribers() == 1
    r = await api.post("/api/v1/import", content=good, headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json() == {"imported": 20}
    assert await hss.store.count_subscribers() == 21


async def test_real_uvicorn_server_and_cli_deregister(store):
    """The HSS with its REST API on a real loopback port, driven by `imsaka hss deregister`."""
    from .conftest import alice

    await store.add_subscriber(alice())
    port = free_port()
    server = HssServer(
        hss_config(str(store.engine.url), api_port=port, api_token=TOKEN), store=store
    )
    await server.start()
    node = None
    try:
        assert server.api_port == port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).json()["subscribers"] == 1
            assert (await client.get("/api/v1/subscribers/alice@home1.net")).status_code == 401
            docs = await client.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
        node = await client_node(server.diameter_port)
        rtrs: list = []
        node.set_request_handler(lambda req, peer: rtrs.append(req) or _answer(req))
        await node.request(sar(cx.ServerAssignmentType.REGISTRATION))
        argv = [
            "hss",
            "deregister",
            "sip:alice@home1.net",
            "--server-change",
            "--api",
            f"http://127.0.0.1:{port}",
            "--token",
            TOKEN,
        ]
        rc = await asyncio.to_thread(cli_main, argv)
        assert rc == 0
        (rtr,) = rtrs
        assert rtr.deregistration_reason.reason_code == cx.ReasonCode.SERVER_CHANGE
        assert (await store.get_subscriber("alice@home1.net")).scscf_name is None
        rc = await asyncio.to_thread(cli_main, [*argv[:-1], "wrong-token"])
        assert rc == 2
        api = ["--api", f"http://127.0.0.1:{port}", "--token", TOKEN]
        # an IMPI: its whole subscription (User-Name, every IMPU of it)
        await node.request(sar(cx.ServerAssignmentType.REGISTRATION))
        rc = await asyncio.to_thread(cli_main, ["hss", "deregister", "alice@home1.net", *api])
        assert rc == 0
        rtr = rtrs[-1]
        assert len(rtrs) == 2 and rtr.user_name == "alice@home1.net"
        assert rtr.deregistration_reason.reason_code == cx.ReasonCode.PERMANENT_TERMINATION
        assert (await store.get_subscriber("alice@home1.net")).scscf_name is None
        rc = await asyncio.to_thread(cli_main, ["hss", "deregister", "nobody@home1.net", *api])
        assert rc == 2
        rc = await asyncio.to_thread(cli_main, ["hss", "delete", "alice@home1.net", *api])
        assert rc == 0
        assert await store.count_subscribers() == 0
        rc = await asyncio.to_thread(cli_main, ["hss", "delete", "alice@home1.net", *api])
        assert rc == 2
    finally:
        if node is not None:
            await node.stop()
        await server.stop()


async def _answer(req):
    return req.answer(origin_host=SCSCF_HOST, origin_realm=HOME, result_code=cx.DIAMETER_SUCCESS)


async def test_user_data_capabilities_and_a_second_implicit_set(api, hss, scscf):
    from xml.etree import ElementTree as ET

    from .conftest import uar

    r = await api.get("/api/v1/subscribers/alice@home1.net/user-data", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert ET.fromstring(r.content).find("PrivateID").text == "alice@home1.net"
    missing = await api.get(
        "/api/v1/subscribers/alice@home1.net/user-data?impu=sip:x@y.net", headers=AUTH
    )
    assert missing.status_code == 404 and missing.json()["detail"]["field"] == "impu"

    # capabilities the I-CSCF must match: only pool members offering them are named
    r = await api.patch(
        "/api/v1/subscribers/alice@home1.net",
        json={"mandatory_capabilities": [7], "optional_capabilities": [1]},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["mandatory_capabilities"] == [7]
    uaa = await scscf.request(uar())
    assert uaa.server_capabilities.mandatory_capabilities == (7,)
    assert uaa.server_capabilities.optional_capabilities == (1,)
    assert uaa.server_capabilities.server_names == ()  # the pool's S-CSCF lacks 7
    bad = await api.patch(
        "/api/v1/subscribers/alice@home1.net", json={"mandatory_capabilities": [-1]}, headers=AUTH
    )
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "mandatory_capabilities"

    # a second implicit registration set registers on its own
    r = await api.post(
        "/api/v1/subscribers/alice@home1.net/impus",
        json={"impus": ["sip:alice-work@home1.net"], "new_implicit_set": True},
        headers=AUTH,
    )
    assert r.status_code == 200
    await scscf.request(sar(cx.ServerAssignmentType.REGISTRATION))
    view = (await api.get("/api/v1/subscribers/alice@home1.net", headers=AUTH)).json()
    states = {u["impu"]: u["reg_state"] for u in view["impus"]}
    assert states == {
        "sip:alice@home1.net": "REGISTERED",
        "tel:+15550001": "REGISTERED",
        "sip:alice-work@home1.net": "NOT_REGISTERED",
    }
    saa = await scscf.request(
        sar(cx.ServerAssignmentType.REGISTRATION, impus=("sip:alice-work@home1.net",))
    )
    ids = [e.text for e in ET.fromstring(saa.user_data).iter("Identity")]
    assert ids == ["sip:alice-work@home1.net"]  # User-Data of that implicit set only


async def test_deleting_one_impi_de_registers_that_impi_only(api, registered_scscf):
    """A subscription with a phone and a tablet IMPI: deleting the tablet sends an RTR
    naming the tablet alone (no Associated-Identities), so that the S-CSCF ends the
    tablet's registrations and not the phone's (before: the RTR named the whole
    subscription, phone first)."""
    r = await api.post(
        "/api/v1/subscribers/alice@home1.net/impis",
        json={"impi": "alice-tablet@home1.net", "k": "00" * 16, "opc": OPC},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    r = await api.delete("/api/v1/subscribers/alice-tablet@home1.net", headers=AUTH)
    assert r.status_code == 200 and r.json()["rtr"]["ok"] is True, r.text
    (rtr,) = registered_scscf.received
    assert rtr.user_name == "alice-tablet@home1.net"
    assert rtr.associated_identities is None
    assert "sip:alice@home1.net" in rtr.public_identities
    # the phone is still registered: the HSS keeps its S-CSCF and registration state
    phone = (await api.get("/api/v1/subscribers/alice@home1.net", headers=AUTH)).json()
    assert phone["scscf_name"] and "REGISTERED" in {u["reg_state"] for u in phone["impus"]}


async def test_second_impi_shares_the_impus(api, hss, registered_scscf):
    r = await api.post(
        "/api/v1/subscribers/alice@home1.net/impis",
        json={"impi": "alice-tablet@home1.net", "k": "00" * 16, "opc": OPC},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    assert {u["impu"] for u in r.json()["impus"]} == {"sip:alice@home1.net", "tel:+15550001"}
    assert K not in r.text
    # the tablet authenticates for the shared IMPU with its own credentials
    maa = await registered_scscf.request(mar(impi="alice-tablet@home1.net", impu="tel:+15550001"))
    assert maa.result_code == cx.DIAMETER_SUCCESS
    dup = await api.post(
        "/api/v1/subscribers/alice@home1.net/impis",
        json={"impi": "alice-tablet@home1.net", "k": "00" * 16, "opc": OPC},
        headers=AUTH,
    )
    assert dup.status_code == 409 and dup.json()["detail"]["field"] == "impi"
    # an RTR names the other IMPI in Associated-Identities
    r = await api.post("/api/v1/impus/sip:alice@home1.net/deregister", headers=AUTH)
    assert r.json()["ok"] is True
    rtr = registered_scscf.received[-1]
    assert rtr.user_name == "alice@home1.net"
    assert rtr.associated_identities.user_names == ("alice-tablet@home1.net",)
    # deleting one IMPI keeps the subscription for the other
    assert (
        await api.delete("/api/v1/subscribers/alice@home1.net", headers=AUTH)
    ).status_code == 200
    left = await api.get("/api/v1/subscribers/alice-tablet@home1.net", headers=AUTH)
    assert left.status_code == 200 and len(left.json()["impus"]) == 2
