"""The fixed-MAA server and MAR load generator the benchmarks (ours and the HSS's) use."""

from __future__ import annotations

import pytest

from imsaka.diameter import loadgen

pytestmark = pytest.mark.timeout(30)


async def test_fixed_maa_server_under_short_load():
    server = await loadgen.start_fixed_maa_server()
    try:
        result = await loadgen.mar_load(
            address="127.0.0.1",
            port=server.port,
            duration=0.3,
            warmup=0.1,
            concurrency=4,
            check=lambda a: a.is_success and a.sip_auth_data_items == (loadgen.FIXED_ITEM,),
        )
    finally:
        await server.stop()
    assert result.answers > 0 and not result.errors
    assert result.rate > 0
    assert server.counters == {} or set(server.counters) <= {"duplicate-request"}
