"""Tries that ended in an unexpected error, per file name and content: after INGEST_MAX_ATTEMPTS
of them the file fails instead of being retried forever. Kept in PostgreSQL so that restarts and
every replica count together.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ingest.file_attempts (
            name        text NOT NULL,
            sha256      text NOT NULL,
            attempts    integer NOT NULL,
            error_type  text NOT NULL,
            last_error  text NOT NULL,
            first_at    timestamptz NOT NULL DEFAULT now(),
            last_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, sha256)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE ingest.file_attempts")
