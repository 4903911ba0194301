"""A DeTrack job as it comes back (a webhook push, or a GET by the status sync), read into the
columns `warehouse.detrack_jobs` keeps: status, when it happened, and proof of delivery.

Pure: no I/O. The write is `sql/detrack/apply_job_event.sql`, shared by the webhook and the
`--dispatch` status sync, so that both fill the same columns by the same rule (an older event
never overwrites a newer one; the same event twice changes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from models.detrack import FINISHED_STATUSES

PHOTO_FIELDS = tuple(f"photo_{n}_file_url" for n in range(1, 11))


class NotAJob(ValueError):
    """The JSON is not a DeTrack job loadbay can place (no do_number or date)."""


@dataclass(frozen=True)
class JobEvent:
    """One job's state as DeTrack reported it: the values for `warehouse.detrack_jobs`."""

    do_number: str
    date: date
    status: str | None
    event_at: datetime | None  # the newest milestone: what orders two reports of one job
    pod_at: datetime | None = None
    received_by: str | None = None
    signature_url: str | None = None
    photo_urls: list[str] = field(default_factory=list)
    failure_reason: str | None = None

    @property
    def delivered(self) -> bool:
        """`completed` / `completed_partial`: the shipment is delivered (as the status sync derives it)."""
        return self.status in FINISHED_STATUSES

    @property
    def delivered_at(self) -> datetime | None:
        """When it was delivered: the proof-of-delivery time, else the event's."""
        return self.pod_at or self.event_at

    def parameters(self) -> tuple[object, ...]:
        """The bound values of sql/detrack/apply_job_event.sql, in order."""
        return (
            self.do_number,
            self.date,
            self.status,
            self.event_at,
            self.pod_at,
            self.received_by,
            self.signature_url,
            self.photo_urls or None,
            self.failure_reason,
            self.delivered,
            self.delivered_at or datetime.now(UTC),
        )


def job_event(body: Any) -> JobEvent:
    """Read a job (the object itself, or wrapped as `{"data": job}` like a GET answer)."""
    job = body.get("data") if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping) else body
    if not isinstance(job, Mapping):
        raise NotAJob("the body is not a JSON object (a DeTrack job)")
    do_number, day = job.get("do_number"), job.get("date")
    if not isinstance(do_number, str) or not do_number.strip():
        raise NotAJob("the job has no do_number")
    if not isinstance(day, str):
        raise NotAJob("the job has no date")
    try:
        job_date = date.fromisoformat(day[:10])
    except ValueError:
        raise NotAJob("the job's date is not YYYY-MM-DD") from None
    status = _text(job.get("status"))
    milestones = [m for m in job.get("milestones") or [] if isinstance(m, Mapping)]
    times = [t for t in (_time(m.get("created_at")) for m in milestones) if t is not None]
    pod_at = _time(job.get("pod_at")) or _time(job.get("pod_time"))
    if pod_at is None and status in FINISHED_STATUSES:
        pod_at = _finished_at(milestones)
    return JobEvent(
        do_number=do_number,
        date=job_date,
        status=status,
        event_at=max(times) if times else pod_at,
        pod_at=pod_at,
        received_by=_text(job.get("received_by_sent_by")),
        signature_url=_text(job.get("signature_file_url")),
        photo_urls=[url for url in (_text(job.get(name)) for name in PHOTO_FIELDS) if url],
        failure_reason=_text(job.get("reason")),
    )


def _text(value: Any) -> str | None:
    """A non-empty string, or None (DeTrack sends "" and null alike for nothing)."""
    return value.strip() or None if isinstance(value, str) else None


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time (a trailing Z accepted; no offset means UTC), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _finished_at(milestones: list[Mapping[str, Any]]) -> datetime | None:
    for milestone in reversed(milestones):
        if milestone.get("status") in FINISHED_STATUSES and (at := _time(milestone.get("created_at"))):
            return at
    return None
