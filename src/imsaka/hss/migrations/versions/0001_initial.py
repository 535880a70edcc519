"""Initial HSS schema: subscriptions, IMPI, IMPU, implicit sets, service profiles,
allowed visited networks, S-CSCF pool (TS 29.228 §6, TS 23.228 §5.2.1).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scscf_name", sa.String(255), nullable=True),
        sa.Column("scscf_host", sa.String(255), nullable=True),
        sa.Column("scscf_realm", sa.String(255), nullable=True),
        sa.Column("mandatory_caps", sa.String(255), nullable=False, server_default=""),
        sa.Column("optional_caps", sa.String(255), nullable=False, server_default=""),
    )
    op.create_table(
        "impi",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("identity", sa.String(255), nullable=False, unique=True),
        sa.Column("k", sa.LargeBinary(16), nullable=False),
        sa.Column("op_kind", sa.String(3), nullable=False),
        sa.Column("op", sa.LargeBinary(16), nullable=True),
        sa.Column("opc", sa.LargeBinary(16), nullable=False),
        sa.Column("amf", sa.LargeBinary(2), nullable=False),
        sa.Column("sqn", sa.BigInteger, nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False, server_default="milenage"),
        sa.Column("auth_schemes", sa.String(128), nullable=False),
        sa.Column("digest_password", sa.String(255), nullable=True),
        sa.Column("pending_scscf", sa.String(255), nullable=True),
    )
    op.create_index("ix_impi_subscription_id", "impi", ["subscription_id"])
    op.create_table(
        "service_profile",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False, server_default="default"),
        sa.Column("ifc_xml", sa.Text, nullable=True),
    )
    op.create_index("ix_service_profile_subscription_id", "service_profile", ["subscription_id"])
    op.create_table(
        "implicit_set",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_implicit_set_subscription_id", "implicit_set", ["subscription_id"])
    op.create_table(
        "impu",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("identity", sa.String(255), nullable=False, unique=True),
        sa.Column("barred", sa.Boolean, nullable=False, server_default="0"),
        sa.Column(
            "implicit_set_id",
            sa.Integer,
            sa.ForeignKey("implicit_set.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "service_profile_id",
            sa.Integer,
            sa.ForeignKey("service_profile.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reg_state", sa.SmallInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_impu_subscription_id", "impu", ["subscription_id"])
    op.create_table(
        "visited_network",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("network", sa.String(255), nullable=False),
        sa.UniqueConstraint("subscription_id", "network", name="uq_visited_network"),
    )
    op.create_table(
        "scscf",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("diameter_host", sa.String(255), nullable=True),
        sa.Column("mandatory_caps", sa.String(255), nullable=False, server_default=""),
        sa.Column("optional_caps", sa.String(255), nullable=False, server_default=""),
    )


def downgrade() -> None:
    for name in ("scscf", "visited_network", "impu", "implicit_set", "service_profile", "impi"):
        op.drop_table(name)
    op.drop_table("subscription")
