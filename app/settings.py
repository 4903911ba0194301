"""One typed Settings object, read from the environment and `.env`, built once in main.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.schedule import ScheduleError, parse_schedule

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# An ERP object name: one to three dot-separated parts (database.schema.table), each a SQL Server
# regular identifier, or any text in [brackets] or "double quotes".
_ERP_PART = r'(?:[A-Za-z_@#][A-Za-z0-9_@#$]{0,127}|\[[^\]]{1,128}\]|"[^"]{1,128}")'
_ERP_NAME = re.compile(rf"^{_ERP_PART}(?:\.{_ERP_PART}){{0,2}}$")
_ERP_COLUMN = re.compile(rf"^{_ERP_PART}$")


class Settings(BaseSettings):
    """Every knob of loadbay; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    database_url: SecretStr = SecretStr("")
    embedded_db_dir: Path = Path("data/postgres")

    imports_dir: Path = Path("imports")
    exports_dir: Path = Path("exports")
    logs_dir: Path = Path("logs")
    staging_schema: str = "staging"
    warehouse_schema: str = "warehouse"
    datasets_file: Path = Path("datasets.toml")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    watch_polling: bool = False
    watch_settle_seconds: float = Field(2.0, ge=0)
    watch_rescan_seconds: float = Field(60.0, gt=0)
    ingest_workers: int = Field(2, ge=1, le=64)
    max_reject_ratio: float = Field(0.1, ge=0, le=1)
    # An error not known to be transient fails the file after this many tries.
    ingest_max_attempts: int = Field(3, ge=1)
    source_timezone: str = "UTC"
    pipeline_on_ingest: bool = False
    pipeline_workers: int = Field(2, ge=1, le=16)

    # Hands-free watch mode (README, "Running hands-free"): empty, seconds, or 5-field cron.
    pipeline_schedule: str = ""
    dispatch_schedule: str = ""
    analysis_schedule: str = ""
    schedule_tz: str = "UTC"
    dispatch_after_pipeline: bool = False

    detrack_api_key: SecretStr = SecretStr("")
    detrack_base_url: str = "https://app.detrack.com/api/v2"
    dispatch_ship_via: str = "10005"
    dispatch_rules: Path = Path("dispatch_rules.toml")
    detrack_rate_limit_per_minute: int = Field(60, ge=1)
    detrack_timeout_seconds: float = Field(30.0, gt=0)
    detrack_max_retries: int = Field(8, ge=0, le=20)

    epms_odbc_dsn: SecretStr = SecretStr("")
    epms_pull_seconds: float = Field(60.0, gt=0)
    epms_shipment_table: str = "dbo.Shipment"
    epms_package_table: str = "dbo.Package"
    epms_watermark_column: str = "RowVersion"
    epms_shipment_query: str = ""
    epms_package_query: str = ""

    health_port: int = Field(8080, ge=0, le=65535)
    # Loopback by default: the metrics are for this host's probes; a container sets 0.0.0.0 so
    # that its published port reaches them.
    health_host: str = "127.0.0.1"

    # DeTrack's status pushes: every interface by default, since it faces DeTrack.
    detrack_webhook_port: int = Field(0, ge=0, le=65535)
    detrack_webhook_host: str = "0.0.0.0"
    detrack_webhook_user: str = ""
    detrack_webhook_password: SecretStr = SecretStr("")

    # Apprise URLs carry tokens and passwords: a secret as a whole.
    alert_urls: SecretStr = SecretStr("")
    alert_reject_ratio: float = Field(0.01, ge=0, le=1)
    alert_outage_seconds: float = Field(300.0, gt=0)
    alert_min_interval_seconds: float = Field(300.0, ge=0)

    processed_retention_days: int | None = Field(None, ge=1)

    energy_noise_tolerance_kwh: float = Field(0.01, ge=0)
    energy_max_power_kw: float = Field(100.0, gt=0)
    energy_register_modulus_kwh: float | None = None
    energy_max_actual_step_s: int = Field(2100, gt=0)
    energy_max_interp_step_s: int = Field(10800, gt=0)
    energy_power_max_step_s: int = Field(1800, gt=0)
    energy_power_quality: Literal["ACTUAL", "ESTIMATED"] = "ESTIMATED"
    energy_outlier_filter: bool = True
    energy_settlement_tz: str = "UTC"
    sensor_voltage: float = Field(230.0, gt=0)
    sensor_power_factor: float = Field(1.0, gt=0, le=1)

    @field_validator("staging_schema", "warehouse_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not a plain SQL identifier: use lower-case letters, digits and "
                "underscores, starting with a letter or underscore"
            )
        return value

    @field_validator("epms_shipment_table", "epms_package_table", "epms_watermark_column")
    @classmethod
    def _erp_name(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "epms_watermark_column":
            pattern = _ERP_COLUMN
            expected = (
                "a column name: letters, digits and underscores (e.g. RowVersion), or any name in [brackets]"
            )
        else:
            pattern = _ERP_NAME
            expected = (
                "a table name: use schema.table (e.g. dbo.Shipment), optionally with the database "
                "first; quote parts with other characters in [brackets]"
            )
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {expected}")
        return value

    @field_validator("pipeline_schedule", "dispatch_schedule", "analysis_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            parse_schedule(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @model_validator(mode="after")
    def _hands_free(self) -> Settings:
        if self.detrack_webhook_port and not (
            self.detrack_webhook_user and self.detrack_webhook_password.get_secret_value()
        ):
            raise ValueError(
                "DETRACK_WEBHOOK_PORT is set, so DETRACK_WEBHOOK_USER and DETRACK_WEBHOOK_PASSWORD are "
                "required (DeTrack sends them as Basic Auth): set both, or DETRACK_WEBHOOK_PORT=0"
            )
        if (self.dispatch_schedule or self.dispatch_after_pipeline) and not (
            self.detrack_api_key.get_secret_value()
        ):
            raise ValueError(
                "DISPATCH_SCHEDULE or DISPATCH_AFTER_PIPELINE is set but DETRACK_API_KEY is empty, so "
                "no job could be sent: set DETRACK_API_KEY, or turn them off"
            )
        return self

    def schedules(self) -> dict[str, str]:
        """Each stage's schedule as configured (empty: not scheduled)."""
        return {
            "pipeline": self.pipeline_schedule,
            "dispatch": self.dispatch_schedule,
            "analysis": self.analysis_schedule,
        }

    @field_validator("source_timezone", "energy_settlement_tz", "schedule_tz")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name (e.g. UTC, Europe/London)") from None
        return value

    def ensure_folders(self) -> None:
        """Create IMPORTS_DIR, EXPORTS_DIR and LOGS_DIR if they are missing (processed/ and failed/
        are made where a file is moved: beside the file, see services/ingest/files.py)."""
        for folder in (self.imports_dir, self.exports_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
