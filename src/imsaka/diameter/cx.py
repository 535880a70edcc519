"""Cx commands as frozen events: TS 29.228 §6 (procedures) and TS 29.229 §6 (messages, AVPs).

Application 16777216 (Cx), vendor 10415 (3GPP). Each command pair is a request and an
answer dataclass, the same classes on both ends, with `encode(hop_by_hop, end_to_end)`
(the wire bytes), `to_message()` (the same as a `codec.Message`) and `from_message()`.
`decode(message)` picks the class from the command code and the R bit; a request's
`answer(**fields)` builds its answer with the Session-Id copied.

Decoding a request checks the AVPs TS 29.229 §6.1 writes in { braces } (required): one
missing raises `RemoteProtocolError` with Result-Code 5005 DIAMETER_MISSING_AVP and a
Failed-AVP naming it, so the server can answer properly. A single-valued AVP sent twice
is 5009 DIAMETER_AVP_OCCURS_TOO_MANY_TIMES; a payload of the wrong size 5014. AVPs we do
not know are ignored (Kamailio adds a vendor-50 Call-Id AVP to SAR).

CK, IK and XRES (or RAND‖AUTS) sit in `SipAuthDataItem` fields with `repr=False`.

Speed (every Cx message of a registration passes here twice, in two processes): each
class's field table (`_SPEC`) is compiled once into an encoder function of straight-line
code (`_make_encoder`), and `decode_frame(frame)`, which a `DiameterNode`'s peers use,
decodes a well-formed frame to its event in one walk over the octets (`_walk`) without
an Avp tuple per AVP. Both are fast paths of the table-driven reference
(`codec.decode_message` + `decode`, `_encode_avp_bytes`): any unusual value or octet
takes the reference path, so the bytes and the errors are the reference's
(tests/diameter/test_captured.py checks every octet of a real registration's frames).
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from imsaka.diameter import codec

# The base result codes below are re-exported, so Cx users import them from one place.
from imsaka.diameter.codec import (  # noqa: F401
    AVP_AUTH_SESSION_STATE,
    AVP_DESTINATION_HOST,
    AVP_DESTINATION_REALM,
    AVP_ERROR_MESSAGE,
    AVP_EXPERIMENTAL_RESULT,
    AVP_EXPERIMENTAL_RESULT_CODE,
    AVP_FAILED_AVP,
    AVP_ORIGIN_HOST,
    AVP_ORIGIN_REALM,
    AVP_RESULT_CODE,
    AVP_SESSION_ID,
    AVP_USER_NAME,
    AVP_VENDOR_ID,
    AVP_VENDOR_SPECIFIC_APPLICATION_ID,
    DIAMETER_AUTHORIZATION_REJECTED,
    DIAMETER_AVP_NOT_ALLOWED,
    DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
    DIAMETER_AVP_UNSUPPORTED,
    DIAMETER_COMMAND_UNSUPPORTED,
    DIAMETER_INVALID_AVP_LENGTH,
    DIAMETER_INVALID_AVP_VALUE,
    DIAMETER_INVALID_HDR_BITS,
    DIAMETER_MISSING_AVP,
    DIAMETER_SUCCESS,
    DIAMETER_TOO_BUSY,
    DIAMETER_UNABLE_TO_COMPLY,
    DIAMETER_UNABLE_TO_DELIVER,
    DIAMETER_UNKNOWN_PEER,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    VENDOR_3GPP,
    Avp,
    Message,
)
from imsaka.diameter.errors import LocalProtocolError, RemoteProtocolError

CX_APPLICATION_ID = 16777216

# TS 29.229 §6.1 command codes.
CMD_USER_AUTHORIZATION = 300
CMD_SERVER_ASSIGNMENT = 301
CMD_LOCATION_INFO = 302
CMD_MULTIMEDIA_AUTH = 303
CMD_REGISTRATION_TERMINATION = 304
CMD_PUSH_PROFILE = 305

# TS 29.229 §6.2.1 success codes, carried in Experimental-Result (vendor 10415).
DIAMETER_FIRST_REGISTRATION = 2001
DIAMETER_SUBSEQUENT_REGISTRATION = 2002
DIAMETER_UNREGISTERED_SERVICE = 2003
DIAMETER_SUCCESS_SERVER_NAME_NOT_STORED = 2004
# TS 29.229 §6.2.2 permanent failures, carried in Experimental-Result (vendor 10415).
DIAMETER_ERROR_USER_UNKNOWN = 5001
DIAMETER_ERROR_IDENTITIES_DONT_MATCH = 5002
DIAMETER_ERROR_IDENTITY_NOT_REGISTERED = 5003
DIAMETER_ERROR_ROAMING_NOT_ALLOWED = 5004
DIAMETER_ERROR_IDENTITY_ALREADY_REGISTERED = 5005
DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED = 5006
DIAMETER_ERROR_IN_ASSIGNMENT_TYPE = 5007
DIAMETER_ERROR_TOO_MUCH_DATA = 5008
DIAMETER_ERROR_NOT_SUPPORTED_USER_DATA = 5009
DIAMETER_ERROR_FEATURE_UNSUPPORTED = 5011
DIAMETER_ERROR_SERVING_NODE_FEATURE_UNSUPPORTED = 5012

# TS 29.229 §6.3 AVP codes (vendor 10415).
AVP_VISITED_NETWORK_IDENTIFIER = 600
AVP_PUBLIC_IDENTITY = 601
AVP_SERVER_NAME = 602
AVP_SERVER_CAPABILITIES = 603
AVP_MANDATORY_CAPABILITY = 604
AVP_OPTIONAL_CAPABILITY = 605
AVP_USER_DATA = 606
AVP_SIP_NUMBER_AUTH_ITEMS = 607
AVP_SIP_AUTHENTICATION_SCHEME = 608
AVP_SIP_AUTHENTICATE = 609
AVP_SIP_AUTHORIZATION = 610
AVP_SIP_AUTHENTICATION_CONTEXT = 611
AVP_SIP_AUTH_DATA_ITEM = 612
AVP_SIP_ITEM_NUMBER = 613
AVP_SERVER_ASSIGNMENT_TYPE = 614
AVP_DEREGISTRATION_REASON = 615
AVP_REASON_CODE = 616
AVP_REASON_INFO = 617
AVP_CHARGING_INFORMATION = 618
AVP_USER_AUTHORIZATION_TYPE = 623
AVP_USER_DATA_ALREADY_AVAILABLE = 624
AVP_CONFIDENTIALITY_KEY = 625
AVP_INTEGRITY_KEY = 626
AVP_SIP_DIGEST_AUTHENTICATE = 635
AVP_ASSOCIATED_IDENTITIES = 632
AVP_ORIGINATING_REQUEST = 633
AVP_UAR_FLAGS = 637
AVP_MULTIPLE_REGISTRATION_INDICATION = 648

# SIP-Authentication-Scheme strings (TS 29.229 §6.3.9, TS 33.203).
SCHEME_AKAV1_MD5 = "Digest-AKAv1-MD5"
SCHEME_AKAV2_MD5 = "Digest-AKAv2-MD5"
SCHEME_SIP_DIGEST = "SIP Digest"  # TS 29.229's name for HTTP Digest MD5 (SIP-Digest-Authenticate)
# Not a TS 29.229 value, but what some S-CSCFs (Kamailio's ims_auth among them) send for MD5.
SCHEME_MD5 = "Digest-MD5"
SCHEME_UNKNOWN = "Unknown"

NO_STATE_MAINTAINED = 1  # Auth-Session-State (RFC 6733 §8.11)


class ServerAssignmentType(IntEnum):
    """TS 29.229 §6.3.15."""

    NO_ASSIGNMENT = 0
    REGISTRATION = 1
    RE_REGISTRATION = 2
    UNREGISTERED_USER = 3
    TIMEOUT_DEREGISTRATION = 4
    USER_DEREGISTRATION = 5
    TIMEOUT_DEREGISTRATION_STORE_SERVER_NAME = 6
    USER_DEREGISTRATION_STORE_SERVER_NAME = 7
    ADMINISTRATIVE_DEREGISTRATION = 8
    AUTHENTICATION_FAILURE = 9
    AUTHENTICATION_TIMEOUT = 10
    DEREGISTRATION_TOO_MUCH_DATA = 11
    AAA_USER_DATA_REQUEST = 12
    PGW_UPDATE = 13
    RESTORATION = 14


class UserAuthorizationType(IntEnum):
    """TS 29.229 §6.3.24."""

    REGISTRATION = 0
    DE_REGISTRATION = 1
    REGISTRATION_AND_CAPABILITIES = 2


class UserDataAlreadyAvailable(IntEnum):
    """TS 29.229 §6.3.26."""

    USER_DATA_NOT_AVAILABLE = 0
    USER_DATA_ALREADY_AVAILABLE = 1


class ReasonCode(IntEnum):
    """Reason-Code inside Deregistration-Reason, TS 29.229 §6.3.17."""

    PERMANENT_TERMINATION = 0
    NEW_SERVER_ASSIGNED = 1
    SERVER_CHANGE = 2
    REMOVE_S_CSCF = 3


class OriginatingRequest(IntEnum):
    """TS 29.229 §6.3.32."""

    ORIGINATING = 0


class MultipleRegistrationIndication(IntEnum):
    """TS 29.229 §6.3.51."""

    NOT_MULTIPLE_REGISTRATION = 0
    MULTIPLE_REGISTRATION = 1


# --- table-driven AVP <-> field conversion ---------------------------------------------

# A field spec: (attribute, AVP code, vendor, kind, many, required-in-request).
# kind: "str" (UTF8String / DiameterIdentity as text), "bytes" (OctetString), "u32",
# "i32" (Enumerated / Integer32), or a grouped dataclass with its own _SPEC.
_Spec = tuple[tuple[str, int, int, Any, bool, bool], ...]


def _minimal_payload(kind: Any) -> bytes:
    return b"\0\0\0\0" if kind in ("u32", "i32") else b""


# Compiled tables (built once per class, see _compile): the hot paths below avoid
# per-AVP dictionary lookups of definitions and intermediate objects.
_HEAD = struct.Struct("!II").pack
_VHEAD = struct.Struct("!III").pack
_U32_PACK = codec._U32.pack
_I32_PACK = codec._I32.pack
_U32_UNPACK = codec._U32.unpack
_I32_UNPACK = codec._I32.unpack
_PADDING = codec._PAD
_HEADER_PACK = codec._HEADER.pack
_HEAD_UNPACK_FROM = codec._AVP_HEADER.unpack_from
_VHEAD_UNPACK_FROM = codec._AVP_VHEADER.unpack_from
_U32_UNPACK_FROM = codec._U32.unpack_from
_I32_UNPACK_FROM = codec._I32.unpack_from


def _enc_text(value: str | bytes) -> bytes:
    kind = type(value)
    if kind is str:
        return value.encode("utf-8")  # type: ignore[union-attr]
    if kind is bytes:
        return value  # type: ignore[return-value]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError("expected str or bytes")  # bytes(12) would be twelve zero octets


# Encoded AVPs of repeated values. Most AVPs of a Cx message repeat from one message to
# the next: Origin-/Destination-Host and -Realm, Server-Name, Visited-Network-Identifier,
# the subscriber's IMPI and IMPU over the four requests of a registration, the result
# codes and enumerations. A field whose values repeat keeps a small table value →
# encoded AVP (header, payload, padding), emptied when it reaches _CACHE_MAX entries.
# Only plain `str` and `int` values are looked up (an IntEnum, a bool or a bytes value
# takes the ordinary path), so a table hit is exactly what encoding would produce.
# Never for Session-Id (unique per request), Error-Message, OctetStrings (XRES, CK, IK,
# User-Data) or anything inside SIP-Auth-Data-Item (Digest-HA1).
_CACHE_MAX = 512
_UNCACHED_ATTRS = frozenset({"session_id", "error_message"})


def _encode_avp_bytes(
    obj: Any, attr: str, enc: Any, v: Any, code: int, vendor: int, flag_word: int
) -> bytes:
    try:
        data = enc(v)
    except (struct.error, TypeError, AttributeError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(
            f"{type(obj).__name__}.{attr}: cannot encode {type(v).__name__} ({exc})"
        ) from None
    n = len(data)
    if n > 0xFFFFF0:
        raise LocalProtocolError(f"{type(obj).__name__}.{attr}: value too long")
    head = (
        _VHEAD(code, flag_word | (n + 12), vendor) if vendor else _HEAD(code, flag_word | (n + 8))
    )
    return head + data + _PADDING[n & 3]


def _remember(
    cache: dict, obj: Any, attr: str, enc: Any, v: Any, code: int, vendor: int, flag_word: int
) -> bytes:
    found = _encode_avp_bytes(obj, attr, enc, v, code, vendor, flag_word)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[v] = found
    return found


def _fill_lines(compiled: tuple, ns: dict[str, Any], lines: list[str]) -> None:
    """Source lines appending the AVPs of the fields in `compiled` to `parts`, in order.

    One straight run of statements per field, constants folded in (see _make_encoder).
    The common values are encoded inline; anything else (a group, an IntEnum, non-ASCII
    text, a value out of range or of the wrong type) goes through `_encode_avp_bytes`,
    which gives the bytes or the LocalProtocolError it always gave."""
    for attr, many, enc, code, vendor, flag_word, cache in compiled:
        n = len(ns)
        ns[f"enc{n}"] = enc
        args = f'obj, "{attr}", enc{n}, v, {code}, {vendor}, {flag_word}'
        if many:
            lines += [f"value = obj.{attr}", "if value is not None:", "    for v in value:"]
            pad = "        "
        else:
            lines += [f"v = obj.{attr}", "if v is not None:"]
            pad = "    "
        if cache is not None:
            ns[f"cache{n}"] = cache
            # Only the exact type of the field's values is looked up: an IntEnum, a bool,
            # a bytes or a wrong-typed value takes the ordinary path (and its errors).
            plain = "str" if enc is _enc_text else "int"
            lines += [
                f"{pad}if type(v) is {plain}:",
                f"{pad}    found = cache{n}.get(v)",
                f"{pad}    append(found if found is not None else _remember(cache{n}, {args}))",
                f"{pad}else:",
                f"{pad}    append(_encode_avp_bytes({args}))",
            ]
        elif enc is _enc_text:
            head = (
                f"_VHEAD({code}, {flag_word} | (n + 12), {vendor})"
                if vendor
                else (f"_HEAD({code}, {flag_word} | (n + 8))")
            )
            lines += [
                f"{pad}data = v if type(v) is bytes else v.encode() if type(v) is str and v.isascii() else None",
                f"{pad}if data is not None and (n := len(data)) <= 0xFFFFF0:",
                f"{pad}    append({head} + data + _PADDING[n & 3])",
                f"{pad}else:",
                f"{pad}    append(_encode_avp_bytes({args}))",
            ]
        elif enc is _U32_PACK or enc is _I32_PACK:
            # Fixed size: the AVP header is a constant.
            ns[f"head{n}"] = (
                _VHEAD(code, flag_word | 16, vendor) if vendor else _HEAD(code, flag_word | 12)
            )
            low, high = (0, 0xFFFFFFFF) if enc is _U32_PACK else (-(1 << 31), (1 << 31) - 1)
            lines += [
                f"{pad}if type(v) is int and {low} <= v <= {high}:",
                f"{pad}    append(head{n} + enc{n}(v))",
                f"{pad}else:",
                f"{pad}    append(_encode_avp_bytes({args}))",
            ]
        else:
            lines.append(f"{pad}append(_encode_avp_bytes({args}))")


def _make_encoder(cls: Any) -> Any:
    """`fill(obj, parts)` for a grouped class; for a command `body(obj) -> parts`, the
    AVPs in ABNF order (TS 29.229 §6.1) after an empty slot for the header.

    Generated once per class from its compiled table, like dataclasses writes __init__:
    per field no table walk, no tuple unpacking, no test of "repeated?" or "cached?"."""
    ns: dict[str, Any] = {
        "_encode_avp_bytes": _encode_avp_bytes,
        "_remember": _remember,
        "_HEAD": _HEAD,
        "_VHEAD": _VHEAD,
        "_PADDING": _PADDING,
        "_VSAI_BYTES": _VSAI_BYTES,
        "_AUTH_SESSION_STATE_BYTES": _AUTH_SESSION_STATE_BYTES,
        "_failed_avp": _failed_avp_bytes,
    }
    lines: list[str] = []
    if not hasattr(cls, "IS_REQUEST"):
        _fill_lines(cls._ENC, ns, lines)
        head, tail = "def fill(obj, parts):\n    append = parts.append\n", "    return None\n"
    else:
        # Session-Id first (RFC 6733 §8.8), the fixed application AVPs, the result.
        split = 1 if cls.IS_REQUEST else 2
        _fill_lines(cls._ENC[:1], ns, lines)
        lines.append("append(_VSAI_BYTES)")
        if not cls.IS_REQUEST:
            _fill_lines(cls._ENC[1:split], ns, lines)
            lines.append("if obj.experimental_result_code is not None:")
            lines.append("    append(obj._experimental_result())")
        lines.append("append(_AUTH_SESSION_STATE_BYTES)")
        _fill_lines(cls._ENC[split:], ns, lines)
        if not cls.IS_REQUEST:
            lines.append("if obj.failed_avp:")
            lines.append("    append(_failed_avp(obj.failed_avp))")
        head = 'def body(obj):\n    parts = [b""]\n    append = parts.append\n'
        tail = "    return parts\n"
    source = head + "".join(f"    {line}\n" for line in lines) + tail
    exec(compile(source, f"<imsaka.diameter.cx encoder of {cls.__name__}>", "exec"), ns)
    return ns["fill"] if "fill" in ns else ns["body"]


def _failed_avp_bytes(avps: Any) -> bytes:
    return codec.FAILED_AVP(list(avps)).encode()


def _encode_group(cls: Any, value: Any) -> bytes:
    parts: list[bytes] = []
    cls._FILL(value, parts)
    return b"".join(parts)


def _decode_group(cls: Any, avp: Avp) -> Any:
    data = avp[3]
    found = cls._LAYOUT(data)
    if found is not None:
        return found
    values: dict[str, Any] = {}
    if _walk(cls._DEC, data, 0, len(data), values, None) and _has_required(cls, values):
        return cls(**values)
    # Something unusual: the reference path raises the error it always raised.
    return _decode_fields(cls, codec.decode_avps(data))


def _walk(
    index: dict, data: bytes, offset: int, end: int, values: dict, marks: dict | None
) -> bool:
    """The fields of the AVPs in data[offset:end] into `values`, in one walk without Avp
    tuples: `codec.decode_avps` and `_decode_fields` in one, for well-formed input only.

    On anything those would refuse (a length out of range, a repeated AVP, bad UTF-8, a
    wrong size) it returns False, and the caller takes their path for its exact error.
    Index entries of kind _K_MARK keep the payload of their first AVP in `marks`."""
    multi: dict[str, list[Any]] | None = None
    while offset < end:
        if end - offset < 8:
            return False
        if data[offset + 4] & 0x80:  # V bit: code, flags and length, vendor in one unpack
            if end - offset < 12:
                return False
            code, flags_len, vendor = _VHEAD_UNPACK_FROM(data, offset)
            length = flags_len & 0xFFFFFF
            if length < 12:
                return False
            key = code | (vendor << 32)
            start = offset + 12
        else:
            code, flags_len = _HEAD_UNPACK_FROM(data, offset)
            length = flags_len & 0xFFFFFF
            if length < 8:
                return False
            key = code
            start = offset + 8
        stop = offset + length
        if stop > end:
            return False
        offset += (length + 3) & ~3
        entry = index.get(key)
        if entry is None:
            continue  # unknown AVPs are ignored (see the module docstring)
        attr, kind, many, decoder = entry
        if kind == _K_STR:
            try:
                value = data[start:stop].decode("utf-8")
            except UnicodeDecodeError:
                return False
        elif kind == _K_U32:
            if stop - start != 4:
                return False
            value = _U32_UNPACK_FROM(data, start)[0]
        elif kind == _K_I32:
            if stop - start != 4:
                return False
            value = _I32_UNPACK_FROM(data, start)[0]
        elif kind == _K_BYTES:
            value = data[start:stop]
        elif kind == _K_MARK:
            if attr not in marks:  # type: ignore[operator]
                marks[attr] = data[start:stop]  # type: ignore[index]
            continue
        else:
            try:
                value = decoder(Avp(code, key >> 32, flags_len >> 24, data[start:stop]))
            except RemoteProtocolError:
                return False
        if many:
            if multi is None:
                multi = {}
            multi.setdefault(attr, []).append(value)
        elif attr in values:
            return False
        else:
            values[attr] = value
    if multi:
        for attr, items in multi.items():
            values[attr] = tuple(items)
    return True


def _has_required(cls: Any, values: dict[str, Any]) -> bool:
    return values.keys() >= cls._REQ_NAMES


# Field kinds of the decode index (inlined in _decode_fields: no call per AVP).
_K_STR, _K_BYTES, _K_U32, _K_I32, _K_GROUP, _K_MARK = range(6)
_NO_CACHE_CLASSES: set[str] = {"SipAuthDataItem", "SipDigestAuthenticate"}


def _compile(cls: Any) -> None:
    """Attach the encode table `_ENC`, decode index `_DEC` and required list `_REQ`."""
    enc = []
    dec = {}
    req = []
    for attr, code, vendor, kind, many, required in cls._SPEC:
        flags = codec.avp_def(code, vendor).flags
        cacheable = attr not in _UNCACHED_ATTRS and cls.__name__ not in _NO_CACHE_CLASSES
        decoder = None
        if kind in ("str", "bytes"):
            encoder, tag = _enc_text, (_K_STR if kind == "str" else _K_BYTES)
            cacheable = cacheable and kind == "str"
        elif kind == "u32":
            encoder, tag = _U32_PACK, _K_U32
        elif kind == "i32":
            encoder, tag = _I32_PACK, _K_I32
        else:
            _compile(kind)
            encoder = functools.partial(_encode_group, kind)
            decoder = functools.partial(_decode_group, kind)
            tag, cacheable = _K_GROUP, False
        enc.append((attr, many, encoder, code, vendor, flags << 24, {} if cacheable else None))
        dec[code | (vendor << 32)] = (attr, tag, many, decoder)
        if required:
            req.append((attr, code, vendor, flags, _minimal_payload(kind)))
    cls._ENC = tuple(enc)
    cls._DEC = dec
    cls._REQ = tuple(req)
    cls._REQ_NAMES = frozenset(r[0] for r in req)
    if hasattr(cls, "IS_REQUEST"):
        cls._BODY = staticmethod(_make_encoder(cls))
        # decode_frame's index: the fields, and the AVPs from_message reads itself.
        marks = (
            (AVP_VENDOR_SPECIFIC_APPLICATION_ID, AVP_AUTH_SESSION_STATE)
            if cls.IS_REQUEST
            else (AVP_EXPERIMENTAL_RESULT, AVP_FAILED_AVP)
        )
        assert not any(code in dec for code in marks)
        cls._FAST = {**dec, **{code: (code, _K_MARK, False, None) for code in marks}}
    else:
        cls._FILL = staticmethod(_make_encoder(cls))
        cls._LAYOUT = staticmethod(_make_decoder(cls))


def _decode_fields(cls: Any, avps: tuple[Avp, ...], values: dict[str, Any] | None = None) -> Any:
    index = cls._DEC
    if values is None:
        values = {}
    multi: dict[str, list[Any]] | None = None
    for avp in avps:
        entry = index.get(avp[0] | (avp[1] << 32))
        if entry is None:
            continue  # unknown AVPs are ignored (see the module docstring)
        attr, kind, many, decoder = entry
        if kind == _K_STR:
            try:
                value = avp[3].decode("utf-8")
            except UnicodeDecodeError:
                value = avp.text  # raises the RemoteProtocolError naming the AVP
        elif kind == _K_U32:
            data = avp[3]
            value = _U32_UNPACK(data)[0] if len(data) == 4 else avp.u32  # else raises 5014
        elif kind == _K_I32:
            data = avp[3]
            value = _I32_UNPACK(data)[0] if len(data) == 4 else avp.i32
        elif kind == _K_BYTES:
            value = avp[3]
        else:
            value = decoder(avp)
        if many:
            if multi is None:
                multi = {}
            multi.setdefault(attr, []).append(value)
        elif attr in values:
            raise RemoteProtocolError(
                f"AVP {avp.code}/{avp.vendor} ({attr}) occurs more than once",
                result_code=DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
                reason="avp-repeated",
                failed_avp=avp,
            )
        else:
            values[attr] = value
    if multi:
        for attr, items in multi.items():
            values[attr] = tuple(items)
    for attr, code, vendor, flags, minimal in cls._REQ:
        if attr not in values:
            name = codec.avp_def(code, vendor).name
            raise RemoteProtocolError(
                f"{cls.__name__}: mandatory AVP {name} ({code}) missing",
                result_code=DIAMETER_MISSING_AVP,
                reason="missing-avp",
                failed_avp=Avp(code, vendor, flags, minimal),
            )
    return cls(**values)


# --- the expected layout in one straight run ---------------------------------------------
#
# A Cx message from imsaka, Kamailio or open5gs carries its AVPs in the ABNF order of TS
# 29.229 §6.1 (the order `_make_encoder` writes), each once. `_make_decoder` generates,
# per command, a function that reads exactly that layout (each optional AVP present or
# not) with one header unpack per AVP and no index lookups, no per-AVP dispatch on the
# field kind and no dict of values. Whatever else it meets (another order, an unknown or
# repeated AVP, a length out of range, bad UTF-8, a wrong size, a group that does not
# decode, a mandatory AVP missing) gives None, and `_decode_plain` takes the general walk
# for the result or the error it always gave. So the result, when there is one, is what
# the walk gives for the same frame.

_TRIPLE_UNPACK_FROM = struct.Struct("!III").unpack_from


def _slot_lines(
    name: str, code: int, vendor: int, kind: int, many: bool, required: bool
) -> list[str]:
    """Lines reading one AVP of the layout into local `name` (at `off`, header in
    `code, fl, third`: third is the vendor of a V AVP, else its first payload word)."""
    if vendor:
        match, start, low = f"code == {code} and fl >= 0x80000000 and third == {vendor}", 12, 12
    else:
        match, start, low = f"code == {code} and fl < 0x80000000", 8, 8  # V bit clear
    body = [
        "length = fl & 0xFFFFFF",
        f"if length < {low}:",
        "    return None",
        "stop = off + length",
        "if stop > end:",
        "    return None",
    ]
    if kind == _K_STR:
        body.append(f"value = data[off + {start}:stop].decode()")
    elif kind in (_K_BYTES, _K_MARK):
        body.append(f"value = data[off + {start}:stop]")
    elif kind in (_K_U32, _K_I32):
        unpack = "_U32" if kind == _K_U32 else "_I32"
        body += [
            f"if length != {start + 4}:",
            "    return None",
            f"value = {unpack}(data, off + {start})[0]",
        ]
    else:  # a group: its own decoder, as the walk calls it
        body.append(
            f"value = dec_{name}(Avp({code}, {vendor}, fl >> 24, data[off + {start}:stop]))"
        )
    body += [
        "off += (length + 3) & ~3",
        "if end - off >= 12:",
        "    code, fl, third = _TRIPLE(data, off)",
        "else:",
        "    code = -1",
    ]
    if many:
        lines = [f"{name} = []", f"while {match}:"]
        lines += [f"    {line}" for line in body[:-5]]
        lines.append(f"    {name}.append(value)")
        lines += [f"    {line}" for line in body[-5:]]
        lines.append(f"{name} = tuple({name})")
        return lines
    lines = [f"if {match}:"] + [f"    {line}" for line in body] + [f"    {name} = value"]
    lines += ["else:", "    return None" if required else f"    {name} = None"]
    return lines


def _make_decoder(cls: Any) -> Any:
    """`fast(data) -> event | None` for a whole frame of command `cls`, or for the
    payload of a grouped AVP of class `cls` (its AVPs in the order of its table)."""
    ns: dict[str, Any] = {
        "Avp": Avp,
        "_TRIPLE": _TRIPLE_UNPACK_FROM,
        "_U32": _U32_UNPACK_FROM,
        "_I32": _I32_UNPACK_FROM,
        "_answer_extras": _answer_extras,
        "RemoteProtocolError": RemoteProtocolError,
        "cls": cls,
        "build": codec.frozen_builder(cls),
    }
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    fields: list[tuple[str, int, int, int, bool, bool, str]] = []  # (local, ..., attr)
    for i, (attr, code, vendor, _kind, many, required) in enumerate(cls._SPEC):
        tag = cls._DEC[code | (vendor << 32)][1]
        if tag == _K_GROUP:
            ns[f"dec_v{i}"] = cls._DEC[code | (vendor << 32)][3]
        fields.append((f"v{i}", code, vendor, tag, many, required, attr))
    command = hasattr(cls, "IS_REQUEST")
    answer = command and not cls.IS_REQUEST
    if command:
        mark = (AVP_VENDOR_SPECIFIC_APPLICATION_ID, AVP_AUTH_SESSION_STATE)
        slots = [fields[0], ("vsai", mark[0], 0, _K_MARK, False, cls.IS_REQUEST, "")]
        if answer:
            slots.append(fields[1])
            slots.append(("exp", AVP_EXPERIMENTAL_RESULT, 0, _K_MARK, False, False, ""))
        slots.append(("ass", mark[1], 0, _K_MARK, False, cls.IS_REQUEST, ""))
        slots += fields[2 if answer else 1 :]
        if answer:
            slots.append(("failed", AVP_FAILED_AVP, 0, _K_MARK, False, False, ""))
    else:
        slots = list(fields)
    lines = [
        "end = len(data)",
        f"off = {codec.HEADER_LENGTH if command else 0}",
        "if end - off < 12:",
        "    return None",
        "code, fl, third = _TRIPLE(data, off)",
    ]
    for local, code, vendor, tag, many, required, _attr in slots:
        lines += _slot_lines(local, code, vendor, tag, many, required)
    lines += ["if off != end:", "    return None"]
    args = []
    for local, _code, _vendor, _tag, many, _required, attr in fields:
        default = defaults[attr]
        if default is dataclasses.MISSING and not required:
            lines += [f"if {local} is None:", "    return None"]  # the walk's TypeError
        if many or default is None or default is dataclasses.MISSING:
            args.append(f"{attr}={local}")
        else:
            ns[f"default_{local}"] = default
            args.append(f"{attr}={local} if {local} is not None else default_{local}")
    call = f"build({', '.join(args)}"
    if not answer:
        lines.append(f"return {call})")
    else:
        lines += [
            "extra = {}",
            "if exp is not None or failed is not None:",
            "    try:",
            "        _answer_extras(exp, failed, extra)",
            "    except RemoteProtocolError:",
            "        return None",
            f"return {call}, **extra)",
        ]
    source = "def fast(data):\n    try:\n"
    source += "".join(f"        {line}\n" for line in lines)
    source += "    except (UnicodeDecodeError, RemoteProtocolError):\n        return None\n"
    exec(compile(source, f"<imsaka.diameter.cx decoder of {cls.__name__}>", "exec"), ns)
    return ns["fast"]


# --- grouped AVPs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipDigestAuthenticate:
    """SIP-Digest-Authenticate (635), TS 29.229 §6.3.36: the HTTP Digest (RFC 2617)
    data of the "SIP Digest" scheme, with RFC 4740's Digest-* AVPs inside.

    Digest-HA1 = H(username:realm:password) stands for the password: never in reprs.
    """

    digest_realm: str
    digest_ha1: str = field(repr=False)
    digest_algorithm: str | None = None
    digest_qop: str | None = None

    _SPEC: ClassVar[_Spec] = (
        ("digest_realm", 104, 0, "str", False, True),
        ("digest_algorithm", 111, 0, "str", False, False),
        ("digest_qop", 110, 0, "str", False, False),
        ("digest_ha1", 121, 0, "str", False, True),
    )


@dataclass(frozen=True, slots=True)
class SipAuthDataItem:
    """SIP-Auth-Data-Item (612), TS 29.229 §6.3.13.

    In an MAA for IMS AKA: `sip_authenticate` = RAND‖AUTN (32 octets),
    `sip_authorization` = XRES, `confidentiality_key` = CK, `integrity_key` = IK.
    In a resynchronisation MAR: `sip_authorization` = RAND‖AUTS (16 + 14 octets).
    """

    sip_item_number: int | None = None
    sip_authentication_scheme: str | None = None
    sip_authenticate: bytes | None = None
    sip_authorization: bytes | None = field(default=None, repr=False)
    sip_authentication_context: bytes | None = None
    confidentiality_key: bytes | None = field(default=None, repr=False)
    integrity_key: bytes | None = field(default=None, repr=False)
    sip_digest_authenticate: SipDigestAuthenticate | None = None

    _SPEC: ClassVar[_Spec] = (
        ("sip_item_number", AVP_SIP_ITEM_NUMBER, VENDOR_3GPP, "u32", False, False),
        ("sip_authentication_scheme", AVP_SIP_AUTHENTICATION_SCHEME, VENDOR_3GPP, "str", False, False),
        ("sip_authenticate", AVP_SIP_AUTHENTICATE, VENDOR_3GPP, "bytes", False, False),
        ("sip_authorization", AVP_SIP_AUTHORIZATION, VENDOR_3GPP, "bytes", False, False),
        ("sip_authentication_context", AVP_SIP_AUTHENTICATION_CONTEXT, VENDOR_3GPP, "bytes", False, False),
        ("confidentiality_key", AVP_CONFIDENTIALITY_KEY, VENDOR_3GPP, "bytes", False, False),
        ("integrity_key", AVP_INTEGRITY_KEY, VENDOR_3GPP, "bytes", False, False),
        ("sip_digest_authenticate", AVP_SIP_DIGEST_AUTHENTICATE, VENDOR_3GPP, SipDigestAuthenticate, False, False),
    )  # fmt: skip

    @classmethod
    def aka_vector(
        cls,
        *,
        rand: bytes,
        autn: bytes,
        xres: bytes,
        ck: bytes,
        ik: bytes,
        item_number: int | None = None,
        scheme: str = SCHEME_AKAV1_MD5,
    ) -> SipAuthDataItem:
        """The MAA item for one AKA vector (TS 29.229 §6.3.13, TS 33.203 §6.1)."""
        return cls(
            sip_item_number=item_number,
            sip_authentication_scheme=scheme,
            sip_authenticate=rand + autn,
            sip_authorization=xres,
            confidentiality_key=ck,
            integrity_key=ik,
        )

    @classmethod
    def sip_digest(
        cls,
        *,
        realm: str,
        ha1: str,
        algorithm: str | None = "MD5",
        qop: str | None = "auth",
        item_number: int | None = None,
    ) -> SipAuthDataItem:
        """The MAA item of the "SIP Digest" scheme (TS 29.229 §6.3.9, §6.3.36)."""
        return cls(
            sip_item_number=item_number,
            sip_authentication_scheme=SCHEME_SIP_DIGEST,
            sip_digest_authenticate=SipDigestAuthenticate(
                digest_realm=realm, digest_ha1=ha1, digest_algorithm=algorithm, digest_qop=qop
            ),
        )

    @property
    def rand(self) -> bytes | None:
        """RAND: first 16 octets of SIP-Authenticate (MAA) or SIP-Authorization (resync)."""
        source = self.sip_authenticate or self.sip_authorization
        return source[:16] if source and len(source) >= 16 else None

    @property
    def autn(self) -> bytes | None:
        a = self.sip_authenticate
        return a[16:32] if a and len(a) >= 32 else None

    @property
    def auts(self) -> bytes | None:
        """AUTS of a resynchronisation MAR (SIP-Authorization = RAND‖AUTS), else None."""
        a = self.sip_authorization
        return a[16:30] if a and len(a) == 30 else None


@dataclass(frozen=True, slots=True)
class ServerCapabilities:
    """Server-Capabilities (603), TS 29.229 §6.3.4."""

    mandatory_capabilities: tuple[int, ...] = ()
    optional_capabilities: tuple[int, ...] = ()
    server_names: tuple[str, ...] = ()

    _SPEC: ClassVar[_Spec] = (
        ("mandatory_capabilities", AVP_MANDATORY_CAPABILITY, VENDOR_3GPP, "u32", True, False),
        ("optional_capabilities", AVP_OPTIONAL_CAPABILITY, VENDOR_3GPP, "u32", True, False),
        ("server_names", AVP_SERVER_NAME, VENDOR_3GPP, "str", True, False),
    )


@dataclass(frozen=True, slots=True)
class DeregistrationReason:
    """Deregistration-Reason (615), TS 29.229 §6.3.16."""

    reason_code: int
    reason_info: str | None = None

    _SPEC: ClassVar[_Spec] = (
        ("reason_code", AVP_REASON_CODE, VENDOR_3GPP, "i32", False, True),
        ("reason_info", AVP_REASON_INFO, VENDOR_3GPP, "str", False, False),
    )


@dataclass(frozen=True, slots=True)
class ChargingInformation:
    """Charging-Information (618), TS 29.229 §6.3.19: the S-CSCF copies these into
    P-Charging-Function-Addresses (ecf / ccf)."""

    primary_event_charging_function_name: str | None = None
    secondary_event_charging_function_name: str | None = None
    primary_charging_collection_function_name: str | None = None
    secondary_charging_collection_function_name: str | None = None

    _SPEC: ClassVar[_Spec] = (
        ("primary_event_charging_function_name", 619, VENDOR_3GPP, "str", False, False),
        ("secondary_event_charging_function_name", 620, VENDOR_3GPP, "str", False, False),
        ("primary_charging_collection_function_name", 621, VENDOR_3GPP, "str", False, False),
        ("secondary_charging_collection_function_name", 622, VENDOR_3GPP, "str", False, False),
    )


@dataclass(frozen=True, slots=True)
class AssociatedIdentities:
    """Associated-Identities (632), TS 29.229 §6.3.33: the IMPIs sharing the IMPU(s)."""

    user_names: tuple[str, ...] = ()

    _SPEC: ClassVar[_Spec] = (("user_names", AVP_USER_NAME, 0, "str", True, False),)


# --- commands ---------------------------------------------------------------------------

_VSAI = Avp(
    AVP_VENDOR_SPECIFIC_APPLICATION_ID,
    0,
    codec.VENDOR_SPECIFIC_APPLICATION_ID.flags,
    codec.VENDOR_ID(VENDOR_3GPP).encode() + codec.AUTH_APPLICATION_ID(CX_APPLICATION_ID).encode(),
)
_AUTH_SESSION_STATE = codec.AUTH_SESSION_STATE(NO_STATE_MAINTAINED)
_VSAI_BYTES = _VSAI.encode()
_EXPERIMENTAL_RESULTS: dict[tuple[int, int], bytes] = {}
_AUTH_SESSION_STATE_BYTES = _AUTH_SESSION_STATE.encode()

# Common head of every Cx request and answer (TS 29.229 §6.1.x ABNF order).
_REQ_HEAD: _Spec = (
    ("session_id", AVP_SESSION_ID, 0, "str", False, True),
    ("origin_host", AVP_ORIGIN_HOST, 0, "str", False, True),
    ("origin_realm", AVP_ORIGIN_REALM, 0, "str", False, True),
    ("destination_host", AVP_DESTINATION_HOST, 0, "str", False, False),
    ("destination_realm", AVP_DESTINATION_REALM, 0, "str", False, True),
)
_ANS_HEAD: _Spec = (
    ("session_id", AVP_SESSION_ID, 0, "str", False, True),
    ("result_code", AVP_RESULT_CODE, 0, "u32", False, False),
    ("origin_host", AVP_ORIGIN_HOST, 0, "str", False, True),
    ("origin_realm", AVP_ORIGIN_REALM, 0, "str", False, True),
)
_ANS_TAIL: _Spec = (("error_message", AVP_ERROR_MESSAGE, 0, "str", False, False),)


class _Command:
    """Shared encode/decode for the Cx dataclasses (a mix-in without state)."""

    __slots__ = ()
    CODE: ClassVar[int]
    IS_REQUEST: ClassVar[bool]
    FLAGS: ClassVar[int]
    _SPEC: ClassVar[_Spec]
    _ENC: ClassVar[tuple]
    _BODY: ClassVar[Any]
    _DEC: ClassVar[dict]
    _REQ: ClassVar[tuple]
    _BUILD: ClassVar[Any]

    def encode_body(self) -> bytes:
        """The AVPs, encoded, in ABNF order (TS 29.229 §6.1): Session-Id first (RFC 6733
        §8.8), the fixed application AVPs, the result, then the command's own AVPs."""
        return b"".join(self._BODY(self))

    def encode(self, hop_by_hop: int = 0, end_to_end: int = 0) -> bytes:
        """The whole message on the wire."""
        parts = self._BODY(self)
        parts[0] = _HEADER_PACK(
            0x01000000 | (20 + sum(map(len, parts))),  # version 1, length with the header
            (self.FLAGS << 24) | self.CODE,
            CX_APPLICATION_ID,
            hop_by_hop,
            end_to_end,
        )
        return b"".join(parts)

    def to_message(self, hop_by_hop: int = 0, end_to_end: int = 0) -> Message:
        """As a `codec.Message` (same bytes as `encode()`)."""
        avps = codec.decode_avps(self.encode_body())
        return Message(self.CODE, self.FLAGS, CX_APPLICATION_ID, hop_by_hop, end_to_end, avps)

    @classmethod
    def from_message(cls, msg: Message) -> Any:
        if msg.code != cls.CODE or msg.is_request != cls.IS_REQUEST:
            raise LocalProtocolError(f"{cls.__name__}.from_message: command {msg.code}")
        if cls.IS_REQUEST:
            avps = msg.avps
            # Where we (and Kamailio, open5gs) put them: right after Session-Id.
            if not (
                len(avps) > 2
                and avps[1][0] == AVP_VENDOR_SPECIFIC_APPLICATION_ID
                and avps[2][0] == AVP_AUTH_SESSION_STATE
                and not avps[1][1]
                and not avps[2][1]
            ):
                _check_application_avps(cls.__name__, msg)
            return _decode_fields(cls, avps)
        extra: dict[str, Any] = {}
        exp = failed = None
        for a in msg.avps:  # the first Experimental-Result and Failed-AVP, in one pass
            if a[1] == 0:
                if a[0] == AVP_EXPERIMENTAL_RESULT:
                    if exp is None:
                        exp = a
                elif a[0] == AVP_FAILED_AVP and failed is None:
                    failed = a
        _answer_extras(
            None if exp is None else exp[3], None if failed is None else failed[3], extra
        )
        return _decode_fields(cls, msg.avps, extra)


