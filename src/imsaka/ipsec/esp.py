"""ESP (RFC 4303), transport mode, as sans-I/O objects built once per SA.

Wire format (RFC 4303 §2): SPI (4) ‖ Sequence Number (4) ‖ IV ‖ encrypted(payload ‖
Padding ‖ Pad Length ‖ Next Header) ‖ ICV. Transforms (TS 33.203 Annex H/I):

- integrity hmac-sha-1-96 (RFC 2404), hmac-md5-96 (RFC 2403): HMAC over SPI..ciphertext,
  truncated to 96 bits, compared in constant time;
- encryption aes-cbc (RFC 3602) and des-ede3-cbc (RFC 2451) with a fresh unpredictable
  IV per packet, null (RFC 2410);
- aes-gcm (RFC 4106, 16-octet ICV, AAD = SPI ‖ Seq) and aes-gmac (RFC 4543, integrity
  only, AAD = SPI ‖ Seq ‖ IV ‖ plaintext). Their 8-octet IV is SPI ‖ sequence number:
  RFC 4106 §3.1 requires that a (key, nonce) pair never repeats, and all four SAs of a
  set share one key and salt (TS 33.203 Annex I), so a bare counter would repeat
  across the SAs; the SPIs of a set are distinct (enforced by `SaSet`), which makes
  SPI ‖ Seq unique, where a random 64-bit IV would only be unique with high probability.

One transform per SA set (`EspTransform`): the four SAs of a set share IK/CK (TS 33.203
Annex I), so they share the code and cipher objects that use them, built on the first
packet, not per SA at install time (memory per registered UE: a set that never carries
a packet over an SA costs no cipher context for it).

CBC IVs: one long-lived CBC context per direction of a set; each packet is encrypted as R ‖ plaintext
with R a fresh random block from the injected source, and the first ciphertext block
E(R ⊕ previous) is the packet's IV (the "random first block" construction, equivalent
to a random IV, RFC 3602 §2.4). Decryption feeds IV ‖ ciphertext into a long-lived
context and drops the first output block. This saves building a cipher per packet.

Receive path (RFC 4303 §3.4): lengths → SPI → anti-replay window check (64 packets,
§3.4.3) → ICV → decrypt → padding check (§2.4, monotonic 1, 2, 3 ...) → window update
→ delivery. Every failure is an `EspDrop` with a named reason, counted on the SA and
logged without key material; nothing raises at the caller.

Sending: the 32-bit sequence number never wraps (§3.3.3). Past `soft_limit` the SA
reports `needs_new_registration`; after 2^32-1 packets `protect` raises
`SequenceNumberExhausted`.
"""

from __future__ import annotations

import hmac
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imsaka.ipsec.algorithms import ENCRYPTION, INTEGRITY
from imsaka.ipsec.errors import LocalProtocolError, SequenceNumberExhausted
from imsaka.ipsec.keys import EspKeys

__all__ = [
    "DROP_REASONS",
    "MAX_SEQ",
    "EspDelivered",
    "EspDrop",
    "EspInbound",
    "EspOutbound",
    "EspTransform",
    "ReplayWindow",
    "peek_spi",
]

log = logging.getLogger("imsaka.ipsec.esp")

MAX_SEQ = 0xFFFFFFFF
_HDR = struct.Struct(">II")
# Module-level, not captured per SA set (each captured name is a cell per closure).
_pack = _HDR.pack
_same = hmac.compare_digest
# HMAC digests by the hashlib name in `INTEGRITY`.
_HASHES = {"md5": hashes.MD5, "sha1": hashes.SHA1}
_PAD = bytes(range(1, 256))
RandomSource = Callable[[int], bytes]

# Named drop triggers (STYLE.md rule 10); tests assert on these strings.
TOO_SHORT = "esp-too-short"
WRONG_SPI = "esp-unknown-spi"
SEQ_ZERO = "esp-sequence-zero"
REPLAY = "esp-replay"
TOO_OLD = "esp-replay-window-passed"
BAD_LENGTH = "esp-bad-length"
ICV_MISMATCH = "esp-icv-mismatch"
BAD_PADDING = "esp-bad-padding"
DROP_REASONS = (
    TOO_SHORT,
    WRONG_SPI,
    SEQ_ZERO,
    REPLAY,
    TOO_OLD,
    BAD_LENGTH,
    ICV_MISMATCH,
    BAD_PADDING,
)


