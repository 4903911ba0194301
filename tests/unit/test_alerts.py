"""Alert texts and the outage watch (pure parts; sending is tested end to end in tests/e2e/test_alerts.py)."""

from __future__ import annotations

from app.settings import Settings
from services.handsfree.alerts import OutageWatch, Pending, message
from services.health import Health


def test_a_message_lists_ten_lines_counts_the_rest_and_says_where_to_look() -> None:
    pending = Pending(
        count=12, lines=[f"f{n}.csv (dataset unknown, ledger #{n}): no dataset" for n in range(10)]
    )
    title, body = message("file_failed", pending)
    assert title == "loadbay: 12 file(s) failed"
    lines = body.splitlines()
    assert lines[0] == "- f0.csv (dataset unknown, ledger #0): no dataset"
    assert lines[10:] == [
        "… and 2 more",
        "Details: python main.py --status (docker compose exec app python main.py --status)",
    ]


def test_an_outage_is_alerted_once_when_it_outlasts_the_threshold_and_once_when_it_ends() -> None:
    health = Health()
    said: list[tuple[str, str]] = []
    watch = OutageWatch(
        Settings(_env_file=None, alert_outage_seconds=300), health, lambda k, t: said.append((k, t))
    )
    health.database(True)
    watch.look(1)
    health.database(False)
    for now in (10, 200, 309, 310, 400, 900):
        watch.look(now)
    health.erp(False)  # no ERP pulls configured: not watched
    watch.look(901)
    health.database(True)
    watch.look(950)
    watch.look(960)
    assert said == [
        ("database_down", "PostgreSQL has not answered for 300 s"),
        ("database_up", "PostgreSQL answers again after 940 s"),
    ]
    erp = OutageWatch(
        Settings(_env_file=None, alert_outage_seconds=60, epms_odbc_dsn="Driver=x"),
        health,
        lambda k, t: said.append((k, t)),
    )
    erp.look(1000)
    erp.look(1060)
    health.erp(True)
    erp.look(1070)
    assert said[2:] == [
        ("erp_down", "the ERP has not answered for 60 s"),
        ("erp_up", "the ERP answers again after 70 s"),
    ]
    title, _ = message("database_down", Pending(1, ["PostgreSQL has not answered for 300 s"]))
    assert title == "loadbay: PostgreSQL unreachable"
