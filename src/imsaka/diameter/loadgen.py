"""MAR→MAA load over real TCP (TS 29.229 §6.1.7-8) for benchmarks: a fixed-MAA server and
a closed-loop MAR client.

`start_fixed_maa_server()` is our own Diameter node answering every MAR with one fixed
AKA vector: no crypto, no database. It is the baseline an HSS benchmark compares with
(the HSS adds Milenage and a durable SQN on top of exactly this peer). `mar_load()`
keeps `concurrency` MARs in flight from one `DiameterNode` client for `duration`
seconds and reports answers per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from imsaka.diameter import cx
from imsaka.diameter.errors import DiameterRequestError
from imsaka.diameter.node import DiameterNode, PeerSpec

SERVER_HOST = "hss.bench.test"
CLIENT_HOST = "scscf.bench.test"
REALM = "bench.test"

# One fixed vector (the values of TS 35.208 test set 1 shapes; not a secret).
FIXED_ITEM = cx.SipAuthDataItem.aka_vector(
    rand=bytes.fromhex("23553cbe9637a89d218ae64dae47bf35"),
    autn=bytes.fromhex("55f328b43577b9b94a9ffac354dfafb3"),
    xres=bytes.fromhex("a54211d5e3ba50bf"),
    ck=bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb"),
    ik=bytes.fromhex("f769bcd751044604127672711c6d3441"),
    item_number=1,
)


def fixed_maa(
    request: cx.MultimediaAuthRequest, origin_host: str = SERVER_HOST, origin_realm: str = REALM
) -> cx.MultimediaAuthAnswer:
    """The fixed answer: Result-Code 2001, identities echoed, one SIP-Auth-Data-Item."""
    return request.answer(
        origin_host=origin_host,
        origin_realm=origin_realm,
        result_code=cx.DIAMETER_SUCCESS,
        user_name=request.user_name,
        public_identity=request.public_identity,
        sip_number_auth_items=1,
        sip_auth_data_items=(FIXED_ITEM,),
    )


async def start_fixed_maa_server(
    *,
    listen_address: str = "127.0.0.1",
    listen_port: int = 0,
    origin_host: str = SERVER_HOST,
    origin_realm: str = REALM,
    peers: tuple[str, ...] = (CLIENT_HOST,),
) -> DiameterNode:
    """Start our node answering every MAR with `fixed_maa`; `node.port` is its port."""
    node = DiameterNode(
        origin_host=origin_host,
        origin_realm=origin_realm,
        listen_address=listen_address,
        listen_port=listen_port,
        peers=[PeerSpec(p) for p in peers],
        owner="hss",
    )

    async def handler(request: object, peer: object) -> object:
        if isinstance(request, cx.MultimediaAuthRequest):
            return fixed_maa(request, origin_host, origin_realm)
        return None  # answered 5012 by the node

    node.set_request_handler(handler)
    await node.start()
    return node


def default_mar(i: int) -> cx.MultimediaAuthRequest:
    impi = f"00101{i % 100000:010d}@{REALM}"
    return cx.MultimediaAuthRequest(
        session_id=f"{CLIENT_HOST};bench;{i}",
        origin_host=CLIENT_HOST,
        origin_realm=REALM,
        destination_realm=REALM,
        destination_host=SERVER_HOST,
        user_name=impi,
        public_identity=f"sip:{impi}",
        server_name=f"sip:{CLIENT_HOST}:6060",
        sip_number_auth_items=1,
        sip_auth_data_item=cx.SipAuthDataItem(sip_authentication_scheme=cx.SCHEME_AKAV1_MD5),
    )


@dataclass
class LoadResult:
    answers: int
    seconds: float
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.answers / self.seconds if self.seconds > 0 else 0.0


async def mar_load(
    *,
    address: str,
    port: int,
    server_host: str = SERVER_HOST,
    client_host: str = CLIENT_HOST,
    realm: str = REALM,
    duration: float = 5.0,
    warmup: float = 0.5,
    concurrency: int = 32,
    make_request: Callable[[int], cx.MultimediaAuthRequest] = default_mar,
    check: Callable[[cx.MultimediaAuthAnswer], bool] | None = None,
) -> LoadResult:
    """Closed loop: `concurrency` workers each send a MAR, await the MAA, repeat."""
    client = DiameterNode(
        origin_host=client_host,
        origin_realm=realm,
        peers=[PeerSpec(server_host, address, port)],
        tc=0.5,
        owner="scscf",
    )
    await client.start()
    try:
        await client.wait_open(server_host, 10.0)
        counter = 0
        measuring = False
        answers = 0
        errors: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + warmup + duration

        async def worker() -> None:
            nonlocal counter, answers
            while loop.time() < stop_at:
                counter += 1
                try:
                    answer = await client.request(make_request(counter), timeout=10.0)
                except DiameterRequestError as exc:
                    errors[exc.reason] += 1
                    continue
                if check is not None and not check(answer):
                    errors["bad-answer"] += 1
                elif measuring:
                    answers += 1

        tasks = [loop.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        start = time.perf_counter()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
        return LoadResult(answers, seconds, errors)
    finally:
        await client.stop()
