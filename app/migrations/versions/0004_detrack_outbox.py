"""The DeTrack outbox: one row per dispatched shipment, the job it became and its state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    wh = '"' + context.config.attributes["settings"].warehouse_schema + '"'
    op.execute(
        f"""
        CREATE TABLE {wh}.detrack_jobs (
            do_number       text NOT NULL,
            date            date NOT NULL,
            shipment_number text NOT NULL UNIQUE,
            status          text NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sending', 'sent', 'retry', 'failed')),
            action          text NOT NULL DEFAULT 'create' CHECK (action IN ('create', 'update')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error      text,
            detrack_id      text,
            assign_to       text,
            detrack_status  text,
            payload         jsonb NOT NULL,
            payload_hash    text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            sent_at         timestamptz,
            PRIMARY KEY (do_number, date)
        )
        """
    )
    op.execute(f"CREATE INDEX detrack_jobs_due ON {wh}.detrack_jobs (status, next_attempt_at)")


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