_TWO_U32_AVPS = struct.Struct("!IIIIII").unpack


def _answer_extras(exp: bytes | None, failed: bytes | None, values: dict[str, Any]) -> None:
    """The fields an answer's Experimental-Result and Failed-AVP payloads give."""
    if exp is not None and len(exp) == 24:
        c1, w1, v1, c2, w2, v2 = _TWO_U32_AVPS(exp)
        if not (w1 | w2) & 0x80000000 and w1 & 0xFFFFFF == 12 and w2 & 0xFFFFFF == 12:
            # What the walk below reads off the usual layout, two 4-octet AVPs without
            # a vendor (Vendor-Id and Experimental-Result-Code, RFC 6733 §7.6), at once.
            for code, value in ((c1, v1), (c2, v2)):
                if code == AVP_EXPERIMENTAL_RESULT_CODE:
                    values["experimental_result_code"] = value
                elif code == AVP_VENDOR_ID:
                    values["experimental_result_vendor"] = value
            exp = None
    if exp is not None:
        for a in codec.decode_avps(exp):
            if a.code == AVP_EXPERIMENTAL_RESULT_CODE and a.vendor == 0:
                values["experimental_result_code"] = a.u32
            elif a.code == AVP_VENDOR_ID and a.vendor == 0:
                values["experimental_result_vendor"] = a.u32
    if failed is not None:
        values["failed_avp"] = codec.decode_avps(failed)


