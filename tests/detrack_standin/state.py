"""The jobs the DeTrack stand-in holds, and the validation the API applies to them.

Field errors have the API's shape, ``{"field": name, "codes": [code]}``, one code per field, in a
fixed order: ``do_number``, ``date``, ``address``, ``type``, ``items``, then fields that are not
allowed in the order they were sent. Items are named by position: ``items[0].quantity``.

| problem | field | code |
|---|---|---|
| required field missing, empty or only spaces | ``do_number``, ``date``, ``address`` | ``can't be blank`` |
| required field not a string; ``date`` not a real ``YYYY-MM-DD`` | the field | ``is invalid`` |
| ``do_number`` already used on that date | ``do_number`` | ``is already taken`` (configurable) |
| ``type`` other than ``Delivery`` / ``Collection`` | ``type`` | ``is not included in the list`` |
| ``items`` not a list, an item not an object | ``items``, ``items[i]`` | ``is invalid`` |
| item with neither ``description`` nor ``sku`` | ``items[i].description`` | ``can't be blank`` |
| item without ``quantity`` / non-number | ``items[i].quantity`` | ``can't be blank`` / ``is not a number`` |
| ``id``, ``status``, ``milestones`` or an unknown field | that field | ``is not allowed`` |

A job is keyed by ``(do_number, date)``: the spec makes ``do_number`` unique per date, whatever the
``type``. Not checked, because the spec does not say the API does: ``assign_to`` naming a real vehicle,
and ``quantity > 0``; tests assert those on :attr:`JobStore.snapshot` instead.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import date as Date
from datetime import datetime
from typing import Any

Job = dict[str, Any]
JobKey = tuple[str, str]
FieldError = dict[str, Any]

BLANK = "can't be blank"
TAKEN = "is already taken"
NOT_ALLOWED = "is not allowed"
INVALID = "is invalid"
NOT_IN_LIST = "is not included in the list"
NOT_A_NUMBER = "is not a number"

STATUSES = ("info_recv", "dispatched", "completed", "completed_partial", "failed", "on_hold", "return")
TYPES = ("Delivery", "Collection")
SERVER_FIELDS = ("id", "status", "milestones")
CLIENT_FIELDS = frozenset(
    {
        "do_number",
        "date",
        "type",
        "job_type",
        "address",
        "tracking_number",
        "order_number",
        "company_name",
        "deliver_to_collect_from",
        "phone_number",
        "notify_email",
        "instructions",
        "postal_code",
        "city",
        "state",
        "country",
        "assign_to",
        "items",
        "webhook_url",
    }
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class NotFound(LookupError):
    """No job has this do_number and date (and type, when one was asked for)."""


def error(field: str, code: str) -> FieldError:
    return {"field": field, "codes": [code]}


def is_date(value: str) -> bool:
    """True for a real calendar date written ``YYYY-MM-DD``."""
    try:
        return bool(_DATE.fullmatch(value)) and Date.fromisoformat(value) is not None
    except ValueError:
        return False


def field_errors(job: Mapping[str, Any], taken_code: str | None = None) -> list[FieldError]:
    """Everything the API would reject in ``job``; ``taken_code`` is set when its key is in use."""
    errors: list[FieldError] = []
    for name in ("do_number", "date", "address"):
        value = job.get(name)
        if _blank(value):
            errors.append(error(name, BLANK))
        elif not isinstance(value, str) or (name == "date" and not is_date(value)):
            errors.append(error(name, INVALID))
        elif name == "do_number" and taken_code:
            errors.append(error(name, taken_code))
    if job.get("type", "Delivery") not in TYPES:
        errors.append(error("type", NOT_IN_LIST))
    errors += _item_errors(job.get("items", []))
    errors += [error(name, NOT_ALLOWED) for name in job if name not in CLIENT_FIELDS]
    return errors


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _item_errors(items: Any) -> list[FieldError]:
    if not isinstance(items, list):
        return [error("items", INVALID)]
    errors: list[FieldError] = []
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            errors.append(error(where, INVALID))
            continue
        if _blank(item.get("description")) and _blank(item.get("sku")):
            errors.append(error(f"{where}.description", BLANK))
        quantity = item.get("quantity")
        if quantity is None:
            errors.append(error(f"{where}.quantity", BLANK))
        elif isinstance(quantity, bool) or not isinstance(quantity, int | float):
            errors.append(error(f"{where}.quantity", NOT_A_NUMBER))
    return errors


def _key(job: Mapping[str, Any]) -> JobKey | None:
    do_number, date = job.get("do_number"), job.get("date")
    return (do_number, date) if isinstance(do_number, str) and isinstance(date, str) else None


def milestone(status: str, at: datetime) -> dict[str, str]:
    return {"status": status, "created_at": at.isoformat()}


class JobStore:
    """Jobs by ``(do_number, date)``, safe to use from the server's request threads.

    Every method returns copies, so callers never share a dict with the store.
    """

    def __init__(self, duplicate_code: str = TAKEN) -> None:
        self.duplicate_code = duplicate_code
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, Job] = {}
        self._created: Counter[JobKey] = Counter()
        self._duplicates: Counter[JobKey] = Counter()
        self._next_id = 1

    def create(self, payload: Mapping[str, Any], at: datetime) -> tuple[Job | None, list[FieldError]]:
        """Store a new job and return it, or return the field errors that stop it."""
        with self._lock:
            key = _key(payload)
            taken = key in self._jobs
            errors = field_errors(payload, self.duplicate_code if taken else None)
            if errors or key is None:
                if key is not None and taken:
                    self._duplicates[key] += 1
                return None, errors
            job: Job = {
                **copy.deepcopy(dict(payload)),
                "type": payload.get("type", "Delivery"),
                "id": f"{self._next_id:024x}",
                "status": "info_recv",
                "milestones": [milestone("info_recv", at)],
            }
            self._next_id += 1
            self._jobs[key] = job
            self._created[key] += 1
            return copy.deepcopy(job), []

    def get(self, do_number: str, date: str, job_type: str | None = None) -> Job:
        with self._lock:
            return copy.deepcopy(self._find(do_number, date, job_type))

    def list_for_date(self, date: str, job_type: str | None = None) -> list[Job]:
        """That date's jobs in the order they were created."""
        with self._lock:
            jobs = [job for (_, day), job in self._jobs.items() if day == date]
            jobs = [job for job in jobs if job_type is None or job["type"] == job_type]
            return copy.deepcopy(sorted(jobs, key=lambda job: str(job["id"])))

    def update(
        self, do_number: str, date: str, job_type: str | None, fields: Mapping[str, Any]
    ) -> tuple[Job | None, list[FieldError]]:
        """Apply ``fields`` to a job (which may move it to a new do_number or date), or return errors."""
        with self._lock:
            current = self._find(do_number, date, job_type)
            kept = {name: value for name, value in current.items() if name not in SERVER_FIELDS}
            merged = kept | copy.deepcopy(dict(fields))
            key = _key(merged)
            taken = key != (do_number, date) and key in self._jobs
            errors = field_errors(merged, self.duplicate_code if taken else None)
            if errors or key is None:
                return None, errors
            updated = merged | {name: current[name] for name in SERVER_FIELDS}
            del self._jobs[(do_number, date)]
            self._jobs[key] = updated
            return copy.deepcopy(updated), []

    def set_status(
        self, do_number: str, date: str, status: str, at: datetime, pod: Mapping[str, Any] | None = None
    ) -> Job:
        """Move a job to ``status``; ``pod`` sets proof-of-delivery fields as the driver's app does
        (``signature_file_url``, ``photo_1_file_url`` …, ``received_by_sent_by``, ``pod_at``, ``reason``)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; DeTrack statuses are {', '.join(STATUSES)}")
        with self._lock:
            job = self._find(do_number, date, None)
            job.update(copy.deepcopy(dict(pod or {})))
            job["status"] = status
            job["milestones"].append(milestone(status, at))
            return copy.deepcopy(job)

    def snapshot(self) -> dict[JobKey, Job]:
        with self._lock:
            return copy.deepcopy(self._jobs)

    def created_count(self, do_number: str, date: str) -> int:
        """How many times a job with this key was created (1 at most, unless a PUT moved it away)."""
        with self._lock:
            return self._created[(do_number, date)]

    def duplicate_count(self, do_number: str, date: str) -> int:
        """How many creates of this key were refused because it was taken (a client that GETs first: 0)."""
        with self._lock:
            return self._duplicates[(do_number, date)]

    def reset(self, duplicate_code: str) -> None:
        with self._lock:
            self.duplicate_code = duplicate_code
            self._jobs.clear()
            self._created.clear()
            self._duplicates.clear()
            self._next_id = 1

    def _find(self, do_number: str, date: str, job_type: str | None) -> Job:
        job = self._jobs.get((do_number, date))
        if job is None or (job_type is not None and job["type"] != job_type):
            raise NotFound(f"no job {do_number!r} on {date}" + (f" of type {job_type}" if job_type else ""))
        return job
