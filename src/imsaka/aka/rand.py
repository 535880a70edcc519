"""RAND generation for authentication vectors (TS 33.102 §6.3.2: RAND is random).

`secure_rand(n)` returns n octets from `secrets`, drawn in blocks to spare syscalls.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable

__all__ = ["RandSource", "SecretsRandPool", "secure_rand"]

#: A RAND source: ``source(n) -> n random octets``. Inject one for deterministic tests.
RandSource = Callable[[int], bytes]


class SecretsRandPool:
    """A RAND source: octets from `secrets.token_bytes`, drawn ``block`` octets at a time.

    RAND is public (it travels in the nonce), so holding unused octets in memory is
    harmless; what matters is that no two vectors ever share a RAND (same RAND, same
    RES/CK/IK). Hence the buffer is per thread, and a forked child drops the buffer it
    inherited (it would otherwise hand out the parent's next RANDs again).
    """

    __slots__ = ("__weakref__", "_block", "_local")

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._local = threading.local()
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._local = threading.local()

    def __call__(self, n: int) -> bytes:
        local = self._local
        try:
            buf = local.buf
            pos = local.pos
        except AttributeError:
            buf, pos = b"", 0
        end = pos + n
        if end > len(buf):
            if n > self._block:
                return secrets.token_bytes(n)
            buf, pos, end = secrets.token_bytes(self._block), 0, n
            local.buf = buf
        local.pos = end
        return buf[pos:end]


#: The default RAND source of imsaka.aka.
secure_rand: RandSource = SecretsRandPool()
