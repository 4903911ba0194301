"""The warehouse: shipments, packages, half-hourly energy and what the pipeline has processed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    wh = '"' + context.config.attributes["settings"].warehouse_schema + '"'
    op.execute(
        f"""
        CREATE TABLE {wh}.pipeline_files (
            step         text NOT NULL,
            file_id      bigint NOT NULL REFERENCES ingest.files (id),
            processed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (step, file_id)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {wh}.fact_shipment (
            shipment_number         text PRIMARY KEY,
            job_number              text NOT NULL,
            ship_name               text,
            ship_address1           text,
            ship_address2           text,
            ship_address3           text,
            ship_city               text,
            ship_state              text,
            ship_zip                text,
            ship_country            text,
            ship_contact            text,
            instructions            text,
            ship_phone              text,
            email                   text,
            ship_via                text,
            is_partial              boolean,
            shipped                 boolean,
            ship_via_service        text,
            scheduled_ship_date     date,
            scheduled_ship_quantity bigint,
            delivered               boolean NOT NULL DEFAULT false,
            delivered_at            timestamptz,
            source_file_id          bigint NOT NULL REFERENCES ingest.files (id),
            source_record_no        bigint NOT NULL,
            content_hash            text NOT NULL,
            first_seen_at           timestamptz NOT NULL DEFAULT now(),
            updated_at              timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(f"CREATE INDEX fact_shipment_job ON {wh}.fact_shipment (job_number, scheduled_ship_date)")
    op.execute(
        f"""
        CREATE TABLE {wh}.fact_package (
            package_id        text PRIMARY KEY,
            shipment_number   text,
            job_number        text NOT NULL,
            total_qty_shipped bigint,
            description       text,
            source_file_id    bigint NOT NULL REFERENCES ingest.files (id),
            source_record_no  bigint NOT NULL,
            content_hash      text NOT NULL,
            first_seen_at     timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(f"CREATE INDEX fact_package_shipment ON {wh}.fact_package (shipment_number)")
    op.execute(
        f"""
        CREATE TABLE {wh}.meter_config (
            meter_id             text PRIMARY KEY,
            max_power_kw         numeric CHECK (max_power_kw > 0),
            register_modulus_kwh numeric CHECK (register_modulus_kwh > 0),
            note                 text
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {wh}.fact_energy_interval (
            meter_id          text NOT NULL,
            interval_start    timestamptz NOT NULL,
            interval_end      timestamptz NOT NULL,
            kwh               numeric(14, 6) CHECK (kwh IS NULL OR kwh >= 0),
            quality           text NOT NULL CHECK (quality IN ('ACTUAL', 'ESTIMATED', 'MISSING')),
            source            text NOT NULL CHECK (source IN ('register', 'power')),
            settlement_date   date NOT NULL,
            settlement_period smallint NOT NULL CHECK (settlement_period BETWEEN 1 AND 50),
            method_version    text NOT NULL,
            computed_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (meter_id, interval_start),
            CHECK (interval_end = interval_start + interval '30 minutes'),
            CHECK ((kwh IS NULL) = (quality = 'MISSING'))
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {wh}.energy_gaps (
            meter_id    text NOT NULL,
            gap_start   timestamptz NOT NULL,
            gap_end     timestamptz NOT NULL,
            kwh         numeric(14, 6) CHECK (kwh IS NULL OR kwh >= 0),
            reason      text NOT NULL CHECK (reason IN ('GAP', 'GAP_RESET_LOWER_BOUND', 'BREAK')),
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (meter_id, gap_start)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE {wh}.reading_anomalies (
            meter_id    text NOT NULL,
            ts          timestamptz NOT NULL,
            field       text NOT NULL,
            value       text,
            file_id     bigint NOT NULL,
            record_no   bigint NOT NULL,
            ingest_seq  text NOT NULL,
            reason      text NOT NULL CHECK (reason IN
                            ('DUPLICATE', 'CONFLICT_SUPERSEDED', 'OUTLIER', 'INVALID', 'OUT_OF_RANGE')),
            computed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (meter_id, ts, file_id, record_no, field)
        )
        """
    )

    # Where an incremental energy run may start: the state at one kept reading a day per meter.
    op.execute(
        f"""
        CREATE TABLE {wh}.energy_checkpoints (
            meter_id text NOT NULL,
            ts       timestamptz NOT NULL,
            source   text NOT NULL,
            v        numeric NOT NULL,
            e_rel    numeric NOT NULL,
            PRIMARY KEY (meter_id, ts)
        )
        """
    )


def downgrade() -> None:
    raise NotImplementedError("loadbay never drops data tables; restore from a backup instead")
