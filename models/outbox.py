"""The dispatch outbox's vocabulary: row statuses, job actions, and which ShipVia codes dispatch.

`warehouse.detrack_jobs` holds these values as text (its CHECK constraints list the same ones);
here they are enums so that a typo is a mypy error, not a query that matches nothing.
"""

from __future__ import annotations

from enum import StrEnum


class OutboxStatus(StrEnum):
    """Where an outbox row is in its life (`warehouse.detrack_jobs.status`)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


class Action(StrEnum):
    """What the next send does with a row's job (`warehouse.detrack_jobs.action`)."""

    CREATE = "create"
    UPDATE = "update"


def ship_via_codes(setting: str) -> list[str]:
    """The ShipVia codes of `DISPATCH_SHIP_VIA` ("10005, 10007"): trimmed, blanks dropped, in order."""
    return [code.strip() for code in setting.split(",") if code.strip()]
