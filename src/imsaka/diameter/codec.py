"""Diameter message codec: RFC 6733 §3 (header), §4 (AVPs), framing over a stream.

This is the one adapter between imsaka and `python-diameter` (import name `diameter`).

What we take from the library:
- its AVP dictionary (names, data types, default M flag, vendor) for every AVP we build
  or print: `avp_def(code, vendor)` reads it, so codes and types come from one place;
- its message classes, with the Cx commands corrected and registered
  (`diameter.message.commands.register()` replaces a command by code): MAR/MAA use the
  TS 29.229 SIP-Auth-Data-Item (612, vendor 10415) and SIP-Number-Auth-Items (607, vendor
  10415) instead of the RFC 4740 ones (376/382, no vendor), the AVPs inside
  SIP-Auth-Data-Item are the 3GPP ones (608 SIP-Authentication-Scheme as UTF8String, 613
  SIP-Item-Number, 609/610/625/626), LIR/SAR/PPR/RTR no longer mark optional AVPs as
  required, and UAR gets the Session-Id its definition lacks. `to_library()` / `from_library()` convert our bytes to those objects, for
  interoperability checks and for code that wants the library's attribute view.

What we encode ourselves, and why:
- The hot path (encode and decode of every message on a peer) is a few `struct` calls
  here. The library builds one Python object per AVP through an `io.BytesIO` packer with
  a decorator per field: about 70-80 µs to encode and as much to decode an MAR or MAA
  on this machine, which alone would cap a server near 6,000 answers/s. With the
  generated encoders and the one-walk decoder of imsaka.diameter.cx, a Cx message of a
  registration costs on average about 52,000 instructions to build and encode and
  140,000 to decode to its event, against 1.56 million for the library to decode and
  encode it again (callgrind, benchmarks/diameter_cpu.py).
- Framing: the library's `Message.from_bytes` trusts the header length (its peer spins
  forever on a length of 0). `Framer` checks version 1, length ≥ 20, a multiple of 4
  and below a cap as soon as the first four octets are in, before waiting for the rest.
- Decoding is strict: an AVP length below its header, past the end of its container or
  of the wrong size for its type raises `RemoteProtocolError` with the RFC 6733 result
  code (5014 DIAMETER_INVALID_AVP_LENGTH, 5004 DIAMETER_INVALID_AVP_VALUE), where the
  library logs and carries on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from diameter.message import Message as _LibMessage
from diameter.message.avp import avp as _libavp
from diameter.message.commands import register as _lib_register

from imsaka.diameter.errors import FramingError, RemoteProtocolError

# --- RFC 6733 §3 header ----------------------------------------------------------------

HEADER_LENGTH = 20
VERSION = 1
#: Default cap on one message. A Cx User-Data (subscription XML) for a large implicit
#: set stays well below this; anything larger is a hostile or broken peer.
DEFAULT_MAX_MESSAGE_LENGTH = 1 << 20

FLAG_REQUEST = 0x80
FLAG_PROXIABLE = 0x40
FLAG_ERROR = 0x20
FLAG_RETRANSMIT = 0x10
_RESERVED_COMMAND_FLAGS = 0x0F

AVP_FLAG_VENDOR = 0x80
AVP_FLAG_MANDATORY = 0x40
AVP_FLAG_PROTECTED = 0x20

VENDOR_3GPP = 10415

# RFC 6733 §7.1 Result-Code values used by the base protocol and the codec.
DIAMETER_SUCCESS = 2001
DIAMETER_LIMITED_SUCCESS = 2002
DIAMETER_COMMAND_UNSUPPORTED = 3001
DIAMETER_UNABLE_TO_DELIVER = 3002
DIAMETER_REALM_NOT_SERVED = 3003
DIAMETER_TOO_BUSY = 3004
DIAMETER_LOOP_DETECTED = 3005
DIAMETER_REDIRECT_INDICATION = 3006
DIAMETER_APPLICATION_UNSUPPORTED = 3007
DIAMETER_INVALID_HDR_BITS = 3008
DIAMETER_INVALID_AVP_BITS = 3009
DIAMETER_UNKNOWN_PEER = 3010
DIAMETER_AUTHENTICATION_REJECTED = 4001
DIAMETER_AVP_UNSUPPORTED = 5001
DIAMETER_UNKNOWN_SESSION_ID = 5002
DIAMETER_AUTHORIZATION_REJECTED = 5003
DIAMETER_INVALID_AVP_VALUE = 5004
DIAMETER_MISSING_AVP = 5005
DIAMETER_RESOURCES_EXCEEDED = 5006
DIAMETER_CONTRADICTING_AVPS = 5007
DIAMETER_AVP_NOT_ALLOWED = 5008
DIAMETER_AVP_OCCURS_TOO_MANY_TIMES = 5009
DIAMETER_NO_COMMON_APPLICATION = 5010
DIAMETER_UNSUPPORTED_VERSION = 5011
DIAMETER_UNABLE_TO_COMPLY = 5012
DIAMETER_INVALID_BIT_IN_HEADER = 5013
DIAMETER_INVALID_AVP_LENGTH = 5014
DIAMETER_INVALID_MESSAGE_LENGTH = 5015

# RFC 6733 base AVP codes (vendor 0) that imsaka uses.
AVP_USER_NAME = 1
AVP_HOST_IP_ADDRESS = 257
AVP_AUTH_APPLICATION_ID = 258
AVP_ACCT_APPLICATION_ID = 259
AVP_VENDOR_SPECIFIC_APPLICATION_ID = 260
AVP_SESSION_ID = 263
AVP_ORIGIN_HOST = 264
AVP_SUPPORTED_VENDOR_ID = 265
AVP_VENDOR_ID = 266
AVP_FIRMWARE_REVISION = 267
AVP_RESULT_CODE = 268
AVP_PRODUCT_NAME = 269
AVP_DISCONNECT_CAUSE = 273
AVP_AUTH_SESSION_STATE = 277
AVP_ORIGIN_STATE_ID = 278
AVP_FAILED_AVP = 279
AVP_PROXY_INFO = 284
AVP_ROUTE_RECORD = 282
AVP_DESTINATION_REALM = 283
AVP_ERROR_MESSAGE = 281
AVP_DESTINATION_HOST = 293
AVP_ERROR_REPORTING_HOST = 294
AVP_ORIGIN_REALM = 296
AVP_EXPERIMENTAL_RESULT = 297
AVP_EXPERIMENTAL_RESULT_CODE = 298
AVP_INBAND_SECURITY_ID = 299

_HEADER = struct.Struct("!IIIII")
_AVP_HEADER = struct.Struct("!II")
_AVP_VHEADER = struct.Struct("!III")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


# --- AVPs ------------------------------------------------------------------------------


class Avp(NamedTuple):
    """One AVP as it is on the wire: code, vendor (0 = none), flags, unpadded payload.

    Immutable (a tuple: decoding creates one per AVP, and a tuple is several times
    cheaper to build than a frozen dataclass). The payload may be a key (CK, IK) or
    XRES: it is never shown in the repr.
    """

    code: int
    vendor: int
    flags: int
    data: bytes

    def __repr__(self) -> str:
        return (
            f"Avp(code={self.code}, vendor={self.vendor}, flags={self.flags}, len={len(self.data)})"
        )

    @property
    def is_mandatory(self) -> bool:
        return bool(self.flags & AVP_FLAG_MANDATORY)

    def encode(self) -> bytes:
        return _encode_avp(self.code, self.vendor, self.flags, self.data)

    # Typed views. Each raises RemoteProtocolError(5014) when the payload size is wrong
    # for the type, so a decoder can answer with this AVP as the Failed-AVP.

    @property
    def u32(self) -> int:
        if len(self.data) != 4:
            raise _bad_length(self)
        return _U32.unpack(self.data)[0]

    @property
    def i32(self) -> int:
        if len(self.data) != 4:
            raise _bad_length(self)
        return _I32.unpack(self.data)[0]

    @property
    def u64(self) -> int:
        if len(self.data) != 8:
            raise _bad_length(self)
        return _U64.unpack(self.data)[0]

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                f"AVP {self.code}/{self.vendor}: not valid UTF-8",
                result_code=DIAMETER_INVALID_AVP_VALUE,
                reason="avp-not-utf8",
                failed_avp=self,
            ) from None

    @property
    def group(self) -> tuple[Avp, ...]:
        return decode_avps(self.data)

    @property
    def address(self) -> str:
        """An Address (RFC 6733 §4.3.1): IPv4/IPv6 as text."""
        data = self.data
        if len(data) == 6 and data[:2] == b"\0\x01":
            return str(ipaddress.IPv4Address(data[2:]))
        if len(data) == 18 and data[:2] == b"\0\x02":
            return str(ipaddress.IPv6Address(data[2:]))
        raise RemoteProtocolError(
            f"AVP {self.code}/{self.vendor}: not an IPv4/IPv6 Address",
            result_code=DIAMETER_INVALID_AVP_VALUE,
            reason="avp-bad-address",
            failed_avp=self,
        )


def _bad_length(avp: Avp) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"AVP {avp.code}/{avp.vendor}: payload of {len(avp.data)} octets has the wrong size",
        result_code=DIAMETER_INVALID_AVP_LENGTH,
        reason="avp-bad-length",
        failed_avp=avp,
    )


def _encode_avp(code: int, vendor: int, flags: int, data: bytes) -> bytes:
    n = len(data)
    if vendor:
        head = _AVP_VHEADER.pack(code, ((flags | AVP_FLAG_VENDOR) << 24) | (n + 12), vendor)
    else:
        head = _AVP_HEADER.pack(code, ((flags & ~AVP_FLAG_VENDOR) << 24) | (n + 8))
    return head + data + _PAD[n & 3]


def decode_avps(data: bytes, offset: int = 0, end: int | None = None) -> tuple[Avp, ...]:
    """Split a run of AVPs (a message body or a Grouped payload), strictly.

    Every AVP length must cover its own header and stay inside the container; padding
    must exist (RFC 6733 §4.1: the length excludes it, the next AVP starts 4-aligned).
    """
    if end is None:
        end = len(data)
    if type(data) is not bytes:
        data = bytes(data)
    out: list[Avp] = []
    append = out.append
    unpack_head = _AVP_HEADER.unpack_from
    unpack_vendor = _U32.unpack_from
    new_avp = tuple.__new__
    while offset < end:
        if end - offset < 8:
            raise RemoteProtocolError(
                "truncated AVP header",
                result_code=DIAMETER_INVALID_AVP_LENGTH,
                reason="avp-truncated",
            )
        code, flags_len = unpack_head(data, offset)
        length = flags_len & 0xFFFFFF
        stop = offset + length
        if flags_len & 0x80000000:  # V bit (AVP_FLAG_VENDOR)
            if length < 12 or end - offset < 12:
                raise _avp_length_error(code, 0, flags_len >> 24)
            vendor = unpack_vendor(data, offset + 8)[0]
            start = offset + 12
        else:
            if length < 8:
                raise _avp_length_error(code, 0, flags_len >> 24)
            vendor = 0
            start = offset + 8
        if stop > end:
            raise _avp_length_error(code, vendor, flags_len >> 24)
        append(new_avp(Avp, (code, vendor, flags_len >> 24, data[start:stop])))
        offset += (length + 3) & ~3
    if offset > end + 3:  # padding of the last AVP may only reach the container end
        raise RemoteProtocolError(
            "AVP padding runs past the end",
            result_code=DIAMETER_INVALID_AVP_LENGTH,
            reason="avp-truncated",
        )
    return tuple(out)


def _avp_length_error(code: int, vendor: int, flags: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"AVP {code}/{vendor}: length field out of range",
        result_code=DIAMETER_INVALID_AVP_LENGTH,
        reason="avp-bad-length",
        failed_avp=Avp(
            code, vendor, flags & ~AVP_FLAG_VENDOR | (AVP_FLAG_VENDOR if vendor else 0), b""
        ),
    )


# --- AVP definitions from the library's dictionary --------------------------------------

_TYPE_NAMES = {
    "AvpUtf8String": "UTF8String",
    "AvpOctetString": "OctetString",
    "AvpUnsigned32": "Unsigned32",
    "AvpUnsigned64": "Unsigned64",
    "AvpInteger32": "Integer32",
    "AvpInteger64": "Integer64",
    "AvpEnumerated": "Enumerated",
    "AvpGrouped": "Grouped",
    "AvpAddress": "Address",
    "AvpTime": "Time",
    "AvpFloat32": "Float32",
    "AvpFloat64": "Float64",
}


@dataclass(frozen=True, slots=True)
class AvpDef:
    """Name, code, vendor, data type and M flag of one AVP, read from the dictionary."""

    name: str
    code: int
    vendor: int
    type: str
    mandatory: bool

    @property
    def flags(self) -> int:
        return (AVP_FLAG_VENDOR if self.vendor else 0) | (
            AVP_FLAG_MANDATORY if self.mandatory else 0
        )

    def __call__(self, value: Any) -> Avp:
        """Build this AVP from a Python value of its type."""
        return Avp(self.code, self.vendor, self.flags, _ENCODERS[self.type](value))


def _enc_text(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


def _enc_address(value: str) -> bytes:
    ip = ipaddress.ip_address(value)
    return (b"\0\x01" if ip.version == 4 else b"\0\x02") + ip.packed


def _enc_grouped(value: Any) -> bytes:
    return b"".join(a.encode() for a in value)


_ENCODERS = {
    "UTF8String": _enc_text,
    "OctetString": _enc_text,
    "Unsigned32": _U32.pack,
    "Enumerated": _I32.pack,
    "Integer32": _I32.pack,
    "Unsigned64": _U64.pack,
    "Integer64": _I64.pack,
    "Time": _U32.pack,
    "Grouped": _enc_grouped,
    "Address": _enc_address,
}

# Where the library's M flag differs from Wireshark's dictionary (TGPP.xml and
# dictionary.xml, the reference for the bytes; RFC 6733 §4.5 and TS 29.229 §6.3 tables
# say "M: must not" for these), Wireshark wins.
_M_OVERRIDES: dict[tuple[int, int], bool] = {
    (267, 0): False,  # Firmware-Revision
    (269, 0): False,  # Product-Name
    (281, 0): False,  # Error-Message
    **{(code, VENDOR_3GPP): False for code in (*range(635, 653), 656)},
}
# Names the library spells after RFC 4740 / its own prefixes; imsaka prints the
# TS 29.229 names (the ones Wireshark shows).
_NAME_OVERRIDES: dict[tuple[int, int], str] = {
    (606, VENDOR_3GPP): "User-Data",
    (607, VENDOR_3GPP): "SIP-Number-Auth-Items",
    (608, VENDOR_3GPP): "SIP-Authentication-Scheme",
    (609, VENDOR_3GPP): "SIP-Authenticate",
    (610, VENDOR_3GPP): "SIP-Authorization",
    (612, VENDOR_3GPP): "SIP-Auth-Data-Item",
    (613, VENDOR_3GPP): "SIP-Item-Number",
}
_DEF_CACHE: dict[tuple[int, int], AvpDef] = {}


def avp_def(code: int, vendor: int = 0) -> AvpDef:
    """The definition of AVP `code`/`vendor` from python-diameter's dictionary."""
    key = (code, vendor)
    found = _DEF_CACHE.get(key)
    if found is not None:
        return found
    entry = _libavp.get_avp_dictionary_entry(code, vendor)
    if entry is None:
        raise KeyError(f"AVP {code}/{vendor} is not in the dictionary")
    found = AvpDef(
        name=_NAME_OVERRIDES.get(key, entry["name"]),
        code=code,
        vendor=vendor,
        type=_TYPE_NAMES[entry["type"].__name__],
        mandatory=_M_OVERRIDES.get(key, bool(entry.get("mandatory", False))),
    )
    _DEF_CACHE[key] = found
    return found


