"""HTTP Digest with AKA: RFC 2617 digest, RFC 3310 (AKAv1-MD5), RFC 4169 (AKAv2-MD5).

- nonce = base64(RAND ‖ AUTN ‖ server data) (RFC 3310 §3.2); RAND and AUTN are 16 octets.
- AKAv1-MD5: the digest password is RES as raw octets (RFC 3310 §3.3). RES may contain
  0x00 and is never treated as text.
- AKAv2-MD5: the password is base64(HMAC-MD5(key = RES ‖ IK ‖ CK,
  "http-digest-akav2-password")) (RFC 4169 §3). The server uses XRES ‖ IK ‖ CK.
- After a synchronisation failure the client sends ``auts`` = base64(AUTS) and computes
  ``response`` with the empty password (RFC 3310 §3.4).
- MD5: the plain RFC 2617 scheme with a configured password.

Response computation (RFC 2617 §3.2.2): HA1 = MD5(username:realm:password);
HA2 = MD5(method:uri) for qop auth or no qop, MD5(method:uri:MD5(body)) for auth-int;
response = MD5(HA1:nonce:nc:cnonce:qop:HA2), or MD5(HA1:nonce:HA2) without qop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field

__all__ = [
    "AKAV1_MD5",
    "AKAV2_MD5",
    "ALGORITHMS",
    "MD5",
    "Challenge",
    "DigestError",
    "canonical_algorithm",
    "compute_response",
    "decode_auts",
    "encode_auts",
    "make_nonce",
    "password_for",
    "split_nonce",
    "verify_response",
]

AKAV1_MD5 = "AKAv1-MD5"
AKAV2_MD5 = "AKAv2-MD5"
MD5 = "MD5"
ALGORITHMS = (AKAV1_MD5, AKAV2_MD5, MD5)
QOPS = ("auth", "auth-int")

_ALGORITHM_BY_LOWER = {name.lower(): name for name in ALGORITHMS}
# RFC 2617 §3.2.2: nc-value = 8LHEX
_NC = re.compile(r"[0-9a-fA-F]{8}")
_AKAV2_LABEL = b"http-digest-akav2-password"
_md5 = hashlib.md5


class DigestError(ValueError):
    """Bad digest input. The message names the field and never carries a secret."""


def canonical_algorithm(algorithm: str | None) -> str:
    # RFC 2617 §3.2.1: algorithm absent means MD5; tokens compare case-insensitively.
    if algorithm is None:
        return MD5
    name = _ALGORITHM_BY_LOWER.get(algorithm.lower()) if isinstance(algorithm, str) else None
    if name is not None:
        return name
    raise DigestError(
        f"algorithm: unsupported {algorithm!r} (expected one of {', '.join(ALGORITHMS)})"
    )


# -- nonce and auts ------------------------------------------------------------------


def make_nonce(rand: bytes, autn: bytes, server_data: bytes = b"") -> str:
    """nonce = base64(RAND ‖ AUTN ‖ server data) (RFC 3310 §3.2)."""
    if not isinstance(rand, bytes | bytearray) or len(rand) != 16:
        raise DigestError("rand: expected 16 octets")
    if not isinstance(autn, bytes | bytearray) or len(autn) != 16:
        raise DigestError("autn: expected 16 octets")
    if not isinstance(server_data, bytes | bytearray):
        raise DigestError("server_data: expected bytes")
    return base64.b64encode(bytes(rand) + bytes(autn) + bytes(server_data)).decode("ascii")


def _b64decode(name: str, value: str) -> bytes:
    if not isinstance(value, str | bytes):
        raise DigestError(f"{name}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DigestError(f"{name}: not valid base64") from None


def split_nonce(nonce: str) -> tuple[bytes, bytes, bytes]:
    """nonce → (RAND, AUTN, server data). At least 32 octets after base64 decoding."""
    raw = _b64decode("nonce", nonce)
    if len(raw) < 32:
        raise DigestError(f"nonce: expected at least 32 octets (RAND‖AUTN), got {len(raw)}")
    return raw[0:16], raw[16:32], raw[32:]


def encode_auts(auts: bytes) -> str:
    """The ``auts`` Authorization parameter: base64(AUTS) (RFC 3310 §3.4)."""
    if not isinstance(auts, bytes | bytearray) or len(auts) != 14:
        raise DigestError("auts: expected 14 octets")
    return base64.b64encode(bytes(auts)).decode("ascii")


def decode_auts(value: str) -> bytes:
    """Parse the ``auts`` parameter back into the 14 AUTS octets."""
    raw = _b64decode("auts", value)
    if len(raw) != 14:
        raise DigestError(f"auts: expected 14 octets after base64 decoding, got {len(raw)}")
    return raw


# -- password ---------------------------------------------------------------------------


def _octets(name: str, value: object, lengths: tuple[int, int]) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise DigestError(f"{name}: expected bytes")
    if not lengths[0] <= len(value) <= lengths[1]:
        raise DigestError(f"{name}: expected {lengths[0]}..{lengths[1]} octets, got {len(value)}")
    return bytes(value)


def password_for(
    algorithm: str,
    *,
    res: bytes | None = None,
    ik: bytes | None = None,
    ck: bytes | None = None,
    password: bytes | str | None = None,
) -> bytes:
    """The digest password for ``algorithm``.

    AKAv1-MD5: RES (or XRES on the server) as raw octets; ``res=b""`` after a
    synchronisation failure (RFC 3310 §3.4). AKAv2-MD5: base64(HMAC-MD5(RES‖IK‖CK,
    "http-digest-akav2-password")) as ASCII octets (``res=b""``: the empty password
    too). MD5: ``password``.
    """
    algorithm = canonical_algorithm(algorithm)
    if algorithm == MD5:
        if password is None:
            raise DigestError("password: required for MD5")
        if isinstance(password, str):
            return password.encode("utf-8")
        if isinstance(password, bytes | bytearray):
            return bytes(password)
        raise DigestError("password: expected bytes or str")
    if res is None:
        raise DigestError(f"res: required for {algorithm}")
    # RES is 32..128 bits (TS 33.102 §6.3.2); the empty RES is the resync password.
    res = _octets("res", res, (0, 16))
    if algorithm == AKAV1_MD5 or not res:
        # Empty RES: the resync password "" (RFC 3310 §3.4). A sync failure yields no
        # RES, IK or CK, so AKAv2 uses the same empty password.
        return res
    if ik is None or ck is None:
        raise DigestError(f"{'ik' if ik is None else 'ck'}: required for {AKAV2_MD5}")
    ik = _octets("ik", ik, (16, 16))
    ck = _octets("ck", ck, (16, 16))
    return base64.b64encode(hmac.digest(res + ik + ck, _AKAV2_LABEL, "md5"))


# -- response -------------------------------------------------------------------------


def _enc(name: str, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise DigestError(f"{name}: expected str")


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: bytes,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` parameter (32 lower-case hex digits), RFC 2617 §3.2.2.

    ``password`` is the output of `password_for` (raw octets). For AKA algorithms the
    digest itself is MD5; the algorithm name only selects the password.
    """
    try:
        return _compute(
            algorithm, username, realm, password, method, uri, nonce, qop, nc, cnonce, body
        )
    except UnicodeEncodeError:
        # e.g. a lone surrogate from a header decoded with surrogateescape
        for name, value in (
            ("username", username),
            ("realm", realm),
            ("method", method),
            ("uri", uri),
            ("nonce", nonce),
            ("nc", nc),
            ("cnonce", cnonce),
        ):
            if isinstance(value, str) and not _utf8_ok(value):
                raise DigestError(f"{name}: not encodable as UTF-8") from None
        raise


