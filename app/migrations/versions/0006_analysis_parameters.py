"""Analysis: the settings the analysis views read (DISPATCH_SHIP_VIA, ENERGY_SETTLEMENT_TZ).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: before this migration, --analysis created the schema and the table itself,
    # so a database that ran it already has them (with the same columns).
    op.execute("CREATE SCHEMA IF NOT EXISTS analysis")
    # One row (id is always true); each --analysis run writes the current settings into it.
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS analysis.parameters (
            id             boolean PRIMARY KEY DEFAULT true CHECK (id),
            ship_via       text[] NOT NULL,
            settlement_tz  text NOT NULL
        )
        """
    )


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