def _check_application_avps(name: str, msg: Message) -> None:
    for code, definition, payload in (
        (
            AVP_VENDOR_SPECIFIC_APPLICATION_ID,
            codec.VENDOR_SPECIFIC_APPLICATION_ID,
            b"",
        ),
        (AVP_AUTH_SESSION_STATE, codec.AUTH_SESSION_STATE, b"\0\0\0\0"),
    ):
        if msg.find(code) is None:
            raise RemoteProtocolError(
                f"{name}: mandatory AVP {definition.name} ({code}) missing",
                result_code=DIAMETER_MISSING_AVP,
                reason="missing-avp",
                failed_avp=Avp(code, 0, definition.flags, payload),
            )


class _Answer(_Command):
    """Every answer carries session_id, origin_host, origin_realm, a result (result_code,
    or experimental_result_code with experimental_result_vendor, default 10415),
    failed_avp (the AVPs inside Failed-AVP) and error_message."""

    __slots__ = ()
    IS_REQUEST: ClassVar[bool] = False
    FLAGS: ClassVar[int] = FLAG_PROXIABLE

    def _experimental_result(self: Any) -> bytes:
        """Experimental-Result {Vendor-Id, Experimental-Result-Code}, encoded once per pair."""
        vendor, code = self.experimental_result_vendor, self.experimental_result_code
        plain = type(vendor) is int and type(code) is int
        if plain:
            found = _EXPERIMENTAL_RESULTS.get((vendor, code))
            if found is not None:
                return found
        found = codec.EXPERIMENTAL_RESULT(
            [codec.VENDOR_ID(vendor), codec.EXPERIMENTAL_RESULT_CODE(code)]
        ).encode()
        if plain:
            if len(_EXPERIMENTAL_RESULTS) >= _CACHE_MAX:
                _EXPERIMENTAL_RESULTS.clear()
            _EXPERIMENTAL_RESULTS[(vendor, code)] = found
        return found

    @property
    def result(self: Any) -> int | None:
        """The outcome: Result-Code if present, else the Experimental-Result-Code."""
        return self.result_code if self.result_code is not None else self.experimental_result_code

    @property
    def is_success(self: Any) -> bool:
        r = self.result
        return r is not None and 2000 <= r < 3000


