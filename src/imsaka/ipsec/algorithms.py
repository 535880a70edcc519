"""The ESP transforms of TS 33.203 Annex H (``alg`` / ``ealg``) and their properties.

One table per kind, looked up once when an SA is built. What each release allows
(the Annex H change summary quoted in OpenSIPS `proto_ipsec/ipsec.c`, SPEC-Q; siphon
PR #426): Rel-5..12 ``alg`` = hmac-md5-96 / hmac-sha-1-96, ``ealg`` = des-ede3-cbc /
aes-cbc (aes-cbc added to RFC 3329's list by Annex H) / null. Rel-13 Annex H adds
``alg`` aes-gmac and null, ``ealg`` aes-gcm, and removes hmac-md5-96 and des-ede3-cbc;
hmac-sha-1-96 and aes-cbc are "not recommended". ``alg=null`` is only meaningful
together with ``ealg=aes-gcm`` (AEAD supplies the integrity).

`wireshark` names are the value strings of Wireshark's ``esp_sa`` UAT (checked against
tshark 4.0's libwireshark); `xfrm` names are the Linux crypto API names ``ip xfrm`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ENCRYPTION",
    "INTEGRITY",
    "EncryptionAlgorithm",
    "IntegrityAlgorithm",
    "combination_allowed",
]


@dataclass(frozen=True, slots=True)
class IntegrityAlgorithm:
    name: str  # the Annex H token
    icv_len: int  # octets of ICV on the wire
    key_len: int  # octets of IKesp
    digest: str  # hashlib name for HMAC, "" for GMAC/null
    first_release: int
    last_release: int | None  # None: still in the newest release
    wireshark: str
    xfrm: str


@dataclass(frozen=True, slots=True)
class EncryptionAlgorithm:
    name: str
    block_size: int  # the payload+pad+2 alignment the cipher needs (RFC 4303 §2.4)
    iv_len: int
    key_len: int  # octets of CKesp (without the 4-octet salt of GCM)
    aead: bool
    first_release: int
    last_release: int | None
    wireshark: str
    xfrm: str


INTEGRITY: dict[str, IntegrityAlgorithm] = {
    a.name: a
    for a in (
        IntegrityAlgorithm(
            "hmac-md5-96", 12, 16, "md5", 5, 12, "HMAC-MD5-96 [RFC2403]", "hmac(md5)"
        ),
        IntegrityAlgorithm(
            "hmac-sha-1-96", 12, 20, "sha1", 5, None, "HMAC-SHA-1-96 [RFC2404]", "hmac(sha1)"
        ),
        # RFC 4543 ENCR_NULL_AUTH_AES_GMAC: integrity only, 16-octet ICV, 8-octet IV.
        IntegrityAlgorithm(
            "aes-gmac",
            16,
            16,
            "",
            13,
            None,
            "ANY 128 bit authentication [no checking]",
            "rfc4543(gcm(aes))",
        ),
        # Only with ealg=aes-gcm, whose ICV is counted by the encryption side.
        IntegrityAlgorithm("null", 0, 0, "", 13, None, "NULL", "digest_null"),
    )
}

ENCRYPTION: dict[str, EncryptionAlgorithm] = {
    e.name: e
    for e in (
        EncryptionAlgorithm(
            "des-ede3-cbc", 8, 8, 24, False, 5, 12, "TripleDES-CBC [RFC2451]", "cbc(des3_ede)"
        ),
        EncryptionAlgorithm("aes-cbc", 16, 16, 16, False, 6, None, "AES-CBC [RFC3602]", "cbc(aes)"),
        # RFC 4106 with a 16-octet ICV; the salt is derived per Annex I.
        EncryptionAlgorithm(
            "aes-gcm",
            4,
            8,
            16,
            True,
            13,
            None,
            "AES-GCM with 16 octet ICV [RFC4106]",
            "rfc4106(gcm(aes))",
        ),
        EncryptionAlgorithm("null", 4, 0, 0, False, 5, None, "NULL", "ecb(cipher_null)"),
    )
}


def combination_allowed(alg: str, ealg: str, release: int | None = None) -> bool:
    """Whether (alg, ealg) is a valid ESP transform, and allowed in `release` if given.

    AEAD (aes-gcm) goes with alg=null and only with it; alg=null goes with nothing else;
    aes-gmac is integrity only and goes with ealg=null.
    """
    a = INTEGRITY.get(alg)
    e = ENCRYPTION.get(ealg)
    if a is None or e is None:
        return False
    if e.aead != (alg == "null"):
        return False
    if alg == "aes-gmac" and ealg != "null":
        return False
    if release is not None:
        for x in (a, e):
            if release < x.first_release or (
                x.last_release is not None and release > x.last_release
            ):
                return False
    return True
