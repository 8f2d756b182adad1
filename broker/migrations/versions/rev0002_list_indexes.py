"""Indexes for the cluster list filters: status (the workers' PENDING queue, in creation
order), and an organisation's clusters by status or by compute mode, newest first.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = {
    "clusters_status_created": ["status", "created_at"],
    "clusters_org_status_created": ["org", "status", "created_at"],
    "clusters_org_mode_created": ["org", "mode", "created_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "clusters", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="clusters")