def _triple_des():
    # cryptography ≥ 43 keeps 3DES in `decrepit`; older versions in `algorithms`.
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - depends on the installed version
        TripleDES = algorithms.TripleDES
    return TripleDES


def _block_cipher(ealg: str, key: bytes):
    if ealg == "aes-cbc":
        return algorithms.AES(key)
    if ealg == "des-ede3-cbc":
        return _triple_des()(key)
    raise LocalProtocolError(f"ealg: {ealg} is not a CBC cipher")


def peek_spi(packet: bytes) -> int | None:
    """The SPI of an ESP packet, for demultiplexing; None if it cannot be one."""
    if len(packet) < 8:
        return None
    return int.from_bytes(packet[:4], "big")


@dataclass(frozen=True, slots=True)
class EspDelivered:
    """An authenticated, decrypted ESP payload (transport mode)."""

    spi: int
    seq: int
    next_header: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class EspDrop:
    """An ESP packet that was not delivered, and why."""

    spi: int | None
    seq: int | None
    reason: str


_MASKS: dict[int, int] = {}


class ReplayWindow:
    """RFC 4303 §3.4.3 sliding window: bit i of `bitmap` is sequence number `top - i`."""

    __slots__ = ("bitmap", "mask", "size", "top")

    def __init__(self, size: int = 64) -> None:
        if size < 32:
            raise LocalProtocolError("replay window: at least 32 packets (RFC 4303 §3.4.3)")
        self.size = size
        mask = _MASKS.get(size)
        if mask is None:
            mask = _MASKS[size] = (1 << size) - 1  # one int per window size, not per SA
        self.mask = mask
        self.top = 0
        self.bitmap = 0

    def check(self, seq: int) -> str | None:
        """The drop reason for `seq`, or None if it may be accepted (after the ICV check)."""
        if seq == 0:
            return SEQ_ZERO
        if seq > self.top:
            return None
        diff = self.top - seq
        if diff >= self.size:
            return TOO_OLD
        if (self.bitmap >> diff) & 1:
            return REPLAY
        return None

    def update(self, seq: int) -> None:
        """Mark `seq` as received; only after its ICV verified (§3.4.3)."""
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & self.mask if shift < self.size else 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)


class EspTransform:
    """The keys of one SA set and the transform code over them, shared by its SAs.

    `protector()` / `opener()` build the sending / receiving function once, on first
    use: `protect(spi, seq, payload, next_header) -> packet` and `open(packet) ->
    (next_header, payload) | drop reason`. Sharing is sound: the SAs of a set share
    the keys anyway; GCM/GMAC nonces carry the SPI; a CBC packet's IV is the
    encryption of a fresh random block (whatever the context's previous block was),
    and decryption drops the block that depends on the context's history."""

    __slots__ = ("_open", "_protect", "_rng", "keys")

    def __init__(self, keys: EspKeys, rng: RandomSource = os.urandom) -> None:
        self.keys = keys
        self._rng = rng
        self._protect: Callable[[int, int, bytes, int], bytes] | None = None
        self._open: Callable[[bytes], tuple[int, bytes] | str] | None = None

    def protector(self) -> Callable[[int, int, bytes, int], bytes]:
        if self._protect is None:
            self._protect = _build_protect(self.keys, self._rng)
        return self._protect

    def opener(self) -> Callable[[bytes], tuple[int, bytes] | str]:
        if self._open is None:
            self._open = _build_open(self.keys)
        return self._open


class _AlgorithmNames:
    """`alg` / `ealg` of an SA, read from its shared transform's keys (two slots fewer
    per SA than a copy of each)."""

    __slots__ = ()
    _transform: EspTransform

    @property
    def alg(self) -> str:
        return self._transform.keys.alg

    @property
    def ealg(self) -> str:
        return self._transform.keys.ealg


