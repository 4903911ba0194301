"""Dispatch eligibility in one place: `warehouse.eligible_shipments`, read by `--dispatch` and by
the analysis views, and `warehouse.dispatch_parameters`, the DISPATCH_SHIP_VIA list it reads.

A view cannot take an argument and the analysis views are read long after the run that made
them (exports, a user's psql), so the list lives in a one-row table: `--dispatch` and
`--analysis` each write the list they were started with before they read the view. Until 0008 the
list was kept in `analysis.parameters.ship_via`; that value seeds the new table, and the old
column is left in place (nullable, no longer written) for views made by an older loadbay.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["settings"].warehouse_schema
    wh = f'"{schema}"'
    op.execute(
        f"""
        CREATE TABLE {wh}.dispatch_parameters (
            id          boolean PRIMARY KEY DEFAULT true CHECK (id),
            ship_via    text[] NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(f"INSERT INTO {wh}.dispatch_parameters (ship_via) SELECT ship_via FROM analysis.parameters")
    # The rule of DESIGN §6. `s.*` is expanded now: a later migration that adds a column to
    # fact_shipment and wants it here replaces the view.
    op.execute(
        f"""
        CREATE VIEW {wh}.eligible_shipments AS
        SELECT s.*
        FROM {wh}.fact_shipment s
        JOIN {wh}.dispatch_parameters p ON s.ship_via = ANY (p.ship_via)
        WHERE s.is_partial
        """
    )
    op.execute("ALTER TABLE analysis.parameters ALTER COLUMN ship_via DROP NOT NULL")
    op.execute(
        "COMMENT ON COLUMN analysis.parameters.ship_via IS "
        f"'no longer written: DISPATCH_SHIP_VIA is in {schema}.dispatch_parameters (0008)'"
    )


def downgrade() -> None:
    wh = '"' + context.config.attributes["settings"].warehouse_schema + '"'
    op.execute(
        f"UPDATE analysis.parameters a SET ship_via = d.ship_via FROM {wh}.dispatch_parameters d "
        "WHERE a.ship_via IS NULL"
    )
    op.execute("DELETE FROM analysis.parameters WHERE ship_via IS NULL")
    op.execute("ALTER TABLE analysis.parameters ALTER COLUMN ship_via SET NOT NULL")
    # CASCADE: the analysis views that read it go too; the next --analysis of the older loadbay
    # makes them again from analysis.parameters.
    op.execute(f"DROP VIEW {wh}.eligible_shipments CASCADE")
    op.execute(f"DROP TABLE {wh}.dispatch_parameters")
