"""The IMS subscription XML of an SAA (TS 29.228 Annex E / CxDataType XSD): the implicit set.

The S-CSCF needs from User-Data only the public identities of the implicit registration
set and their barring, to build P-Associated-URI (TS 24.229 §5.4.1.2.2): the non-barred
identities, the registered one first. Everything else (iFC, service profiles) is kept as
the XML text in the registration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imsaka.xmlsafe import parse_untrusted

__all__ = ["PublicIdentity", "UserDataError", "associated_uris", "parse_user_data"]

MAX_USER_DATA = 256 * 1024


class UserDataError(ValueError):
    """User-Data that is not the TS 29.228 IMSSubscription document."""


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    identity: str
    barred: bool = False


def _local(tag: str) -> str:
    # The XSD has no namespace, but tolerate one: match on the local name.
    return tag.rsplit("}", 1)[-1] if tag[:1] == "{" else tag


# The document as an HSS without provisioned iFC sends it (imsaka.hss.userdata, TS 29.228
# Annex E order): an optional XML declaration, then IMSSubscription holding one PrivateID
# and ServiceProfiles of PublicIdentity elements (BarringIndication? then Identity), no
# attribute, comment, entity or CDATA, blanks only between elements. Its character data
# holds none of the characters XML refuses or rewrites (controls, CR, "]]>", U+FFFE/F,
# surrogates), so ElementTree would give each text as it stands. Read with two C-level
# regex passes instead of building a tree of some twenty elements; anything else (iFC,
# a namespace, an entity, another order) takes the parse.
_TEXT = r"[^<&\]\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]*"
_WS = r"[ \t\r\n]*"
_PUBLIC = (
    rf"<PublicIdentity>{_WS}(?:<BarringIndication>({_TEXT})</BarringIndication>{_WS})?"
    rf"<Identity>({_TEXT})</Identity>{_WS}</PublicIdentity>{_WS}"
)
_PLAIN_DOC = re.compile(
    rf'(?:<\?xml version="1\.0"(?: encoding="(?:UTF|utf)-8")?\?>{_WS})?'
    rf"<IMSSubscription>{_WS}<PrivateID>({_TEXT})</PrivateID>{_WS}"
    rf"((?:<ServiceProfile>{_WS}(?:{_PUBLIC})*</ServiceProfile>{_WS})+)"
    rf"</IMSSubscription>{_WS}"
).fullmatch
_PLAIN_PUBLIC = re.compile(_PUBLIC).findall


def _parse_plain(xml: str) -> tuple[str, list[PublicIdentity]] | None:
    """`parse_user_data` of a document in the plain form above, else None."""
    m = _PLAIN_DOC(xml)
    if m is None:
        return None
    identities = []
    for barring, identity in _PLAIN_PUBLIC(m.group(2)):
        identity = identity.strip()
        if identity:
            barred = barring.strip().lower() in ("1", "true")
            identities.append(PublicIdentity(identity, barred))
    return m.group(1).strip(), identities


def parse_user_data(xml: str | bytes) -> tuple[str, list[PublicIdentity]]:
    """→ (PrivateID, public identities of every ServiceProfile, in document order).

    Not cached: the S-CSCF parses a document only when it differs from the live
    registration's (a first registration, a changed profile), where a cache would not
    hit but would hold every document and its parse per registered UE.
    """
    # (a quarter of the limit: within it as UTF-8 whatever the characters)
    if isinstance(xml, str):
        if len(xml) <= MAX_USER_DATA // 4:
            plain = _parse_plain(xml)
            if plain is not None:
                return plain
        xml = xml.encode("utf-8")
    elif len(xml) <= MAX_USER_DATA and xml.isascii():
        plain = _parse_plain(xml.decode("ascii"))
        if plain is not None:
            return plain
    root = parse_untrusted(xml, limit=MAX_USER_DATA, what="User-Data", error=UserDataError)
    if _local(root.tag) != "IMSSubscription":
        raise UserDataError(f"User-Data root is <{_local(root.tag)}>, not <IMSSubscription>")
    private_id = ""
    identities: list[PublicIdentity] = []
    for child in root:
        name = _local(child.tag)
        if name == "PrivateID":
            private_id = (child.text or "").strip()
        elif name == "ServiceProfile":
            for pub in child:
                if _local(pub.tag) != "PublicIdentity":
                    continue
                identity = ""
                barred = False
                for item in pub:
                    item_name = _local(item.tag)
                    if item_name == "Identity":
                        identity = (item.text or "").strip()
                    elif item_name == "BarringIndication":
                        barred = (item.text or "").strip().lower() in ("1", "true")
                if identity:
                    identities.append(PublicIdentity(identity, barred))
    return private_id, identities


def associated_uris(registered_impu: str, identities: list[PublicIdentity]) -> tuple[str, ...]:
    """P-Associated-URI entries: the non-barred identities, the registered IMPU first
    (each once: compared without angle brackets, case-insensitively)."""
    out = [registered_impu]
    seen = {registered_impu.strip("<>").lower()}
    for pid in identities:
        if pid.barred:
            continue
        key = pid.identity.strip("<>").lower()
        if key not in seen:
            seen.add(key)
            out.append(pid.identity)
    return tuple(out)