def _utf8_ok(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _compute(algorithm, username, realm, password, method, uri, nonce, qop, nc, cnonce, body):
    canonical_algorithm(algorithm)
    if not isinstance(password, bytes | bytearray):
        raise DigestError("password: expected bytes (see password_for)")
    # type() fast paths: this runs once per REGISTER verification (benchmarks/aka_digest.py)
    u8 = username.encode() if type(username) is str else _enc("username", username)
    r8 = realm.encode() if type(realm) is str else _enc("realm", realm)
    m8 = method.encode() if type(method) is str else _enc("method", method)
    uri8 = uri.encode() if type(uri) is str else _enc("uri", uri)
    ha1 = _md5(b"%s:%s:%s" % (u8, r8, password)).hexdigest()
    if qop is None:
        ha2 = _md5(b"%s:%s" % (m8, uri8)).hexdigest()
        return _md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    if qop == "auth":
        ha2 = _md5(b"%s:%s" % (m8, uri8)).hexdigest()
    elif qop == "auth-int":
        if not isinstance(body, bytes | bytearray):
            raise DigestError("body: expected bytes")
        ha2 = _md5(b"%s:%s:%s" % (m8, uri8, _md5(body).hexdigest().encode())).hexdigest()
    else:
        raise DigestError(f"qop: unsupported {qop!r} (expected auth or auth-int)")
    if not nc or not cnonce:
        raise DigestError(f"{'nc' if not nc else 'cnonce'}: required with qop={qop}")
    if type(nc) is not str or _NC.fullmatch(nc) is None:
        raise DigestError("nc: expected 8 hex digits")
    return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()


def verify_response(
    *,
    response: str,
    algorithm: str,
    username: str,
    realm: str,
    password: bytes,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> bool:
    """True when ``response`` is the digest for these parameters; compared in constant time.

    Malformed parameters from the peer (bad qop, missing nc) make it False, not an
    exception: the caller answers 401/403 the same way as for a wrong response.
    """
    try:
        expected = compute_response(
            algorithm=algorithm,
            username=username,
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
        )
    except DigestError:
        return False
    if not isinstance(response, str) or not response.isascii():
        return False
    return hmac.compare_digest(expected.encode("ascii"), response.lower().encode("ascii"))


# -- challenge ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """A Digest AKA challenge (WWW-Authenticate of the 401, RFC 3310 §3.1, TS 24.229 §5.4.1.2.1).

    ``ck``/``ik`` are carried S-CSCF → P-CSCF only (TS 24.229 §5.4.1.2.1) and stripped
    by the P-CSCF before the UE; they stay out of repr.
    """

    realm: str
    nonce: str
    algorithm: str = AKAV1_MD5
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    ck: bytes | None = field(default=None, repr=False)
    ik: bytes | None = field(default=None, repr=False)

    def to_header_value(self) -> str:
        """``Digest realm="…", nonce="…", algorithm=…, qop="…"[, ck="…", ik="…"]``."""
        parts = [
            f'realm="{self.realm}"',
            f'nonce="{self.nonce}"',
            f"algorithm={self.algorithm}",
        ]
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        if self.opaque is not None:
            parts.append(f'opaque="{self.opaque}"')
        if self.ck is not None:
            parts.append(f'ck="{self.ck.hex()}"')
        if self.ik is not None:
            parts.append(f'ik="{self.ik.hex()}"')
        return "Digest " + ", ".join(parts)
