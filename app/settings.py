"""One typed Settings object, read from the environment and `.env`, built once in main.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    @field_validator("source_timezone", "energy_settlement_tz")
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
