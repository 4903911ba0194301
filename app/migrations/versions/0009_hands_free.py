"""Hands-free watch mode: every stage run in ops.stage_runs (a scheduled tick claimed once across
replicas by its unique (stage, tick)), and DeTrack's proof of delivery on warehouse.detrack_jobs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10
"""

from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    wh = '"' + context.config.attributes["settings"].warehouse_schema + '"'
    op.execute("CREATE SCHEMA IF NOT EXISTS ops")
    op.execute(
        """
        CREATE TABLE ops.stage_runs (
            id          bigserial PRIMARY KEY,
            stage       text NOT NULL CHECK (stage IN ('pipeline', 'dispatch', 'analysis')),
            trigger     text NOT NULL CHECK (trigger IN ('flag', 'schedule', 'chain', 'ingest')),
            tick        timestamptz,
            runner      text NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            outcome     text CHECK (outcome IN ('ok', 'failed', 'skipped')),
            summary     jsonb NOT NULL DEFAULT '{}'::jsonb,
            CHECK ((trigger = 'schedule') = (tick IS NOT NULL))
        )
        """
    )
    # The claim: the first replica to insert a tick runs it, the others find it taken.
    op.execute("CREATE UNIQUE INDEX stage_runs_tick ON ops.stage_runs (stage, tick) WHERE tick IS NOT NULL")
    op.execute("CREATE INDEX stage_runs_recent ON ops.stage_runs (stage, started_at DESC)")
    op.execute(
        f"""
        ALTER TABLE {wh}.detrack_jobs
            ADD COLUMN detrack_status_at timestamptz,
            ADD COLUMN pod_at            timestamptz,
            ADD COLUMN received_by       text,
            ADD COLUMN signature_url     text,
            ADD COLUMN photo_urls        text[],
            ADD COLUMN failure_reason    text
        """
    )


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
