"""The P-CSCF's registrations in Redis as it runs (``[pcscf].state_store``), so that a
P-CSCF that stopped without warning (a crash, SIGKILL, a power cut) comes back with
the UEs it served (TS 24.229 §5.2.2, §5.2.3; TS 33.203 §7).

One hash per P-CSCF, ``imsaka:pcscf:<name>@<address>:<port>:regs`` (two P-CSCFs
running at once never share an address and port): field IMPI, value the JSON record
`imsaka.cscf.pcscf_state.record_of` makes (its times counted from its own
``saved_at``), and for a set held for a REGISTER's retransmissions, field its key (a
NUL, then the P-CSCF's spi-s), value its `pcscf_state.held_record`; and ``…:meta``, the document's head (format, version, the P-CSCF's
address and ports, ``clean``). The server writes, every ``state_interval`` seconds,
the records that changed since (those the core and the SA table name:
`imsaka.cscf.tracking`) and removes those that went, in one MULTI/EXEC; ``clean`` is
false while it runs and true after the last write of a stop asked for. A start that finds it false
takes the records back as written before a crash (`pcscf_state.load(crashed=True)`:
sequence numbers moved on past what was written).

Only the asyncio edge of Redis is here; what is written is `pcscf_state`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["PcscfStateStore"]


class PcscfStateStore:
    """One P-CSCF's records in Redis at `url` (``redis://host:port/db``); `name`: the
    P-CSCF's name, address and port (``pcscf1.home1.net@10.0.0.1:5060``)."""

    __slots__ = ("_meta", "_redis", "_regs", "url")

    def __init__(self, url: str, name: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        prefix = f"imsaka:pcscf:{name}:"
        self._regs = prefix + "regs"
        self._meta = prefix + "meta"
        # bounded: a Redis that does not answer must not hold up a start or a pass
        self._redis = aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)

    async def read(self) -> tuple[bytes | None, dict[str, bytes]]:
        """(the head's JSON as written, or None; the records' JSON by IMPI), for the
        caller to decode. Raises redis' errors when Redis cannot be reached."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._meta)
        pipe.hgetall(self._regs)
        meta, fields = await pipe.execute()
        return meta, {k.decode(): v for k, v in fields.items()}

    async def write(
        self,
        head: Mapping[str, Any],
        changed: Mapping[str, str],
        removed: Iterable[str],
        *,
        replace: bool = False,
    ) -> None:
        """The records in `changed` (IMPI -> JSON) set, those of `removed` deleted and
        the head written, all at once; `replace`: every other record deleted first."""
        pipe = self._redis.pipeline(transaction=True)
        if replace:
            pipe.delete(self._regs)
        if changed:
            pipe.hset(self._regs, mapping=dict(changed))
        gone = list(removed)
        if gone:
            pipe.hdel(self._regs, *gone)
        pipe.set(self._meta, json.dumps(dict(head), separators=(",", ":")))
        await pipe.execute()

    async def clear(self) -> None:
        await self._redis.delete(self._regs, self._meta)

    async def close(self) -> None:
        await self._redis.aclose()
