"""Schedules: seconds tick on the epoch grid, cron in SCHEDULE_TZ, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.settings import Settings
from models.schedule import ScheduleError, parse_schedule


def test_empty_is_off() -> None:
    assert parse_schedule("") is None
    assert parse_schedule("   ") is None


def test_seconds_tick_on_the_epoch_grid_so_every_replica_computes_the_same_ticks() -> None:
    schedule = parse_schedule("300")
    assert schedule is not None
    assert schedule.next_tick(datetime(2024, 5, 1, 10, 2, 7, tzinfo=UTC)) == datetime(
        2024, 5, 1, 10, 5, tzinfo=UTC
    )
    # exactly on a tick: the next one, never the same instant twice
    assert schedule.next_tick(datetime(2024, 5, 1, 10, 5, tzinfo=UTC)) == datetime(
        2024, 5, 1, 10, 10, tzinfo=UTC
    )
    assert schedule.describe() == "every 300 s"


def test_cron_is_evaluated_in_the_schedule_time_zone() -> None:
    schedule = parse_schedule("0 6 * * 1-5", "Europe/London")
    assert schedule is not None
    # Friday 31 May 2024 07:00 UTC is 08:00 in London (BST): the next 06:00 local is Monday's
    assert schedule.next_tick(datetime(2024, 5, 31, 7, 0, tzinfo=UTC)) == datetime(
        2024, 6, 3, 5, 0, tzinfo=UTC
    )
    # in winter (GMT) 06:00 local is 06:00 UTC
    assert schedule.next_tick(datetime(2024, 12, 2, 0, 0, tzinfo=UTC)) == datetime(
        2024, 12, 2, 6, 0, tzinfo=UTC
    )
    assert schedule.describe() == 'cron "0 6 * * 1-5" (Europe/London)'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*/5 * * *", "'*/5 * * *' is neither a number of seconds nor a 5-field cron expression"),
        ("0 0 * * * *", "'0 0 * * * *' is neither a number of seconds nor a 5-field cron expression"),
        ("61 * * * *", "'61 * * * *' is neither a number of seconds nor a 5-field cron expression"),
        ("hourly", "'hourly' is neither a number of seconds nor a 5-field cron expression"),
        ("0.5", "'0.5' is not a usable number of seconds: give 1 or more"),
        ("nan", "'nan' is not a usable number of seconds: give 1 or more"),
    ],
)
def test_what_is_not_a_schedule_is_refused_saying_what_is(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text)
    assert str(caught.value).startswith(message)


def test_settings_name_the_variable_of_a_bad_schedule() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, dispatch_schedule="every day", detrack_api_key="k")
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("dispatch_schedule",)]
    assert "'every day' is neither a number of seconds nor a 5-field cron expression" in errors[0]["msg"]


def test_a_scheduled_dispatch_needs_a_key_and_the_webhook_needs_credentials() -> None:
    with pytest.raises(
        ValidationError, match="DISPATCH_SCHEDULE or DISPATCH_AFTER_PIPELINE is set but DETRACK_API_KEY"
    ):
        Settings(_env_file=None, dispatch_after_pipeline=True)
    with pytest.raises(
        ValidationError, match="DETRACK_WEBHOOK_USER and DETRACK_WEBHOOK_PASSWORD are required"
    ):
        Settings(_env_file=None, detrack_webhook_port=9000, detrack_webhook_user="detrack")
    ok = Settings(
        _env_file=None,
        detrack_webhook_port=9000,
        detrack_webhook_user="detrack",
        detrack_webhook_password="s3cret",
        pipeline_schedule=" */5 * * * * ",
    )
    assert ok.pipeline_schedule == "*/5 * * * *"