# Base AVP builders, looked up once.
SESSION_ID = avp_def(AVP_SESSION_ID)
ORIGIN_HOST = avp_def(AVP_ORIGIN_HOST)
ORIGIN_REALM = avp_def(AVP_ORIGIN_REALM)
DESTINATION_HOST = avp_def(AVP_DESTINATION_HOST)
DESTINATION_REALM = avp_def(AVP_DESTINATION_REALM)
RESULT_CODE = avp_def(AVP_RESULT_CODE)
EXPERIMENTAL_RESULT = avp_def(AVP_EXPERIMENTAL_RESULT)
EXPERIMENTAL_RESULT_CODE = avp_def(AVP_EXPERIMENTAL_RESULT_CODE)
VENDOR_ID = avp_def(AVP_VENDOR_ID)
AUTH_APPLICATION_ID = avp_def(AVP_AUTH_APPLICATION_ID)
ACCT_APPLICATION_ID = avp_def(AVP_ACCT_APPLICATION_ID)
VENDOR_SPECIFIC_APPLICATION_ID = avp_def(AVP_VENDOR_SPECIFIC_APPLICATION_ID)
AUTH_SESSION_STATE = avp_def(AVP_AUTH_SESSION_STATE)
USER_NAME = avp_def(AVP_USER_NAME)
FAILED_AVP = avp_def(AVP_FAILED_AVP)
ERROR_MESSAGE = avp_def(AVP_ERROR_MESSAGE)
HOST_IP_ADDRESS = avp_def(AVP_HOST_IP_ADDRESS)
PRODUCT_NAME = avp_def(AVP_PRODUCT_NAME)
SUPPORTED_VENDOR_ID = avp_def(AVP_SUPPORTED_VENDOR_ID)
FIRMWARE_REVISION = avp_def(AVP_FIRMWARE_REVISION)
ORIGIN_STATE_ID = avp_def(AVP_ORIGIN_STATE_ID)
DISCONNECT_CAUSE = avp_def(AVP_DISCONNECT_CAUSE)
INBAND_SECURITY_ID = avp_def(AVP_INBAND_SECURITY_ID)
ROUTE_RECORD = avp_def(AVP_ROUTE_RECORD)
PROXY_INFO = avp_def(AVP_PROXY_INFO)


