"""The IMS subscription XML of an SAA (TS 29.228 Annex E / CxDataType XSD): the implicit set.

The S-CSCF needs from User-Data only the public identities of the implicit registration
set and their barring, to build P-Associated-URI (TS 24.229 §5.4.1.2.2): the non-barred
identities, the registered one first. Everything else (iFC, service profiles) is kept as
the XML text in the registration.
"""

from __future__ import annotations

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


def parse_user_data(xml: str | bytes) -> tuple[str, list[PublicIdentity]]:
    """→ (PrivateID, public identities of every ServiceProfile, in document order).

    Not cached: the S-CSCF parses a document only when it differs from the live
    registration's (a first registration, a changed profile), where a cache would not
    hit but would hold every document and its parse per registered UE.
    """
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
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
