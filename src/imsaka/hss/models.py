"""HSS subscriber data model (TS 23.228 §5.2.1, TS 29.228 §6 and Annex B/E).

One IMS subscription holds private identities (IMPI, with the AKA credentials
of TS 33.102: K, OP or OPc, AMF, SQN_HE) and public identities (IMPU: SIP or tel
URI, barring), grouped in implicit registration sets (TS 29.228 §6.5) and tied to
service profiles (the IMS subscription XML, TS 29.228 Annex E). The serving
S-CSCF and the registration state are persisted, so an HSS restart keeps them.

SQLAlchemy Core tables: the hot paths (MAR, SQN allocation) use plain statements;
the schema itself is created by the Alembic migrations in ``migrations/``, and a
test checks that they match these definitions.
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


class RegState(enum.IntEnum):
    """IMPU registration state kept by the HSS (TS 29.228 §6.1.2, Table 6.1.2.1)."""

    NOT_REGISTERED = 0
    REGISTERED = 1
    UNREGISTERED = 2  # S-CSCF assigned to serve unregistered-state services


class AuthScheme(enum.StrEnum):
    """SIP-Authentication-Scheme values (TS 29.229 §6.3.2) the HSS can serve."""

    AKAV1 = "Digest-AKAv1-MD5"
    AKAV2 = "Digest-AKAv2-MD5"
    DIGEST = "SIP Digest"


DEFAULT_SCHEMES = (AuthScheme.AKAV1.value, AuthScheme.AKAV2.value)

subscription = Table(
    "subscription",
    metadata,
    Column("id", Integer, primary_key=True),
    # Serving S-CSCF (SIP URI, Server-Name AVP) and its Diameter identity, kept
    # across restarts (PITFALLS: assignment kept only in memory is lost).
    Column("scscf_name", String(255), nullable=True),
    Column("scscf_host", String(255), nullable=True),
    Column("scscf_realm", String(255), nullable=True),
    # Capabilities the I-CSCF must look for when choosing an S-CSCF (TS 29.228 §6.7).
    Column("mandatory_caps", String(255), nullable=False, server_default=""),
    Column("optional_caps", String(255), nullable=False, server_default=""),
)

impi = Table(
    "impi",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("subscription.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("identity", String(255), nullable=False, unique=True),
    Column("k", LargeBinary(16), nullable=False),
    # Which one the operator gave: "op" (then `op` holds it and `opc` is derived,
    # TS 35.206 §4.1) or "opc" (then `op` is NULL).
    Column("op_kind", String(3), nullable=False),
    Column("op", LargeBinary(16), nullable=True),
    Column("opc", LargeBinary(16), nullable=False),
    Column("amf", LargeBinary(2), nullable=False),
    # SQN_HE: the last SQN handed out (TS 33.102 Annex C); only moved by one
    # atomic UPDATE (store.allocate_sqns / resync).
    Column("sqn", BigInteger, nullable=False),
    Column("algorithm", String(16), nullable=False, server_default="milenage"),
    Column("auth_schemes", String(128), nullable=False),
    # SIP Digest (TS 33.203 Annex N / TS 29.228 §6.3) password; NULL when not allowed.
    Column("digest_password", String(255), nullable=True),
    # S-CSCF that asked for vectors (MAR): pending until SAR confirms (TS 29.228 §6.3.1).
    Column("pending_scscf", String(255), nullable=True),
)

service_profile = Table(
    "service_profile",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("subscription.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("name", String(64), nullable=False, server_default="default"),
    # Provisioned ServiceProfile content besides PublicIdentity elements: the
    # InitialFilterCriteria (and optional CoreNetworkServicesAuthorization)
    # elements, as XML text; NULL means a profile without iFC.
    Column("ifc_xml", Text, nullable=True),
)

implicit_set = Table(
    "implicit_set",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("subscription.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
)

impu = Table(
    "impu",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("subscription.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("identity", String(255), nullable=False, unique=True),
    Column("barred", Boolean, nullable=False, server_default="0"),
    Column(
        "implicit_set_id",
        Integer,
        ForeignKey("implicit_set.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "service_profile_id",
        Integer,
        ForeignKey("service_profile.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("reg_state", SmallInteger, nullable=False, server_default="0"),
)

visited_network = Table(
    "visited_network",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("subscription.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("network", String(255), nullable=False),
    UniqueConstraint("subscription_id", "network", name="uq_visited_network"),
)

scscf = Table(
    "scscf",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("diameter_host", String(255), nullable=True),
    Column("mandatory_caps", String(255), nullable=False, server_default=""),
    Column("optional_caps", String(255), nullable=False, server_default=""),
)

__all__ = [
    "DEFAULT_SCHEMES",
    "AuthScheme",
    "RegState",
    "impi",
    "implicit_set",
    "impu",
    "metadata",
    "scscf",
    "service_profile",
    "subscription",
    "visited_network",
]