# --- Messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One Diameter message: the header fields and the top-level AVPs in wire order."""

    code: int
    flags: int
    app_id: int
    hop_by_hop: int
    end_to_end: int
    avps: tuple[Avp, ...]

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def is_retransmit(self) -> bool:
        return bool(self.flags & FLAG_RETRANSMIT)

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        for a in self.avps:
            if a.code == code and a.vendor == vendor:
                return a
        return None

    def find_all(self, code: int, vendor: int = 0) -> list[Avp]:
        return [a for a in self.avps if a.code == code and a.vendor == vendor]

    def with_ids(self, hop_by_hop: int, end_to_end: int) -> Message:
        return Message(self.code, self.flags, self.app_id, hop_by_hop, end_to_end, self.avps)

    def encode(self) -> bytes:
        return encode_message(self)


def frozen_builder(cls: Any) -> Any:
    """`cls(...)` for a frozen dataclass with slots, with the same parameters (positional
    and keyword-only as its __init__) and the same object, built without `type.__call__`
    and `__init__`'s `object.__setattr__` per field (each slot's member descriptor sets
    it): decoders and stores build one per message. `cls` itself when it has a
    __post_init__, a default factory or a field outside __init__."""
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
        f.default_factory is not dataclasses.MISSING or not f.init for f in fields
    ):
        return cls
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params: list[str] = []
    keyword: list[str] = []
    body = ["    _o = _new(_cls)"]
    for i, f in enumerate(fields):
        param = f.name
        if f.default is not dataclasses.MISSING:
            ns[f"_d{i}"] = f.default
            param += f"=_d{i}"
        (keyword if f.kw_only else params).append(param)
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        ns[f"_s{i}"] = slot.__set__
        body.append(f"    _s{i}(_o, {f.name})")
    if keyword:
        params += ["*", *keyword]
    # named after the class: a wrong or missing field's TypeError names it, as __init__'s
    name = cls.__name__
    source = f"def {name}({', '.join(params)}):\n" + "\n".join(body) + "\n    return _o\n"
    exec(compile(source, f"<{cls.__module__} builder of {name}>", "exec"), ns)
    return ns[name]


