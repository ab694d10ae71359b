"""the grant store: alipay_grant

One row per (ISV app_id, authorizing auth_app_id) holding the merchant's
app_auth_token and the refresh token that replaces it. Before migrations the
grant store created this table on first use, so it may already be there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TEXT_KEY = {"mysql": "VARCHAR(64)", "postgresql": "VARCHAR(64)", "sqlite": "TEXT"}
REAL = {"mysql": "DOUBLE", "postgresql": "DOUBLE PRECISION", "sqlite": "REAL"}


def upgrade() -> None:
    bind = op.get_bind()
    dialect = "mysql" if bind.dialect.name == "mariadb" else bind.dialect.name
    if sa.inspect(bind).has_table("alipay_grant"):
        return
    key, real = TEXT_KEY[dialect], REAL[dialect]
    op.execute(f"""CREATE TABLE alipay_grant (
        app_id {key} NOT NULL,
        auth_app_id {key} NOT NULL,
        app_auth_token TEXT NOT NULL,
        app_refresh_token TEXT NOT NULL,
        expires_at {real} NOT NULL,
        refresh_expires_at {real} NULL,
        user_id {key} NULL,
        updated_at {real} NOT NULL,
        PRIMARY KEY (app_id, auth_app_id)
    )""" + (" DEFAULT CHARSET=utf8mb4" if dialect == "mysql" else ""))


def downgrade() -> None:
    op.drop_table("alipay_grant")
