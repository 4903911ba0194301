"""ERP pulls: how far each pulled dataset has read its ERP table; pulled content may repeat.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per pulled dataset. `source` names the table (or custom query) and watermark column
    # the value belongs to: when either changes, the old value means nothing and the pull starts
    # over. `value` is the watermark as text, `kind` says how to read it back (int, binary, ...).
    op.execute(
        """
        CREATE TABLE ingest.pull_watermarks (
            dataset      text PRIMARY KEY,
            source       text NOT NULL,
            kind         text NOT NULL CHECK (kind IN
                             ('int', 'decimal', 'float', 'binary', 'datetime', 'date', 'text')),
            value        text NOT NULL,
            file_id      bigint NOT NULL REFERENCES ingest.files (id),
            rows_pulled  bigint NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )

    # Same bytes twice is a duplicate for drops only. A pull's file can repeat an earlier one (a
    # row changed and changed back) and must still load, so pulled files leave the index.
    op.execute(
        """
        CREATE UNIQUE INDEX files_drop_content_once ON ingest.files (dataset, sha256)
        WHERE status IN ('loading', 'loaded', 'loaded_with_rejects') AND source <> 'odbc'
        """
    )
    op.execute("DROP INDEX ingest.files_content_once")


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