class EspOutbound(_AlgorithmNames):
    """The sending side of one SA: `protect(payload, next_header) -> ESP packet`."""

    __slots__ = (
        "_protect",
        "_transform",
        "seq",
        "soft_limit",
        "spi",
    )

    def __init__(
        self,
        spi: int,
        keys: EspKeys,
        *,
        rng: RandomSource = os.urandom,
        soft_limit: int = MAX_SEQ - 0x10000,
        first_seq: int = 1,
        transform: EspTransform | None = None,
    ) -> None:
        if not 0 < spi <= MAX_SEQ:
            raise LocalProtocolError("spi: out of range")
        self.spi = spi
        self.seq = first_seq - 1  # last sequence number used
        self.soft_limit = soft_limit
        self._transform = transform if transform is not None else EspTransform(keys, rng)
        self._protect: Callable[[int, int, bytes, int], bytes] | None = None

    def protect(self, payload: bytes, next_header: int = 17) -> bytes:
        """One ESP packet carrying `payload`; raises SequenceNumberExhausted, never wraps."""
        seq = self.seq + 1
        if seq > MAX_SEQ:
            raise SequenceNumberExhausted(
                f"spi 0x{self.spi:08x}: sequence numbers exhausted; re-register for new SAs"
            )
        self.seq = seq
        fn = self._protect
        if fn is None:
            fn = self._protect = self._transform.protector()
        return fn(self.spi, seq, payload, next_header)

    @property
    def needs_new_registration(self) -> bool:
        """Past the soft limit (or exhausted): re-register to get fresh SAs in time."""
        return self.seq >= self.soft_limit


class EspInbound(ReplayWindow, _AlgorithmNames):
    """The receiving side of one SA: `unprotect(packet) -> EspDelivered | EspDrop`.

    It is its own replay window (`window` is the SA itself): one object fewer per
    inbound SA, two per registered UE at a P-CSCF."""

    __slots__ = ("_drops", "_open", "_transform", "delivered", "spi")

    def __init__(
        self,
        spi: int,
        keys: EspKeys,
        *,
        window: int = 64,
        transform: EspTransform | None = None,
    ) -> None:
        if not 0 < spi <= MAX_SEQ:
            raise LocalProtocolError("spi: out of range")
        self.spi = spi
        ReplayWindow.__init__(self, window)
        self.delivered = 0
        self._drops: dict[str, int] | None = None  # made on the first drop
        self._transform = transform if transform is not None else EspTransform(keys)
        self._open: Callable[[bytes], tuple[int, bytes] | str] | None = None

    @property
    def window(self) -> ReplayWindow:
        return self

    @property
    def drops(self) -> dict[str, int]:
        """Dropped packets by reason (a copy when there were none)."""
        return self._drops if self._drops is not None else {}

    def unprotect(self, packet: bytes) -> EspDelivered | EspDrop:
        result = self.unprotect_payload(packet)
        if type(result) is EspDrop:
            return result
        return EspDelivered(self.spi, _HDR.unpack_from(packet)[1], result[0], result[1])

    def unprotect_payload(self, packet: bytes) -> tuple[int, bytes] | EspDrop:
        """`unprotect` without its `EspDelivered`: (next header, payload), or the drop
        (the same checks, window update and counters); what a backend reads per packet."""
        if len(packet) < 8:
            return self._drop(None, None, TOO_SHORT)
        spi, seq = _HDR.unpack_from(packet)
        if spi != self.spi:
            return self._drop(spi, seq, WRONG_SPI)
        if seq <= self.top:
            # (a number above the window's top is always new and never 0: `check` only
            # has something to say at or below it)
            reason = self.check(seq)
            if reason is not None:
                return self._drop(spi, seq, reason)
        fn = self._open
        if fn is None:
            fn = self._open = self._transform.opener()
        result = fn(packet)
        if type(result) is str:
            return self._drop(spi, seq, result)
        self.update(seq)
        self.delivered += 1
        return result

    def _drop(self, spi: int | None, seq: int | None, reason: str) -> EspDrop:
        if self._drops is None:
            self._drops = {}
        self._drops[reason] = self._drops.get(reason, 0) + 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "esp drop reason=%s sa_spi=0x%08x pkt_spi=%s seq=%s",
                reason,
                self.spi,
                "-" if spi is None else f"0x{spi:08x}",
                "-" if seq is None else seq,
            )
        return EspDrop(spi, seq, reason)


# --- transform builders: one closure per SA set, no per-packet branching on algorithms ---


