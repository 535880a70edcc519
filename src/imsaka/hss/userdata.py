"""Cx User-Data: the IMS subscription XML (TS 29.228 Annex E, schema CxDataType).

What an S-CSCF such as Kamailio's validates (PITFALLS, Kamailio section): an XML
declaration, **no namespace on the root** (a default ``xmlns`` is rejected), the
element order PrivateID then ServiceProfile; inside PublicIdentity,
BarringIndication before Identity; every IMPU of the implicit set present
byte-exact as an Identity. A ServiceProfile is PublicIdentity (1..n),
CoreNetworkServicesAuthorization?, InitialFilterCriteria (0..n), Extension?.

Provisioned iFCs are stored as an XML fragment (the elements that follow the
PublicIdentity elements) and checked here before they are written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from imsaka.hss.subscriber import FieldError

__all__ = ["ProfileIdentities", "build_user_data", "validate_ifc_xml"]

_PROFILE_TAIL_ORDER = {
    "CoreNetworkServicesAuthorization": 0,
    "InitialFilterCriteria": 1,
    "Extension": 2,
}
MAX_IFC_XML = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProfileIdentities:
    """One ServiceProfile: its public identities (uri, barred) and provisioned iFC fragment."""

    identities: Sequence[tuple[str, bool]]
    ifc_xml: str | None = None


def build_user_data(private_id: str, profiles: Iterable[ProfileIdentities]) -> bytes:
    """The IMSSubscription document for one IMPI, UTF-8, ready for the User-Data AVP."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', "<IMSSubscription>"]
    parts.append(f"<PrivateID>{escape(private_id)}</PrivateID>")
    count = 0
    for profile in profiles:
        if not profile.identities:
            continue
        count += 1
        parts.append("<ServiceProfile>")
        for uri, barred in profile.identities:
            parts.append(
                "<PublicIdentity>"
                f"<BarringIndication>{1 if barred else 0}</BarringIndication>"
                f"<Identity>{escape(uri)}</Identity>"
                "</PublicIdentity>"
            )
        if profile.ifc_xml:
            parts.append(profile.ifc_xml)
        parts.append("</ServiceProfile>")
    if count == 0:
        raise ValueError("IMS subscription without any public identity")
    parts.append("</IMSSubscription>")
    return "".join(parts).encode("utf-8")


def validate_ifc_xml(text: object, field_name: str = "ifc_xml") -> str:
    """Check a provisioned ServiceProfile tail (iFCs) against the Cx schema rules we rely on.

    Returns the fragment stripped. Accepts either bare elements or a whole
    ``<ServiceProfile>``/``<IMSSubscription>`` document, from which the tail elements are
    taken (so an operator can paste what another HSS exported).
    """
    if not isinstance(text, str):
        raise FieldError(field_name, "expected XML text")
    body = text.strip()
    if len(body) > MAX_IFC_XML:
        raise FieldError(field_name, f"larger than {MAX_IFC_XML} characters")
    if "<!DOCTYPE" in body.upper() or "<!ENTITY" in body.upper():
        raise FieldError(field_name, "DTDs and entities are not allowed")
    if body.startswith("<?xml"):
        end = body.find("?>")
        body = body[end + 2 :].strip() if end >= 0 else body
    try:
        root = ET.fromstring(f"<_wrap>{body}</_wrap>")
    except ET.ParseError as exc:
        raise FieldError(field_name, f"not well-formed XML ({exc})") from None
    elements = list(root)
    if len(elements) == 1 and elements[0].tag in ("IMSSubscription", "ServiceProfile"):
        node = elements[0]
        if node.tag == "IMSSubscription":
            profiles = node.findall("ServiceProfile")
            if len(profiles) != 1:
                raise FieldError(field_name, "expected exactly one ServiceProfile")
            node = profiles[0]
        elements = [e for e in node if e.tag != "PublicIdentity"]
    last = -1
    for el in elements:
        if el.tag.startswith("{"):
            raise FieldError(
                field_name, f"namespaced element {el.tag!r}: the Cx XML has no namespace"
            )
        rank = _PROFILE_TAIL_ORDER.get(el.tag)
        if rank is None:
            raise FieldError(field_name, f"unexpected element <{el.tag}> in a ServiceProfile")
        if rank < last or (rank != 1 and rank == last):
            raise FieldError(
                field_name,
                f"<{el.tag}> out of order (CoreNetworkServicesAuthorization, InitialFilterCriteria*, Extension)",
            )
        last = rank
        if el.tag == "InitialFilterCriteria":
            _check_ifc(el, field_name)
    return "".join(ET.tostring(e, encoding="unicode") for e in elements)


def _check_ifc(el: ET.Element, field_name: str) -> None:
    prio = el.find("Priority")
    if prio is None or not (prio.text or "").strip().isdigit():
        raise FieldError(field_name, "InitialFilterCriteria needs a Priority (integer ≥ 0)")
    children = [c.tag for c in el]
    if children[0] != "Priority":
        raise FieldError(field_name, "InitialFilterCriteria must start with Priority")
    server = el.find("ApplicationServer/ServerName")
    if server is None or not (server.text or "").strip():
        raise FieldError(field_name, "InitialFilterCriteria needs ApplicationServer/ServerName")
    tp = el.find("TriggerPoint")
    if tp is not None:
        cnf = tp.find("ConditionTypeCNF")
        if cnf is None or (cnf.text or "").strip() not in ("0", "1", "true", "false"):
            raise FieldError(field_name, "TriggerPoint needs ConditionTypeCNF (0 or 1)")
        if tp.find("SPT") is None:
            raise FieldError(field_name, "TriggerPoint needs at least one SPT")
