"""Validated subscriber records for provisioning (CLI, CSV import, REST).

One place checks what an operator types: IMPI as an NAI (TS 23.003 §13.3), IMPUs
as SIP or tel URIs (TS 23.003 §13.4, RFC 3966), K / OP / OPc as 128-bit hex, AMF
16 bits, SQN 48 bits (TS 33.102 §6.3.2). Exactly one of OP and OPc: both are
accepted everywhere and named (PITFALLS: users mix them up), and OPc is derived
from OP with TS 35.206 §4.1 when OP is given.

A mistake raises `FieldError` naming the field; its message never holds a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imsaka.aka.milenage import compute_opc
from imsaka.hss.models import DEFAULT_SCHEMES, AuthScheme

__all__ = [
    "FieldError",
    "SubscriberSpec",
    "parse_hex",
    "validate_impu",
    "validate_subscriber",
]

MAX_SQN = (1 << 48) - 1
DEFAULT_AMF = b"\x80\x00"  # separation bit set (TS 33.102 Annex H) so EPS can share it

_NAI = re.compile(r"^[^\s@<>\"]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIP_URI = re.compile(r"^sips?:([^\s@<>\";]+@)?[A-Za-z0-9\[]([A-Za-z0-9.:\]-]*)(;[^\s<>\"]*)?$")
# RFC 3966: global number (+digits with visual separators) or a local number with
# a phone-context parameter.
_TEL_URI = re.compile(
    r"^tel:(\+[0-9\-.()]*[0-9][0-9\-.()]*(;[^\s<>\"]*)?|[0-9A-Fa-f*#\-.()]+;[^\s<>\"]*phone-context=[^\s<>\"]+)$"
)
_HEX = re.compile(r"^[0-9A-Fa-f]*$")


class FieldError(ValueError):
    """Bad provisioning input: ``field`` names it, the message says why (no secrets)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def parse_hex(field_name: str, value: str | bytes, octets: int) -> bytes:
    """Hex text (spaces/colons allowed, optional 0x) → exactly ``octets`` octets."""
    if isinstance(value, bytes):
        if len(value) != octets:
            raise FieldError(field_name, f"expected {octets} octets")
        return value
    if not isinstance(value, str):
        raise FieldError(field_name, "expected hex text")
    text = value.strip().replace(" ", "").replace(":", "")
    if text[:2].lower() == "0x":
        text = text[2:]
    if not _HEX.match(text):
        raise FieldError(field_name, "not hexadecimal")
    if len(text) != 2 * octets:
        raise FieldError(
            field_name, f"expected {2 * octets} hex digits ({octets} octets), got {len(text)}"
        )
    return bytes.fromhex(text)


def parse_sqn(field_name: str, value: str | int | None) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        sqn = value
    elif isinstance(value, str):
        text = value.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        if not text or not _HEX.match(text) or len(text) > 12:
            raise FieldError(field_name, "expected up to 12 hex digits (48 bits)")
        sqn = int(text, 16)
    else:
        raise FieldError(field_name, "expected hex text")
    if not 0 <= sqn <= MAX_SQN:
        raise FieldError(field_name, "out of range 0..2^48-1")
    return sqn


def validate_impi(value: object, field_name: str = "impi") -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field_name, "missing")
    text = value.strip()
    if len(text) > 255:
        raise FieldError(field_name, "longer than 255 characters")
    if not _NAI.match(text):
        raise FieldError(field_name, "expected an NAI user@realm (TS 23.003 §13.3)")
    return text


def validate_impu(value: object, field_name: str = "impu") -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field_name, "missing")
    text = value.strip()
    if len(text) > 255:
        raise FieldError(field_name, "longer than 255 characters")
    if not (_SIP_URI.match(text) or _TEL_URI.match(text)):
        raise FieldError(field_name, f"expected a sip:, sips: or tel: URI, got {text[:64]!r}")
    return text