def _trailer(n: int, block: int, next_header: int) -> bytes:
    pad_len = -(n + 2) % block
    return _PAD[:pad_len] + bytes((pad_len, next_header))


def _strip_trailer(pt: bytes) -> tuple[int, bytes] | str:
    n = len(pt)
    if n < 2:
        return BAD_LENGTH
    pad_len = pt[-2]
    if pad_len + 2 > n:
        return BAD_PADDING
    end = n - 2 - pad_len
    if pt[end : n - 2] != _PAD[:pad_len]:
        return BAD_PADDING
    return pt[-1], pt[:end]


class _KeyedHmacs:
    """HMAC contexts keyed once, copied per packet: a copy costs about half of keying
    afresh (`hmac.digest` re-derives the padded keys on every call).

    Process-wide and bounded (first in, first out), not one per SA set: a keyed context
    is ~850 octets of OpenSSL state, too much to keep for every registered UE, while
    the packets of a set come in bursts (a registration's REGISTER, 200, NOTIFY within
    milliseconds), so the last `size` keys catch almost all of them (256: the sets
    registered in the last ~0.7 s at 350 registrations/s; each key costs ~750 octets,
    so 1,024 of them were ~0.7 KiB per UE at a P-CSCF with 1,000 registered). An
    evicted key is keyed again on its next packet. The cache holds IK_esp only as a dict key, in
    memory, like the SAs themselves; nothing of it is logged."""

    __slots__ = ("_contexts", "_digest", "size")

    def __init__(self, digest: str, size: int = 256) -> None:
        self._digest = _HASHES[digest]
        self._contexts: dict[bytes, _c_hmac.HMAC] = {}
        self.size = size

    def context(self, key: bytes) -> _c_hmac.HMAC:
        """A fresh HMAC context over `key`, ready for `update`."""
        keyed = self._contexts.get(key)
        if keyed is None:
            contexts = self._contexts
            if len(contexts) >= self.size:
                # Tolerant of another thread's loop evicting at the same time.
                contexts.pop(next(iter(contexts), None), None)
            keyed = contexts[key] = _c_hmac.HMAC(key, self._digest())
        return keyed.copy()

    def forget(self, key: bytes) -> None:
        self._contexts.pop(key, None)


_KEYED = {name: _KeyedHmacs(name) for name in _HASHES}


def forget_keys(keys: EspKeys) -> None:
    """Drop the keyed HMAC context over `keys.ik_esp` once its SA set is removed, so the
    table keeps IK_esp no longer than the SAs that use it."""
    table = _KEYED.get(INTEGRITY[keys.alg].digest)
    if table is not None:
        table.forget(keys.ik_esp)


class _NullTransform:
    """ESP with null encryption and an HMAC ICV (the IMS default, TS 33.203 Annex H):
    `protect` / `open` as the other builders' closures do, from one slotted object."""

    __slots__ = ("_ik", "_integ")

    def __init__(self, keys: EspKeys) -> None:
        self._ik = keys.ik_esp
        self._integ = _NULL_INTEGRITY[keys.alg]

    def protect(self, spi: int, seq: int, payload: bytes, nh: int) -> bytes:
        keyed, icv_len = self._integ
        signed = b"".join((_pack(spi, seq), payload, _trailer(len(payload), 4, nh)))
        mac = keyed.context(self._ik)
        mac.update(signed)
        return signed + mac.finalize()[:icv_len]

    def open(self, packet: bytes):
        keyed, icv_len = self._integ
        n = len(packet)
        if n < 8 + 4 + icv_len:
            return TOO_SHORT
        if (n - 8 - icv_len) % 4:
            return BAD_LENGTH
        mac = keyed.context(self._ik)
        # a view: the signed part is not copied for the MAC
        mac.update(memoryview(packet)[: n - icv_len])
        if not _same(mac.finalize()[:icv_len], packet[n - icv_len :]):
            return ICV_MISMATCH
        return _strip_trailer(packet[8 : n - icv_len])


# (keyed HMAC contexts, ICV length) per HMAC integrity algorithm
_NULL_INTEGRITY = {
    name: (_KEYED[integ.digest], integ.icv_len)
    for name, integ in INTEGRITY.items()
    if getattr(integ, "digest", None) in _KEYED
}


