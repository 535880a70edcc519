"""A real home network on loopback: HSS (imsaka.hss, SQLite), I-CSCF and S-CSCF servers, and
a SIP client that plays the P-CSCF's side of the seed's packets 2 and 9."""

from __future__ import annotations

import os
import socket

import pytest

from imsaka.config import parse_config
from imsaka.cscf.icscf import IcscfServer
from imsaka.cscf.scscf import ScscfServer
from imsaka.hss.config import HssConfig, PeerEntry, ScscfPoolEntry
from imsaka.hss.server import HssServer
from imsaka.hss.store import HssStore
from imsaka.hss.subscriber import validate_subscriber
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transport import UdpTransport
from tests.conftest import free_port

from .fakes import IMPI, OPC, K

HOME = "home1.net"
REALM = "registrar.home1.net"
HSS_HOST = "hss.home1.net"
ICSCF_HOST = "icscf1.home1.net"
SCSCF_HOST = "scscf1.home1.net"
# the Diameter identity of a second instance of the S-CSCF (tests that run one)
SCSCF2_HOST = "scscf1b.home1.net"
VISITED = "Visited Network Number 1"
IMPUS = ["sip:user1_public1@home1.net", "sip:user1_public2@home1.net", "tel:+1-212-555-1111"]


def network_dict(hss_port: int, icscf_port: int, scscf_port: int, **scscf_over) -> dict:
    scscf = {
        "name": "scscf1.home1.net",
        "address": "127.0.0.1",
        "port": scscf_port,
        "transports": ["udp"],
        "realm": REALM,
        "diameter": {
            "host": SCSCF_HOST,
            "realm": HOME,
            "timeout": 2.0,
            "peers": [{"host": HSS_HOST, "realm": HOME, "address": "127.0.0.1", "port": hss_port}],
        },
    }
    scscf.update(scscf_over)
    return {
        "network": {"home_domains": [HOME], "hosts": {"scscf1.home1.net": "127.0.0.1"}},
        "icscf": {
            "name": "icscf1_p.home1.net",
            "address": "127.0.0.1",
            "port": icscf_port,
            "transports": ["udp"],
            "diameter": {
                "host": ICSCF_HOST,
                "realm": HOME,
                "timeout": 2.0,
                "peers": [
                    {"host": HSS_HOST, "realm": HOME, "address": "127.0.0.1", "port": hss_port}
                ],
            },
            "scscfs": [{"name": f"sip:scscf1.home1.net:{scscf_port}", "address": "127.0.0.1"}],
        },
        "scscf": scscf,
    }


