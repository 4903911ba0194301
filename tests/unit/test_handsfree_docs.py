"""Every hands-free setting is documented where a user looks: .env.example, the README's
configuration table, and the commented hands-free block of docker-compose.yaml."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [
    "PIPELINE_SCHEDULE",
    "DISPATCH_SCHEDULE",
    "ANALYSIS_SCHEDULE",
    "SCHEDULE_TZ",
    "DISPATCH_AFTER_PIPELINE",
    "DETRACK_WEBHOOK_PORT",
    "DETRACK_WEBHOOK_HOST",
    "DETRACK_WEBHOOK_USER",
    "DETRACK_WEBHOOK_PASSWORD",
    "ALERT_URLS",
    "ALERT_REJECT_RATIO",
    "ALERT_OUTAGE_SECONDS",
    "ALERT_MIN_INTERVAL_SECONDS",
    "PROCESSED_RETENTION_DAYS",
]


def test_every_hands_free_setting_is_in_env_example_and_the_readme_table() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    assert [s for s in SETTINGS if not re.search(rf"^{s}=", example, re.MULTILINE)] == []
    assert [s for s in SETTINGS if not any(f"`{s}`" in row for row in table)] == []
    assert "## Running hands-free" in readme


def test_the_compose_app_service_shows_the_hands_free_setup_commented() -> None:
    compose = (ROOT / "docker-compose.yaml").read_text(encoding="utf-8")
    commented = {m.group(1) for m in re.finditer(r"^\s+# ([A-Z_]+): ", compose, re.MULTILINE)}
    assert {
        "PIPELINE_ON_INGEST",
        "DISPATCH_AFTER_PIPELINE",
        "ANALYSIS_SCHEDULE",
        "EPMS_PULL_SECONDS",
        "DETRACK_WEBHOOK_PORT",
        "ALERT_URLS",
        "PROCESSED_RETENTION_DAYS",
    } <= commented
    assert '# - "8081:8081"' in compose  # the webhook port, published when turned on