class _Request(_Command):
    __slots__ = ()
    IS_REQUEST: ClassVar[bool] = True
    FLAGS: ClassVar[int] = FLAG_REQUEST | FLAG_PROXIABLE
    ANSWER: ClassVar[type]

    def answer(self: Any, **fields: Any) -> Any:
        """The answer class for this request, with Session-Id copied."""
        return self.ANSWER._BUILD(session_id=self.session_id, **fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserAuthorizationAnswer(_Answer):
    """UAA, TS 29.229 §6.1.2."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    server_name: str | None = None
    server_capabilities: ServerCapabilities | None = None
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_USER_AUTHORIZATION
    _SPEC: ClassVar[_Spec] = (
        *_ANS_HEAD,
        ("server_name", AVP_SERVER_NAME, VENDOR_3GPP, "str", False, False),
        ("server_capabilities", AVP_SERVER_CAPABILITIES, VENDOR_3GPP, ServerCapabilities, False, False),
        *_ANS_TAIL,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class UserAuthorizationRequest(_Request):
    """UAR, TS 29.229 §6.1.1 (I-CSCF → HSS)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_realm: str
    user_name: str
    public_identity: str
    visited_network_identifier: str
    destination_host: str | None = None
    user_authorization_type: int | None = None
    uar_flags: int | None = None

    CODE: ClassVar[int] = CMD_USER_AUTHORIZATION
    ANSWER: ClassVar[type] = UserAuthorizationAnswer
    _SPEC: ClassVar[_Spec] = (
        *_REQ_HEAD,
        ("user_name", AVP_USER_NAME, 0, "str", False, True),
        ("public_identity", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", False, True),
        ("visited_network_identifier", AVP_VISITED_NETWORK_IDENTIFIER, VENDOR_3GPP, "str", False, True),
        ("user_authorization_type", AVP_USER_AUTHORIZATION_TYPE, VENDOR_3GPP, "i32", False, False),
        ("uar_flags", AVP_UAR_FLAGS, VENDOR_3GPP, "u32", False, False),
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class MultimediaAuthAnswer(_Answer):
    """MAA, TS 29.229 §6.1.8."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    user_name: str | None = None
    public_identity: str | None = None
    sip_number_auth_items: int | None = None
    sip_auth_data_items: tuple[SipAuthDataItem, ...] = ()
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_MULTIMEDIA_AUTH
    _SPEC: ClassVar[_Spec] = (
        *_ANS_HEAD,
        ("user_name", AVP_USER_NAME, 0, "str", False, False),
        ("public_identity", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", False, False),
        ("sip_number_auth_items", AVP_SIP_NUMBER_AUTH_ITEMS, VENDOR_3GPP, "u32", False, False),
        ("sip_auth_data_items", AVP_SIP_AUTH_DATA_ITEM, VENDOR_3GPP, SipAuthDataItem, True, False),
        *_ANS_TAIL,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class MultimediaAuthRequest(_Request):
    """MAR, TS 29.229 §6.1.7 (S-CSCF → HSS)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_realm: str
    user_name: str
    public_identity: str
    server_name: str
    sip_number_auth_items: int
    sip_auth_data_item: SipAuthDataItem
    destination_host: str | None = None

    CODE: ClassVar[int] = CMD_MULTIMEDIA_AUTH
    ANSWER: ClassVar[type] = MultimediaAuthAnswer
    _SPEC: ClassVar[_Spec] = (
        *_REQ_HEAD,
        ("user_name", AVP_USER_NAME, 0, "str", False, True),
        ("public_identity", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", False, True),
        ("sip_auth_data_item", AVP_SIP_AUTH_DATA_ITEM, VENDOR_3GPP, SipAuthDataItem, False, True),
        ("sip_number_auth_items", AVP_SIP_NUMBER_AUTH_ITEMS, VENDOR_3GPP, "u32", False, True),
        ("server_name", AVP_SERVER_NAME, VENDOR_3GPP, "str", False, True),
    )  # fmt: skip

    @property
    def is_resync(self) -> bool:
        """True when SIP-Authorization carries RAND‖AUTS (TS 29.228 §6.3.3)."""
        return self.sip_auth_data_item.auts is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerAssignmentAnswer(_Answer):
    """SAA, TS 29.229 §6.1.4."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    user_name: str | None = None
    user_data: bytes | None = None
    charging_information: ChargingInformation | None = None
    associated_identities: AssociatedIdentities | None = None
    server_name: str | None = None
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_SERVER_ASSIGNMENT
    _SPEC: ClassVar[_Spec] = (
        *_ANS_HEAD,
        ("user_name", AVP_USER_NAME, 0, "str", False, False),
        ("user_data", AVP_USER_DATA, VENDOR_3GPP, "bytes", False, False),
        ("charging_information", AVP_CHARGING_INFORMATION, VENDOR_3GPP, ChargingInformation, False, False),
        ("associated_identities", AVP_ASSOCIATED_IDENTITIES, VENDOR_3GPP, AssociatedIdentities, False, False),
        ("server_name", AVP_SERVER_NAME, VENDOR_3GPP, "str", False, False),
        *_ANS_TAIL,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerAssignmentRequest(_Request):
    """SAR, TS 29.229 §6.1.3 (S-CSCF → HSS)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_realm: str
    server_name: str
    server_assignment_type: int
    user_data_already_available: int
    user_name: str | None = None
    public_identities: tuple[str, ...] = ()
    destination_host: str | None = None
    multiple_registration_indication: int | None = None

    CODE: ClassVar[int] = CMD_SERVER_ASSIGNMENT
    ANSWER: ClassVar[type] = ServerAssignmentAnswer
    _SPEC: ClassVar[_Spec] = (
        *_REQ_HEAD,
        ("user_name", AVP_USER_NAME, 0, "str", False, False),
        ("public_identities", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", True, False),
        ("server_name", AVP_SERVER_NAME, VENDOR_3GPP, "str", False, True),
        ("server_assignment_type", AVP_SERVER_ASSIGNMENT_TYPE, VENDOR_3GPP, "i32", False, True),
        ("user_data_already_available", AVP_USER_DATA_ALREADY_AVAILABLE, VENDOR_3GPP, "i32", False, True),
        ("multiple_registration_indication", AVP_MULTIPLE_REGISTRATION_INDICATION, VENDOR_3GPP, "i32", False, False),
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationInfoAnswer(_Answer):
    """LIA, TS 29.229 §6.1.6."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    server_name: str | None = None
    server_capabilities: ServerCapabilities | None = None
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_LOCATION_INFO
    _SPEC: ClassVar[_Spec] = UserAuthorizationAnswer._SPEC


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationInfoRequest(_Request):
    """LIR, TS 29.229 §6.1.5 (I-CSCF → HSS)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_realm: str
    public_identity: str
    destination_host: str | None = None
    originating_request: int | None = None
    user_authorization_type: int | None = None

    CODE: ClassVar[int] = CMD_LOCATION_INFO
    ANSWER: ClassVar[type] = LocationInfoAnswer
    _SPEC: ClassVar[_Spec] = (
        *_REQ_HEAD,
        ("originating_request", AVP_ORIGINATING_REQUEST, VENDOR_3GPP, "i32", False, False),
        ("public_identity", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", False, True),
        ("user_authorization_type", AVP_USER_AUTHORIZATION_TYPE, VENDOR_3GPP, "i32", False, False),
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationTerminationAnswer(_Answer):
    """RTA, TS 29.229 §6.1.10."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    associated_identities: AssociatedIdentities | None = None
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_REGISTRATION_TERMINATION
    _SPEC: ClassVar[_Spec] = (
        *_ANS_HEAD,
        ("associated_identities", AVP_ASSOCIATED_IDENTITIES, VENDOR_3GPP, AssociatedIdentities, False, False),
        *_ANS_TAIL,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationTerminationRequest(_Request):
    """RTR, TS 29.229 §6.1.9 (HSS → S-CSCF)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_host: str
    destination_realm: str
    user_name: str
    deregistration_reason: DeregistrationReason
    public_identities: tuple[str, ...] = ()
    associated_identities: AssociatedIdentities | None = None

    CODE: ClassVar[int] = CMD_REGISTRATION_TERMINATION
    ANSWER: ClassVar[type] = RegistrationTerminationAnswer
    _SPEC: ClassVar[_Spec] = (
        ("session_id", AVP_SESSION_ID, 0, "str", False, True),
        ("origin_host", AVP_ORIGIN_HOST, 0, "str", False, True),
        ("origin_realm", AVP_ORIGIN_REALM, 0, "str", False, True),
        ("destination_host", AVP_DESTINATION_HOST, 0, "str", False, True),
        ("destination_realm", AVP_DESTINATION_REALM, 0, "str", False, True),
        ("user_name", AVP_USER_NAME, 0, "str", False, True),
        ("associated_identities", AVP_ASSOCIATED_IDENTITIES, VENDOR_3GPP, AssociatedIdentities, False, False),
        ("public_identities", AVP_PUBLIC_IDENTITY, VENDOR_3GPP, "str", True, False),
        ("deregistration_reason", AVP_DEREGISTRATION_REASON, VENDOR_3GPP, DeregistrationReason, False, True),
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class PushProfileAnswer(_Answer):
    """PPA, TS 29.229 §6.1.12."""

    session_id: str
    origin_host: str
    origin_realm: str
    result_code: int | None = None
    experimental_result_code: int | None = None
    experimental_result_vendor: int = VENDOR_3GPP
    failed_avp: tuple[Avp, ...] = ()
    error_message: str | None = None

    CODE: ClassVar[int] = CMD_PUSH_PROFILE
    _SPEC: ClassVar[_Spec] = (*_ANS_HEAD, *_ANS_TAIL)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushProfileRequest(_Request):
    """PPR, TS 29.229 §6.1.11 (HSS → S-CSCF)."""

    session_id: str
    origin_host: str
    origin_realm: str
    destination_host: str
    destination_realm: str
    user_name: str
    user_data: bytes | None = None
    charging_information: ChargingInformation | None = None
    sip_auth_data_item: SipAuthDataItem | None = None

    CODE: ClassVar[int] = CMD_PUSH_PROFILE
    ANSWER: ClassVar[type] = PushProfileAnswer
    _SPEC: ClassVar[_Spec] = (
        ("session_id", AVP_SESSION_ID, 0, "str", False, True),
        ("origin_host", AVP_ORIGIN_HOST, 0, "str", False, True),
        ("origin_realm", AVP_ORIGIN_REALM, 0, "str", False, True),
        ("destination_host", AVP_DESTINATION_HOST, 0, "str", False, True),
        ("destination_realm", AVP_DESTINATION_REALM, 0, "str", False, True),
        ("user_name", AVP_USER_NAME, 0, "str", False, True),
        ("user_data", AVP_USER_DATA, VENDOR_3GPP, "bytes", False, False),
        ("charging_information", AVP_CHARGING_INFORMATION, VENDOR_3GPP, ChargingInformation, False, False),
        ("sip_auth_data_item", AVP_SIP_AUTH_DATA_ITEM, VENDOR_3GPP, SipAuthDataItem, False, False),
    )  # fmt: skip


# Short names as the specs use them.
UAR, UAA = UserAuthorizationRequest, UserAuthorizationAnswer
MAR, MAA = MultimediaAuthRequest, MultimediaAuthAnswer
SAR, SAA = ServerAssignmentRequest, ServerAssignmentAnswer
LIR, LIA = LocationInfoRequest, LocationInfoAnswer
RTR, RTA = RegistrationTerminationRequest, RegistrationTerminationAnswer
PPR, PPA = PushProfileRequest, PushProfileAnswer

CxRequest = (
    UserAuthorizationRequest
    | MultimediaAuthRequest
    | ServerAssignmentRequest
    | LocationInfoRequest
    | RegistrationTerminationRequest
    | PushProfileRequest
)
CxAnswer = (
    UserAuthorizationAnswer
    | MultimediaAuthAnswer
    | ServerAssignmentAnswer
    | LocationInfoAnswer
    | RegistrationTerminationAnswer
    | PushProfileAnswer
)

_BY_KEY: dict[tuple[int, bool], Any] = {
    (cls.CODE, cls.IS_REQUEST): cls
    for cls in (UAR, UAA, MAR, MAA, SAR, SAA, LIR, LIA, RTR, RTA, PPR, PPA)
}
for _cls in _BY_KEY.values():
    # encode_body() relies on this order: Session-Id, then (answers) Result-Code.
    assert _cls._SPEC[0][0] == "session_id"
    assert _cls.IS_REQUEST or _cls._SPEC[1][0] == "result_code"
    _compile(_cls)
    _cls._LAYOUT = staticmethod(_make_decoder(_cls))
    _cls._BUILD = staticmethod(codec.frozen_builder(_cls))
del _cls
COMMAND_CODES = frozenset(code for code, _ in _BY_KEY)


def is_cx(msg: Message) -> bool:
    return msg.app_id == CX_APPLICATION_ID and msg.code in COMMAND_CODES


def decode(msg: Message) -> Any:
    """The Cx event for a decoded message (raises RemoteProtocolError as described above)."""
    if type(msg) is codec.FramedMessage:
        return msg.event
    cls = _BY_KEY.get((msg.code, msg.is_request))
    if cls is None:
        raise RemoteProtocolError(
            f"command {msg.code} is not a Cx command",
            result_code=codec.DIAMETER_COMMAND_UNSUPPORTED,
            reason="unknown-command",
        )
    return cls.from_message(msg)


def decode_bytes(data: bytes) -> Any:
    return decode(codec.decode_message(data))


_HEADER_UNPACK_FROM = codec._HEADER.unpack_from
# Command flags decode_header refuses (RFC 6733 §3): a reserved bit, or E on a request.
_REFUSED_FLAGS = frozenset(
    f for f in range(256) if f & 0x0F or (f & FLAG_REQUEST and f & codec.FLAG_ERROR)
)


def decode_frame(frame: bytes) -> Message:
    """`codec.decode_message` for the peer of a Cx node: the same checks, errors and
    result, but a well-formed Cx message is decoded to its event in the same walk and
    comes back as a `codec.FramedMessage` (its `event` is what `decode` returns; its
    AVPs are split only if someone reads them). Anything else, or anything unusual in
    the frame, takes `codec.decode_message` and later `decode`, as before."""
    if type(frame) is not bytes or len(frame) < codec.HEADER_LENGTH:
        return codec.decode_message(frame)
    word, flags_code, app_id, hbh, e2e = _HEADER_UNPACK_FROM(frame, 0)
    flags = flags_code >> 24
    if word != 0x01000000 | len(frame) or len(frame) & 3 or flags in _REFUSED_FLAGS:
        # Not version 1 with the frame's length, or flags decode_header refuses: its error.
        code, flags, app_id, hbh, e2e = codec.decode_header(frame)
    code = flags_code & 0xFFFFFF
    if app_id == CX_APPLICATION_ID:
        cls = _BY_KEY.get((code, flags >= FLAG_REQUEST))
        if cls is not None:
            event = _decode_plain(cls, frame)
            if event is not None:
                return codec.FramedMessage(code, flags, app_id, hbh, e2e, frame, event)
    return codec.decode_message(frame)


def _decode_plain(cls: Any, frame: bytes) -> Any:
    """`cls.from_message(codec.decode_message(frame))` for a well-formed frame; None if
    that would raise (see _walk)."""
    event = cls._LAYOUT(frame)
    if event is not None:
        return event
    values: dict[str, Any] = {}
    marks: dict[int, bytes] = {}
    if not _walk(cls._FAST, frame, codec.HEADER_LENGTH, len(frame), values, marks):
        return None
    if cls.IS_REQUEST:
        if len(marks) != 2:  # Vendor-Specific-Application-Id or Auth-Session-State missing
            return None
    else:
        try:
            _answer_extras(marks.get(AVP_EXPERIMENTAL_RESULT), marks.get(AVP_FAILED_AVP), values)
        except RemoteProtocolError:
            return None
    if not _has_required(cls, values):
        return None
    return cls(**values)
