"""Fixtures for the HSS tests: a store on a temporary SQLite file, a running HssServer
on loopback, and a Diameter client (the Diameter engineer's DiameterNode) acting as
S-CSCF / I-CSCF."""

from __future__ import annotations

import itertools
import os

import pytest
import sqlalchemy as sa

from imsaka.diameter import cx
from imsaka.diameter.node import DiameterNode, PeerSpec
from imsaka.hss.config import HssConfig, PeerEntry, ScscfPoolEntry
from imsaka.hss.server import HssServer
from imsaka.hss.store import HssStore
from imsaka.hss.subscriber import validate_subscriber

# TS 35.208 test set 1
K = "465b5ce8b199b49faa5f0a2ee238a6bc"
OP = "cdc202d5123e20f62b6d676ac72cb318"
OPC = "cd63cb71954a9f4e48a5994e37a02baf"
HOME = "home1.net"
HSS_HOST = "hss.home1.net"
SCSCF_HOST = "scscf1.home1.net"
ICSCF_HOST = "icscf1.home1.net"
SCSCF_NAME = "sip:scscf1.home1.net:5080"
PG_URL = os.environ.get("IMSAKA_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

_sessions = itertools.count(1)


def session_id(host: str = SCSCF_HOST) -> str:
    return f"{host};1;{next(_sessions)}"


def alice(**over):
    fields = dict(
        impi="alice@home1.net",
        impus=["sip:alice@home1.net", "tel:+15550001"],
        k=K,
        op=OP,
        sqn="000000000020",
    )
    fields.update(over)
    return validate_subscriber(**fields)


def hss_config(db: str, **over) -> HssConfig:
    fields = dict(
        database=db,
        diameter_host=HSS_HOST,
        diameter_realm=HOME,
        diameter_address="127.0.0.1",
        diameter_port=0,
        peers=(PeerEntry(SCSCF_HOST), PeerEntry(ICSCF_HOST)),
        home_networks=(HOME,),
        visited_networks=("visited1.net",),
        api_port=0,
        request_timeout=2.0,
        scscfs=(ScscfPoolEntry(SCSCF_NAME, SCSCF_HOST, (), (1,)),),
    )
    fields.update(over)
    return HssConfig(**fields)


async def wipe(store: HssStore) -> None:
    async with store.engine.begin() as conn:
        for t in (
            "visited_network",
            "impu",
            "impi",
            "implicit_set",
            "service_profile",
            "scscf",
            "subscription",
        ):
            await conn.execute(sa.text(f"DELETE FROM {t}"))


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'hss.db'}"


@pytest.fixture
async def store(db_url):
    s = await HssStore.open(db_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def hss(store):
    await store.add_subscriber(alice())
    server = HssServer(hss_config(str(store.engine.url)), store=store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def client_node(port: int, host: str = SCSCF_HOST, **kw) -> DiameterNode:
    node = DiameterNode(
        origin_host=host,
        origin_realm=HOME,
        peers=[PeerSpec(host=HSS_HOST, address="127.0.0.1", port=port)],
        tc=0.5,
        **kw,
    )
    await node.start()
    await node.wait_open(HSS_HOST, timeout=5)
    return node


@pytest.fixture
async def scscf(hss):
    node = await client_node(hss.diameter_port)
    try:
        yield node
    finally:
        await node.stop()


def mar(
    impi="alice@home1.net",
    impu="sip:alice@home1.net",
    n=1,
    scheme=cx.SCHEME_AKAV1_MD5,
    authorization=None,
    server=SCSCF_NAME,
):
    return cx.MultimediaAuthRequest(
        session_id=session_id(),
        origin_host=SCSCF_HOST,
        origin_realm=HOME,
        destination_realm=HOME,
        user_name=impi,
        public_identity=impu,
        server_name=server,
        sip_number_auth_items=n,
        sip_auth_data_item=cx.SipAuthDataItem(
            sip_authentication_scheme=scheme, sip_authorization=authorization
        ),
    )


def uar(impi="alice@home1.net", impu="sip:alice@home1.net", visited=HOME, uat=None, flags=None):
    return cx.UserAuthorizationRequest(
        session_id=session_id(ICSCF_HOST),
        origin_host=ICSCF_HOST,
        origin_realm=HOME,
        destination_realm=HOME,
        user_name=impi,
        public_identity=impu,
        visited_network_identifier=visited,
        user_authorization_type=uat,
        uar_flags=flags,
    )


def sar(sat, impi="alice@home1.net", impus=("sip:alice@home1.net",), udaa=0, server=SCSCF_NAME):
    return cx.ServerAssignmentRequest(
        session_id=session_id(),
        origin_host=SCSCF_HOST,
        origin_realm=HOME,
        destination_realm=HOME,
        server_name=server,
        server_assignment_type=int(sat),
        user_data_already_available=udaa,
        user_name=impi,
        public_identities=tuple(impus),
    )


def lir(impu="sip:alice@home1.net", uat=None):
    return cx.LocationInfoRequest(
        session_id=session_id(ICSCF_HOST),
        origin_host=ICSCF_HOST,
        origin_realm=HOME,
        destination_realm=HOME,
        public_identity=impu,
        user_authorization_type=uat,
    )
