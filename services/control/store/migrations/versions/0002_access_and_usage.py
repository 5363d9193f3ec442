"""Roles, role and privilege grants, owners of jobs, default roles, fine-tuning usage, credits.

Every existing account gets its system roles. Before this revision every user could do
everything in its account, so every existing user is granted ACCOUNTADMIN (keeping what it
could do) and existing jobs are owned by ACCOUNTADMIN.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SYSTEM_ROLES = ("ACCOUNTADMIN", "PUBLIC", "FINETUNE_USER")


def upgrade() -> None:
    op.add_column("users", sa.Column("default_role_id", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("owner_role_id", sa.String(64), nullable=True))
    op.add_column("usage_records", sa.Column("credits", sa.Float(), nullable=False,
                                             server_default=sa.text("0")))
    op.create_table(
        "roles",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "name", name="uq_roles_account_name"),
    )
    op.create_table(
        "role_grants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("role_id", sa.String(64), sa.ForeignKey("roles.id"), nullable=False),
        sa.Column("grantee_type", sa.String(8), nullable=False),
        sa.Column("grantee_id", sa.String(64), nullable=False),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("role_id", "grantee_type", "grantee_id", name="uq_role_grants"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_role_grants_grantee", "role_grants", ["grantee_type", "grantee_id"])
    op.create_index("ix_role_grants_account", "role_grants", ["account_id"])
    op.create_table(
        "privilege_grants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("role_id", sa.String(64), sa.ForeignKey("roles.id"), nullable=False),
        sa.Column("privilege", sa.String(32), nullable=False),
        sa.Column("object_type", sa.String(16), nullable=False),
        sa.Column("object_name", sa.String(800), nullable=False),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("role_id", "privilege", "object_type", "object_name",
                            name="uq_privilege_grants"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_privilege_grants_object", "privilege_grants",
                    ["account_id", "object_type", "object_name"])
    op.create_index("ix_privilege_grants_role_id", "privilege_grants", ["role_id"])
    op.create_table(
        "fine_tuning_usage",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False,
                  unique=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(800), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.Float(), nullable=False),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_fine_tuning_usage_account_end", "fine_tuning_usage",
                    ["account_id", "end_time"])
    _system_roles_for_existing_accounts()


def _system_roles_for_existing_accounts() -> None:
    bind = op.get_bind()
    accounts = sa.table("accounts", sa.column("id"))
    users = sa.table("users", sa.column("id"), sa.column("account_id"),
                     sa.column("default_role_id"))
    jobs = sa.table("jobs", sa.column("account_id"), sa.column("owner_role_id"))
    roles = sa.table("roles", sa.column("id"), sa.column("account_id"), sa.column("name"),
                     sa.column("comment"), sa.column("created_on"))
    grants = sa.table("role_grants", sa.column("account_id"), sa.column("role_id"),
                      sa.column("grantee_type"), sa.column("grantee_id"),
                      sa.column("granted_by"), sa.column("created_on"))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for (account_id,) in bind.execute(sa.select(accounts.c.id)).all():
        ids = {name: f"rol_{secrets.token_hex(8)}" for name in SYSTEM_ROLES}
        bind.execute(roles.insert(), [
            {"id": ids[name], "account_id": account_id, "name": name, "comment": "system role",
             "created_on": now} for name in SYSTEM_ROLES])
        admin = ids["ACCOUNTADMIN"]
        bind.execute(grants.insert(), [{
            "account_id": account_id, "role_id": ids["FINETUNE_USER"], "grantee_type": "ROLE",
            "grantee_id": admin, "granted_by": "migration", "created_on": now}])
        user_ids = [u for (u,) in bind.execute(
            sa.select(users.c.id).where(users.c.account_id == account_id)).all()]
        if user_ids:
            bind.execute(grants.insert(), [{
                "account_id": account_id, "role_id": admin, "grantee_type": "USER",
                "grantee_id": user_id, "granted_by": "migration", "created_on": now}
                for user_id in user_ids])
        bind.execute(users.update().where(users.c.account_id == account_id)
                     .values(default_role_id=admin))
        bind.execute(jobs.update().where(jobs.c.account_id == account_id)
                     .values(owner_role_id=admin))


def downgrade() -> None:
    op.drop_table("fine_tuning_usage")
    op.drop_table("privilege_grants")
    op.drop_table("role_grants")
    op.drop_table("roles")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("credits")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner_role_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("default_role_id")