def encode_message(msg: Message) -> bytes:
    body = b"".join([a.encode() for a in msg.avps])
    length = HEADER_LENGTH + len(body)
    return (
        _HEADER.pack(
            (VERSION << 24) | length,
            (msg.flags << 24) | msg.code,
            msg.app_id,
            msg.hop_by_hop,
            msg.end_to_end,
        )
        + body
    )


def encode_parts(
    code: int, flags: int, app_id: int, hop_by_hop: int, end_to_end: int, body: bytes
) -> bytes:
    """Header + already-encoded AVPs: for callers that keep a prebuilt body."""
    return (
        _HEADER.pack(
            (VERSION << 24) | (HEADER_LENGTH + len(body)),
            (flags << 24) | code,
            app_id,
            hop_by_hop,
            end_to_end,
        )
        + body
    )


def check_header(data: bytes | bytearray, max_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> int:
    """Validate version and length from the first four octets; return the length."""
    word = _U32.unpack_from(data, 0)[0]
    version = word >> 24
    length = word & 0xFFFFFF
    if version != VERSION:
        raise FramingError(
            f"Diameter version {version}, expected 1",
            result_code=DIAMETER_UNSUPPORTED_VERSION,
            reason="bad-version",
        )
    if length < HEADER_LENGTH:
        raise FramingError(
            f"message length {length} is below the 20-octet header",
            result_code=DIAMETER_INVALID_MESSAGE_LENGTH,
            reason="length-too-small",
        )
    if length & 3:
        raise FramingError(
            f"message length {length} is not a multiple of 4",
            result_code=DIAMETER_INVALID_MESSAGE_LENGTH,
            reason="length-not-multiple-of-4",
        )
    if length > max_length:
        raise FramingError(
            f"message length {length} exceeds the cap of {max_length}",
            result_code=DIAMETER_INVALID_MESSAGE_LENGTH,
            reason="length-too-large",
        )
    return length


def decode_header(data: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """(code, flags, app_id, hop_by_hop, end_to_end) of one whole message (exactly
    `length` octets), after the checks of `decode_message` on the header."""
    if len(data) < HEADER_LENGTH:
        raise FramingError(
            "message shorter than its header",
            result_code=DIAMETER_INVALID_MESSAGE_LENGTH,
            reason="length-too-small",
        )
    length = check_header(data, max(len(data), HEADER_LENGTH))
    if length != len(data):
        raise FramingError(
            f"header length {length} but {len(data)} octets given",
            result_code=DIAMETER_INVALID_MESSAGE_LENGTH,
            reason="length-mismatch",
        )
    _, flags_code, app_id, hbh, e2e = _HEADER.unpack_from(data, 0)
    flags = flags_code >> 24
    if flags & _RESERVED_COMMAND_FLAGS or (flags & FLAG_REQUEST and flags & FLAG_ERROR):
        # RFC 6733 §3: reserved bits must be 0; the E bit is never set on a request.
        raise RemoteProtocolError(
            f"command flags 0x{flags:02x} not allowed",
            result_code=DIAMETER_INVALID_HDR_BITS,
            reason="bad-header-bits",
        )
    return flags_code & 0xFFFFFF, flags, app_id, hbh, e2e


def decode_message(data: bytes | bytearray) -> Message:
    """Decode one whole message (exactly `length` octets, as `Framer` hands them out)."""
    code, flags, app_id, hbh, e2e = decode_header(data)
    return Message(code, flags, app_id, hbh, e2e, decode_avps(data, HEADER_LENGTH, len(data)))


class FramedMessage(Message):
    """A `Message` decoded by an application's own decoder (imsaka.diameter.cx
    `decode_frame`): its header fields, the frame, and the application's `event` for
    it. The frame's AVPs were checked when it was decoded; `avps` splits them only when
    someone reads them (the Cx path never does). Equal to the `Message` of the same
    fields."""

    __slots__ = ("event", "frame")
    event: Any
    frame: bytes

    def __init__(
        self, code: int, flags: int, app_id: int, hbh: int, e2e: int, frame: bytes, event: Any
    ) -> None:
        # Each slot's member descriptor sets it (`object.__setattr__` would look it up).
        _set_code(self, code)
        _set_flags(self, flags)
        _set_app_id(self, app_id)
        _set_hop_by_hop(self, hbh)
        _set_end_to_end(self, e2e)
        _set_frame(self, frame)
        _set_event(self, event)

    # A property, not __getattr__: a class with __getattr__ pays a hook on every
    # attribute read (code, flags, ids: a dozen per message), this only on `avps`.
    @property  # type: ignore[misc]
    def avps(self) -> tuple[Avp, ...]:  # type: ignore[override]
        try:
            return _get_avps(self)
        except AttributeError:  # not split yet
            avps = decode_avps(self.frame, HEADER_LENGTH)
            _set_avps(self, avps)
            return avps

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return _fields(self) == _fields(other)

    def __hash__(self) -> int:
        return hash(_fields(self))


_MESSAGE_SLOTS = Message.__dict__
_set_code = _MESSAGE_SLOTS["code"].__set__
_set_flags = _MESSAGE_SLOTS["flags"].__set__
_set_app_id = _MESSAGE_SLOTS["app_id"].__set__
_set_hop_by_hop = _MESSAGE_SLOTS["hop_by_hop"].__set__
_set_end_to_end = _MESSAGE_SLOTS["end_to_end"].__set__
_get_avps = _MESSAGE_SLOTS["avps"].__get__
_set_avps = _MESSAGE_SLOTS["avps"].__set__
_set_frame = FramedMessage.__dict__["frame"].__set__
_set_event = FramedMessage.__dict__["event"].__set__


def _fields(m: Message) -> tuple:
    return (m.code, m.flags, m.app_id, m.hop_by_hop, m.end_to_end, m.avps)


def peek_header(data: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """(flags, code, app_id, hop_by_hop, end_to_end) of a framed message, no AVP decoding.

    Lets the peer answer a message whose AVPs do not decode (5014) with the right ids.
    """
    _, flags_code, app_id, hbh, e2e = _HEADER.unpack_from(data, 0)
    return flags_code >> 24, flags_code & 0xFFFFFF, app_id, hbh, e2e


class Framer:
    """Cuts a TCP byte stream into Diameter messages (RFC 6733 §3), strictly.

    The header is validated as soon as its first four octets arrive, so a hostile length
    is refused before we wait for (or buffer) the rest. After a `FramingError` the stream
    position is lost: the connection must be closed.
    """

    __slots__ = ("_buf", "_need", "error", "max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        if max_length < HEADER_LENGTH:
            raise ValueError("max_length: must be at least 20")
        self._buf = bytearray()
        self._need = 0  # length of the message being collected, 0 = header not seen
        self.max_length = max_length
        #: A framing error found after complete messages in the same feed: those are
        #: returned first, the error is kept here and raised by the next `feed()`.
        self.error: FramingError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received octets; return every message now complete (possibly none)."""
        if self.error is not None:
            raise self.error
        buf = self._buf
        if buf or type(data) is not bytes:
            buf += data
            src: bytes | bytearray = buf
        else:
            # Nothing held back (the common read): frames are sliced from `data` itself,
            # and only an incomplete tail goes into the buffer.
            src = data
        out: list[bytes] = []
        pos = 0
        size = len(src)
        need = self._need
        while True:
            if not need:
                if size - pos < 4:
                    break
                try:
                    need = check_header(src[pos : pos + 4], self.max_length)
                except FramingError as exc:
                    if not out:
                        raise
                    self.error = exc
                    break
            if size - pos < need:
                break
            out.append(data if need == size and src is data else bytes(src[pos : pos + need]))
            pos += need
            need = 0
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < size:
            buf += src[pos:] if pos else src
        self._need = need
        return out


# --- python-diameter message classes, corrected for Cx ----------------------------------


def _install_corrected_cx_commands() -> None:
    """Replace the library's Cx command classes by TS 29.228/29.229-correct ones.

    The library's avp_def tables are edited (a tuple per class) and the corrected classes
    registered under the same command codes, so `diameter.message.Message.from_bytes`
    and `.as_bytes()` handle real Cx traffic.
    """
    import dataclasses

    from diameter.message import commands as lib_commands
    from diameter.message.avp import generator as lib_gen
    from diameter.message.avp import grouped as lib_grouped

    gen_def = lib_gen.AvpGenDef

    @dataclasses.dataclass
    class SipAuthDataItem3gpp:
        """SIP-Auth-Data-Item (612, vendor 10415) per TS 29.229 §6.3.13."""

        sip_item_number: int = None  # type: ignore[assignment]
        sip_authentication_scheme: str = None  # type: ignore[assignment]
        sip_authenticate: bytes = None  # type: ignore[assignment]
        sip_authorization: bytes = None  # type: ignore[assignment]
        sip_authentication_context: bytes = None  # type: ignore[assignment]
        confidentiality_key: bytes = None  # type: ignore[assignment]
        integrity_key: bytes = None  # type: ignore[assignment]
        additional_avps: list = dataclasses.field(default_factory=list)
        avp_def: dataclasses.InitVar[tuple] = (
            gen_def("sip_item_number", 613, VENDOR_3GPP),
            gen_def("sip_authentication_scheme", 608, VENDOR_3GPP),
            gen_def("sip_authenticate", 609, VENDOR_3GPP),
            gen_def("sip_authorization", 610, VENDOR_3GPP),
            gen_def("sip_authentication_context", 611, VENDOR_3GPP),
            gen_def("confidentiality_key", 625, VENDOR_3GPP),
            gen_def("integrity_key", 626, VENDOR_3GPP),
        )

    def __repr__(self: SipAuthDataItem3gpp) -> str:  # keys never in reprs
        return f"SipAuthDataItem3gpp(sip_item_number={self.sip_item_number!r}, ...)"

    SipAuthDataItem3gpp.__repr__ = __repr__  # type: ignore[method-assign]
    lib_grouped.SipAuthDataItem3gpp = SipAuthDataItem3gpp  # type: ignore[attr-defined]

    # (library class, {attr: required?}) — the required set is TS 29.228 §6.1 / 29.229 §6.1:
    # only AVPs in {braces} (fixed or required) stay required.
    required = {
        "UserAuthorizationRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_realm",
            "user_name",
            "public_identity",
            "visited_network_identifier",
        },
        "ServerAssignmentRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_realm",
            "server_name",
            "server_assignment_type",
            "user_data_already_available",
        },
        "LocationInfoRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_realm",
            "public_identity",
        },
        "MultimediaAuthRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_realm",
            "user_name",
            "public_identity",
            "sip_auth_data_item",
            "sip_number_auth_items",
            "server_name",
        },
        "RegistrationTerminationRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_host",
            "destination_realm",
            "user_name",
            "deregistration_reason",
        },
        "PushProfileRequest": {
            "session_id",
            "vendor_specific_application_id",
            "auth_session_state",
            "origin_host",
            "origin_realm",
            "destination_host",
            "destination_realm",
            "user_name",
        },
    }

    def fix(defs: tuple, names: set[str] | None) -> tuple:
        out = []
        if not any(d.attr_name == "session_id" for d in defs):
            # The library's UAR has no Session-Id at all (it would be dropped on re-encode).
            out.append(gen_def("session_id", AVP_SESSION_ID, 0, True))
        for d in defs:
            code, vendor, type_class = d.avp_code, d.vendor_id, d.type_class
            if code == 376:  # RFC 4740 SIP-Auth-Data-Item -> TS 29.229 612
                code, vendor, type_class = 612, VENDOR_3GPP, SipAuthDataItem3gpp
            elif code == 382:  # RFC 4740 SIP-Number-Auth-Items -> TS 29.229 607
                code, vendor = 607, VENDOR_3GPP
            is_required = d.is_required if names is None else d.attr_name in names
            out.append(gen_def(d.attr_name, code, vendor, is_required, d.is_mandatory, type_class))
        return tuple(out)

    pairs = [
        ("UserAuthorization", "UserAuthorizationRequest", "UserAuthorizationAnswer"),
        ("ServerAssignment", "ServerAssignmentRequest", "ServerAssignmentAnswer"),
        ("LocationInfo", "LocationInfoRequest", "LocationInfoAnswer"),
        ("MultimediaAuth", "MultimediaAuthRequest", "MultimediaAuthAnswer"),
        (
            "RegistrationTermination",
            "RegistrationTerminationRequest",
            "RegistrationTerminationAnswer",
        ),
        ("PushProfile", "PushProfileRequest", "PushProfileAnswer"),
    ]
    for base_name, req_name, ans_name in pairs:
        base = getattr(lib_commands, base_name)
        lib_req = getattr(lib_commands, req_name)
        lib_ans = getattr(lib_commands, ans_name)
        # Subclass the library's base so its to_answer() name matching still works:
        # Request and Answer must be direct subclasses of one class named `base_name`.
        new_base = type(base_name, (base,), {"__module__": __name__})
        new_req = type(
            req_name,
            (new_base,),
            {
                "__module__": __name__,
                "avp_def": fix(lib_req.avp_def, required.get(req_name)),
                "__post_init__": lib_req.__post_init__,
            },
        )
        new_ans = type(
            ans_name,
            (new_base,),
            {
                "__module__": __name__,
                "avp_def": fix(lib_ans.avp_def, None),
                "__post_init__": lib_ans.__post_init__,
            },
        )

        def factory(cls: type, header: Any, _r: type = new_req, _a: type = new_ans) -> type:
            return _r if header.is_request else _a

        new_base.type_factory = classmethod(factory)  # type: ignore[attr-defined]
        # The library's __post_init__ methods use zero-argument super(), bound to the
        # library class; give the corrected classes their own chain instead.
        new_req.__post_init__ = _post_init_for(new_req, lib_req)  # type: ignore[attr-defined]
        new_ans.__post_init__ = _post_init_for(new_ans, lib_ans)  # type: ignore[attr-defined]
        _lib_register(new_base)
        _CORRECTED[req_name] = new_req
        _CORRECTED[ans_name] = new_ans


def _post_init_for(new_cls: type, lib_cls: type) -> Any:
    from diameter.message import DefinedMessage
    from diameter.message.commands._attributes import assign_attr_from_defs

    list_attrs = []
    for d in new_cls.avp_def:
        ann = lib_cls.__annotations__.get(d.attr_name, "")
        if isinstance(ann, str) and ann.startswith("list["):
            list_attrs.append(d.attr_name)
    is_request = lib_cls.__name__.endswith("Request")

    def __post_init__(self: Any) -> None:
        self.header.command_code = self.code
        DefinedMessage.__post_init__(self)
        self.header.is_request = is_request
        self.header.is_proxyable = True
        for name in list_attrs:
            setattr(self, name, [])
        assign_attr_from_defs(self, self._avps)
        self._avps = []

    return __post_init__


_CORRECTED: dict[str, type] = {}
_install_corrected_cx_commands()


def corrected_command(name: str) -> type:
    """The corrected python-diameter class, e.g. `corrected_command("MultimediaAuthAnswer")`."""
    return _CORRECTED[name]


def to_library(data: bytes) -> Any:
    """Our wire bytes as a python-diameter message object (corrected Cx classes)."""
    return _LibMessage.from_bytes(data)


def from_library(msg: Any) -> Message:
    """A python-diameter message object as our `Message`."""
    return decode_message(msg.as_bytes())


def missing_required(lib_msg: Any) -> list[str]:
    """Attribute names the (corrected) library definition requires but `lib_msg` lacks."""
    return [
        d.attr_name
        for d in getattr(lib_msg, "avp_def", ())
        if d.is_required and getattr(lib_msg, d.attr_name, None) in (None, [])
    ]


def error_answer(
    request: Message,
    result_code: int,
    origin_host: str,
    origin_realm: str,
    *,
    failed_avp: Avp | None = None,
    error_message: str | None = None,
) -> Message:
    """The answer refusing `request` (RFC 6733 §7.2 answer-message; E bit for 3xxx).

    Session-Id, Vendor-Specific-Application-Id and Auth-Session-State are copied from
    the request when present, so a Cx client can match and parse it as its answer.
    """
    avps: list[Avp] = []
    session = request.find(AVP_SESSION_ID)
    if session is not None:
        avps.append(session)
    for code in (AVP_VENDOR_SPECIFIC_APPLICATION_ID, AVP_AUTH_SESSION_STATE):
        found = request.find(code)
        if found is not None:
            avps.append(found)
    avps += [ORIGIN_HOST(origin_host), ORIGIN_REALM(origin_realm), RESULT_CODE(result_code)]
    if error_message:
        avps.append(ERROR_MESSAGE(error_message))
    if failed_avp is not None:
        avps.append(FAILED_AVP([failed_avp]))
    flags = (request.flags & FLAG_PROXIABLE) | (FLAG_ERROR if 3000 <= result_code < 4000 else 0)
    return Message(
        request.code, flags, request.app_id, request.hop_by_hop, request.end_to_end, tuple(avps)
    )
