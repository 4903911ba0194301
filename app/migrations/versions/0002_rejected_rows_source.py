"""Rejected rows say which dataset they were meant for and keep the raw record.

A JSON shipment's packages are rows of the packages dataset; a rejected package names it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ingest.rejected_rows ADD COLUMN dataset text, ADD COLUMN raw text")


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data columns; restore from a backup instead")