def validate_schemes(value: object, field_name: str = "schemes") -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SCHEMES
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise FieldError(field_name, "expected a list of authentication schemes")
    allowed = {s.value for s in AuthScheme}
    out: list[str] = []
    for item in items:
        name = str(item).strip()
        if name not in allowed:
            raise FieldError(
                field_name, f"unknown scheme {name[:40]!r}; allowed: {', '.join(sorted(allowed))}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise FieldError(field_name, "at least one authentication scheme")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    """One subscriber to write: an IMPI, its IMPUs (one implicit set) and credentials.

    ``op_kind`` says which one the operator gave ("op" or "opc"); ``opc`` is always
    filled (derived from OP when needed). Secrets stay out of the repr.
    """

    impi: str
    impus: tuple[str, ...]
    k: bytes = field(repr=False)
    op_kind: str
    op: bytes | None = field(repr=False)
    opc: bytes = field(repr=False)
    amf: bytes = DEFAULT_AMF
    sqn: int = 0
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    digest_password: str | None = field(default=None, repr=False)
    barred: tuple[str, ...] = ()
    ifc_xml: str | None = None
    visited_networks: tuple[str, ...] = ()


def validate_subscriber(
    *,
    impi: object,
    impus: object,
    k: object,
    op: object = None,
    opc: object = None,
    amf: object = None,
    sqn: object = None,
    schemes: object = None,
    digest_password: object = None,
    barred: object = None,
    ifc_xml: object = None,
    visited_networks: object = None,
    derive=compute_opc,
) -> SubscriberSpec:
    """Check every field and build a `SubscriberSpec`; raise `FieldError` on the first bad one."""
    impi_s = validate_impi(impi)
    if isinstance(impus, str):
        impus = [impus]
    if not isinstance(impus, list | tuple) or not impus:
        raise FieldError("impu", "at least one public identity (IMPU)")
    impu_list: list[str] = []
    for value in impus:
        uri = validate_impu(value)
        if uri in impu_list:
            raise FieldError("impu", f"{uri!r} listed twice")
        impu_list.append(uri)
    if k is None or k == "":
        raise FieldError("k", "missing")
    k_b = parse_hex("k", k, 16)
    op_given = op not in (None, "")
    opc_given = opc not in (None, "")
    if op_given == opc_given:
        raise FieldError("op/opc", "give exactly one of OP or OPc")
    if op_given:
        op_b = parse_hex("op", op, 16)
        opc_b = derive(k_b, op_b)
        kind = "op"
    else:
        op_b = None
        opc_b = parse_hex("opc", opc, 16)
        kind = "opc"
    amf_b = DEFAULT_AMF if amf in (None, "") else parse_hex("amf", amf, 2)
    sqn_i = parse_sqn("sqn", sqn)
    scheme_t = validate_schemes(schemes)
    password = None
    if digest_password not in (None, ""):
        if not isinstance(digest_password, str) or len(digest_password) > 255:
            raise FieldError("password", "expected text up to 255 characters")
        password = digest_password
    if AuthScheme.DIGEST.value in scheme_t and password is None:
        raise FieldError("password", "SIP Digest needs a password")
    barred_t: tuple[str, ...] = ()
    if barred:
        if isinstance(barred, str):
            barred = [barred]
        barred_t = tuple(validate_impu(b, "barred") for b in barred)
        for b in barred_t:
            if b not in impu_list:
                raise FieldError("barred", f"{b!r} is not one of the IMPUs")
        if len(set(barred_t)) == len(impu_list):
            pass  # a fully barred user is legal; UAR then answers 5003
    ifc = None
    if ifc_xml not in (None, ""):
        from imsaka.hss.userdata import validate_ifc_xml

        ifc = validate_ifc_xml(ifc_xml)
    networks: tuple[str, ...] = ()
    if visited_networks:
        if isinstance(visited_networks, str):
            visited_networks = [visited_networks]
        nets = []
        for n in visited_networks:
            if not isinstance(n, str) or not n.strip() or len(n) > 255:
                raise FieldError("visited_networks", "expected network identifiers (text)")
            nets.append(n.strip())
        networks = tuple(dict.fromkeys(nets))
    return SubscriberSpec(
        impi=impi_s,
        impus=tuple(impu_list),
        k=k_b,
        op_kind=kind,
        op=op_b,
        opc=opc_b,
        amf=amf_b,
        sqn=sqn_i,
        schemes=scheme_t,
        digest_password=password,
        barred=barred_t,
        ifc_xml=ifc,
        visited_networks=networks,
    )