def _build_protect(keys: EspKeys, rng: RandomSource):
    integ = INTEGRITY[keys.alg]
    enc = ENCRYPTION[keys.ealg]
    if enc.aead:
        aead = AESGCM(keys.ck_esp)
        salt = keys.salt

        def protect_gcm(spi: int, seq: int, payload: bytes, nh: int) -> bytes:
            header = _pack(spi, seq)
            iv = header  # SPI ‖ Seq: unique per (key, SA, packet)
            body = payload + _trailer(len(payload), 4, nh)
            return header + iv + aead.encrypt(salt + iv, body, header)

        return protect_gcm
    if keys.alg == "aes-gmac":
        gmac = AESGCM(keys.ik_esp)
        salt = keys.salt

        def protect_gmac(spi: int, seq: int, payload: bytes, nh: int) -> bytes:
            header = _pack(spi, seq)
            signed = header + header + payload + _trailer(len(payload), 4, nh)
            return signed + gmac.encrypt(salt + header, b"", signed)

        return protect_gmac
    if keys.ealg == "null":
        # No per-set closure (a P-CSCF keeps a transform per registered UE): a method
        # of a small object over the keys, shared code per integrity algorithm.
        return _NullTransform(keys).protect
    icv_len = integ.icv_len
    ik = keys.ik_esp
    keyed = _KEYED[integ.digest].context
    block = enc.block_size
    encryptor = Cipher(_block_cipher(keys.ealg, keys.ck_esp), modes.CBC(rng(block))).encryptor()
    update = encryptor.update

    def protect_cbc(spi: int, seq: int, payload: bytes, nh: int) -> bytes:
        # The first output block, E(R xor previous block), is this packet's IV.
        signed = _pack(spi, seq) + update(rng(block) + payload + _trailer(len(payload), block, nh))
        mac = keyed(ik)
        mac.update(signed)
        return signed + mac.finalize()[:icv_len]

    return protect_cbc


def _build_open(keys: EspKeys):
    integ = INTEGRITY[keys.alg]
    enc = ENCRYPTION[keys.ealg]
    if enc.aead:
        aead = AESGCM(keys.ck_esp)
        salt = keys.salt

        def open_gcm(packet: bytes):
            if len(packet) < 8 + 8 + 16 + 4:
                return TOO_SHORT
            if (len(packet) - 32) % 4:
                return BAD_LENGTH
            try:
                pt = aead.decrypt(salt + packet[8:16], packet[16:], packet[:8])
            except InvalidTag:
                return ICV_MISMATCH
            return _strip_trailer(pt)

        return open_gcm
    if keys.alg == "aes-gmac":
        gmac = AESGCM(keys.ik_esp)
        salt = keys.salt

        def open_gmac(packet: bytes):
            if len(packet) < 8 + 8 + 4 + 16:
                return TOO_SHORT
            if (len(packet) - 32) % 4:
                return BAD_LENGTH
            try:
                gmac.decrypt(salt + packet[8:16], packet[-16:], packet[:-16])
            except InvalidTag:
                return ICV_MISMATCH
            return _strip_trailer(packet[16:-16])

        return open_gmac
    if keys.ealg == "null":
        return _NullTransform(keys).open
    icv_len = integ.icv_len
    ik = keys.ik_esp
    keyed = _KEYED[integ.digest].context
    block = enc.block_size
    decryptor = Cipher(_block_cipher(keys.ealg, keys.ck_esp), modes.CBC(bytes(block))).decryptor()
    update = decryptor.update
    minimum = 8 + 2 * block + icv_len  # header, IV, one block of ciphertext, ICV

    def open_cbc(packet: bytes):
        n = len(packet)
        if n < minimum:
            return TOO_SHORT
        if (n - 8 - icv_len) % block:
            return BAD_LENGTH
        signed = packet[:-icv_len]
        mac = keyed(ik)
        mac.update(signed)
        if not _same(mac.finalize()[:icv_len], packet[-icv_len:]):
            return ICV_MISMATCH
        # IV ‖ ciphertext through a long-lived context: block 0 of the output is junk.
        return _strip_trailer(update(signed[8:])[block:])

    return open_cbc
