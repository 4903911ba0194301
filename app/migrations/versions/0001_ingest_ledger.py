"""Schemas, the file ledger, rejected rows and the error log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    settings = context.config.attributes["settings"]
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.staging_schema}"')
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.warehouse_schema}"')
    op.execute(
        """
        CREATE TABLE ingest.files (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name          text NOT NULL,
            dataset       text,
            source        text NOT NULL DEFAULT 'drop',
            sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
            size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
            status        text NOT NULL CHECK (status IN
                              ('loading', 'loaded', 'loaded_with_rejects', 'duplicate', 'failed')),
            rows_loaded   bigint NOT NULL DEFAULT 0,
            rows_rejected bigint NOT NULL DEFAULT 0,
            error         text,
            warnings      jsonb NOT NULL DEFAULT '[]',
            duplicate_of  bigint REFERENCES ingest.files (id),
            received_at   timestamptz NOT NULL DEFAULT now(),
            loaded_at     timestamptz,
            moved_to      text
        )
        """
    )
    # The content identity: one successful load per dataset and SHA-256, whatever happens.
    op.execute(
        """
        CREATE UNIQUE INDEX files_content_once ON ingest.files (dataset, sha256)
        WHERE status IN ('loading', 'loaded', 'loaded_with_rejects')
        """
    )
    op.execute("CREATE INDEX files_received ON ingest.files (received_at DESC)")
    op.execute(
        """
        CREATE TABLE ingest.rejected_rows (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            file_id     bigint NOT NULL REFERENCES ingest.files (id),
            record_no   bigint,
            line_no     bigint,
            column_name text,
            value       text,
            reason      text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX rejected_rows_file ON ingest.rejected_rows (file_id, record_no)")
    op.execute(
        """
        CREATE TABLE ingest.error_log (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            component   text NOT NULL,
            occurred_at timestamptz NOT NULL DEFAULT now(),
            message     text NOT NULL,
            detail      jsonb NOT NULL DEFAULT '{}',
            file_id     bigint REFERENCES ingest.files (id),
            do_number   text
        )
        """
    )
    op.execute("CREATE INDEX error_log_when ON ingest.error_log (occurred_at DESC)")


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