class HomeNetwork:
    """The running pieces of one test network and what crossed their sockets."""

    def __init__(self, tmp_path, *, dead_scscf: bool = False, **scscf_over) -> None:
        self.tmp_path = tmp_path
        self.dead_scscf = dead_scscf
        self.scscf_over = scscf_over
        self.events: list = []
        self.hss: HssServer | None = None
        self.icscf: IcscfServer | None = None
        self.scscf: ScscfServer | None = None
        self.client: SipEndpoint | None = None
        self.store: HssStore | None = None

    async def start(self) -> None:
        self.store = await HssStore.open(f"sqlite+aiosqlite:///{self.tmp_path / 'hss.db'}")
        await self.store.add_subscriber(
            validate_subscriber(
                impi=IMPI, impus=IMPUS, k=K.hex(), opc=OPC.hex(), sqn="000000000020"
            )
        )
        await self.store.add_subscriber(
            validate_subscriber(
                impi="user2_private@home1.net",
                impus=["sip:user2_public1@home1.net"],
                k=K.hex(),
                opc=OPC.hex(),
            )
        )
        self.icscf_port = free_port(socket.SOCK_DGRAM)
        self.scscf_port = free_port(socket.SOCK_DGRAM)
        self.server_name = f"sip:scscf1.home1.net:{self.scscf_port}"
        pool = [ScscfPoolEntry(self.server_name, SCSCF_HOST)]
        if self.dead_scscf:
            # An S-CSCF the HSS lists first but nobody runs (TCP: refused at once).
            self.dead_port = free_port()
            self.dead_name = f"sip:scscf0.home1.net:{self.dead_port}"
            pool.insert(0, ScscfPoolEntry(self.dead_name, "scscf0.home1.net"))
        self.hss = HssServer(
            HssConfig(
                database=str(self.store.engine.url),
                diameter_host=HSS_HOST,
                diameter_realm=HOME,
                diameter_port=0,
                peers=(PeerEntry(SCSCF_HOST), PeerEntry(ICSCF_HOST), PeerEntry(SCSCF2_HOST)),
                home_networks=(HOME,),
                visited_networks=(VISITED,),
                api_port=0,
                request_timeout=2.0,
                scscfs=tuple(pool),
            ),
            store=self.store,
            observers=(self.events.append,),
        )
        await self.hss.start()
        doc = network_dict(
            self.hss.diameter_port, self.icscf_port, self.scscf_port, **self.scscf_over
        )
        if self.dead_scscf:
            doc["icscf"]["transports"] = ["udp", "tcp"]
            doc["icscf"]["scscfs"].insert(
                0, {"name": self.dead_name, "address": "127.0.0.1", "transport": "tcp"}
            )
        self.config = parse_config(doc)
        await self.start_scscf()
        self.icscf = IcscfServer(
            self.config.icscf, self.config.network, observers=(self.events.append,), reconnect=0.5
        )
        await self.icscf.start()
        await self.icscf.node.wait_open(HSS_HOST, timeout=5)
        self.client = SipEndpoint(owner="pcscf")
        self.client.add_transport(await UdpTransport.create("127.0.0.1", 0, owner="pcscf"))
        self.pcscf_port = self.client.transports[0].local_address[1]

    async def start_scscf(self, store=None) -> None:
        self.scscf = ScscfServer(
            self.config.scscf, store=store, observers=(self.events.append,), reconnect=0.5
        )
        await self.scscf.start()
        await self.scscf.node.wait_open(HSS_HOST, timeout=5)

    async def stop(self) -> None:
        for part in (self.client, self.icscf, self.scscf, self.hss):
            if part is None:
                continue
            try:
                if isinstance(part, SipEndpoint):
                    await part.close()
                else:
                    await part.stop()
            except Exception:  # keep stopping the others
                pass
        if self.store is not None:
            await self.store.close()


@pytest.fixture
async def home(tmp_path):
    net = HomeNetwork(tmp_path)
    try:
        await net.start()
        yield net
    finally:
        await net.stop()


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("IMSAKA_TEST_REDIS", "redis://127.0.0.1:6379/15")


class RedisHome:
    """A `HomeNetwork` whose S-CSCF keeps its bindings in Redis under a prefix of its
    own: `store()` opens a store on that prefix, `restart_scscf()` stops the S-CSCF and
    starts a new one on it (a restart that keeps what Redis holds)."""

    def __init__(self, net: HomeNetwork, url: str) -> None:
        self.net = net
        self.url = url
        self.prefix = f"imsaka:test:{os.getpid()}:{os.urandom(4).hex()}:"

    def store(self):
        from imsaka.cscf.registrar import RedisBindingStore

        return RedisBindingStore(self.url, prefix=self.prefix)

    async def restart_scscf(self) -> None:
        await self.net.scscf.stop()
        await self.net.start_scscf(self.store())


@pytest.fixture
async def redis_home(tmp_path, redis_url):
    """`RedisHome` started; its keys removed and the network stopped after the test."""
    home = RedisHome(
        HomeNetwork(tmp_path, binding_store=redis_url, share_challenges=True), redis_url
    )
    try:
        await home.net.start()
        await home.restart_scscf()  # on the test's own prefix
        yield home
    finally:
        cleanup = home.store()
        await cleanup.clear()
        await cleanup.close()
        await home.net.stop()
