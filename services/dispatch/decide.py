"""What the outbox should do with one eligible shipment: the dispatch rules, without I/O.

`decide` takes a shipment, the outbox row it already has (if any) and the do_numbers in use, and
returns one decision: queue a create, queue an update, leave it, or record that it cannot be a
job. `plan.py` reads the rows and writes the outcome; everything here runs without a database.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any, Literal

from models.detrack import FINISHED_STATUSES, AssignmentRules, Item, Job
from models.outbox import Action, OutboxStatus

# A do_number and its suffix: "J77" is job J77 number 1, "J77(3)" is job J77 number 3.
_SUFFIX = re.compile(r"^(?P<job>.*?)(?:\((?P<n>\d+)\))?$")


@dataclass(frozen=True)
class Shipment:
    """An eligible shipment as `sql/dispatch/eligible.sql` reads it: what its job is made of."""

    shipment_number: str
    job_number: str
    scheduled_ship_date: date | None
    ship_name: str | None = None
    ship_address1: str | None = None
    ship_address2: str | None = None
    ship_address3: str | None = None
    ship_city: str | None = None
    ship_state: str | None = None
    ship_zip: str | None = None
    ship_country: str | None = None
    ship_contact: str | None = None
    instructions: str | None = None
    ship_phone: str | None = None
    email: str | None = None
    items: tuple[Item, ...] = ()

    @cached_property
    def address(self) -> str:
        """The non-empty address lines, city, state, zip and country, joined with ", "."""
        parts = (
            self.ship_address1,
            self.ship_address2,
            self.ship_address3,
            self.ship_city,
            self.ship_state,
            self.ship_zip,
            self.ship_country,
        )
        return ", ".join(p.strip() for p in parts if p and p.strip())

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Shipment:
        """The shipment half of an eligible.sql row (`items` is a JSON array of packages)."""
        fields = {name: row[name] for name in cls.__dataclass_fields__ if name != "items"}
        return cls(**fields, items=tuple(Item(**item) for item in json.loads(row["items"])))


@dataclass(frozen=True)
class Outboxed:
    """The outbox row (`warehouse.detrack_jobs`) a shipment already has."""

    do_number: str
    date: date
    status: OutboxStatus
    action: Action
    payload_hash: str
    assign_to: str | None = None
    detrack_status: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Outboxed | None:
        """The outbox half of an eligible.sql row, or None when the shipment has no row yet."""
        if row["do_number"] is None:
            return None
        return cls(
            do_number=row["do_number"],
            date=row["job_date"],
            status=OutboxStatus(row["status"]),
            action=Action(row["action"]),
            payload_hash=row["payload_hash"],
            assign_to=row["assign_to"],
            detrack_status=row["detrack_status"],
        )


@dataclass(frozen=True)
class Queue:
    """Put the job in the outbox as `pending`, to be created or updated by the next send."""

    action: Action
    job: Job
    digest: str
    changed: bool  # the shipment had an outbox row: a change, not a new shipment

    @property
    def job_date(self) -> date:
        """The job's date (its outbox key with the do_number)."""
        return date.fromisoformat(self.job.date)


@dataclass(frozen=True)
class Leave:
    """Nothing to do: DeTrack has this version, a send is in flight, or the job is finished."""

    why: Literal["unchanged", "sending", "finished"]


@dataclass(frozen=True)
class NoDate:
    """Cannot be a job (DeTrack needs a date); counted and logged, not in the outbox."""


@dataclass(frozen=True)
class NoAddress:
    """Cannot be a job (DeTrack needs an address): `failed` in the outbox, never sent."""

    do_number: str
    date: date
    recorded: bool  # the outbox says so already: nothing to write


Decision = Queue | Leave | NoDate | NoAddress


class DoNumbers:
    """The do_numbers in use on each date, and the next one for a job: `JOB`, `JOB(2)`, `JOB(3)` …

    The next number follows the highest in use (a gap left by a deleted row is not reused). A
    job number that itself ends in "(n)" reads like a suffix, so a candidate already in use is
    skipped rather than trusted: a do_number is never given twice on one date."""

    def __init__(self, in_use: Iterable[tuple[str, date]] = ()) -> None:
        self._in_use: set[tuple[str, date]] = set()
        self._highest: dict[tuple[str, date], int] = {}
        for do_number, day in in_use:
            self._take(do_number, day)

    def _take(self, do_number: str, day: date) -> None:
        self._in_use.add((do_number, day))
        match = _SUFFIX.match(do_number)
        assert match is not None  # every string matches: the suffix is optional
        key = (match["job"], day)
        self._highest[key] = max(self._highest.get(key, 0), int(match["n"] or 1))

    def next(self, job_number: str, day: date) -> str:
        """Take and return the next free do_number of `job_number` on `day`."""
        n = self._highest.get((job_number, day), 0) + 1
        while (candidate := job_number if n == 1 else f"{job_number}({n})", day) in self._in_use:
            n += 1
        self._take(candidate, day)
        return candidate


def van_loads(rows: Iterable[tuple[date, str, int]]) -> Counter[tuple[str, str]]:
    """Jobs per (ISO date, vehicle) from (date, vehicle, jobs) counts of the outbox."""
    return Counter({(day.isoformat(), vehicle): n for day, vehicle, n in rows})


class Assigner:
    """Rules first, in order; then the vehicle with the fewest jobs that day (ties by name)."""

    def __init__(
        self, rules: AssignmentRules, vehicles: Callable[[], list[str]], load: Counter[tuple[str, str]]
    ):
        self.rules = rules
        self._vehicles = vehicles  # asked once, at the first job no rule places
        self._names: list[str] | None = None
        self.load = load  # (date, vehicle) → jobs

    def choose(self, job: Job) -> str | None:
        """The vehicle for `job` (None when no rule matches and the fallback is `none`); counted."""
        vehicle = next((r.vehicle for r in self.rules.rules if r.matches(job)), None)
        if vehicle is None and self.rules.fallback == "least_loaded":
            if self._names is None:
                self._names = self._vehicles()
            if self._names:
                vehicle = min(self._names, key=lambda name: (self.load[(job.date, name)], name))
        if vehicle is not None:
            self.load[(job.date, vehicle)] += 1
        return vehicle


def build_job(shipment: Shipment, do_number: str, job_date: date, assign_to: str | None) -> Job:
    """The DeTrack job of a shipment (whose address must not be empty)."""
    return Job(
        do_number=do_number,
        date=job_date.isoformat(),
        address=shipment.address,
        tracking_number=shipment.shipment_number,
        company_name=shipment.ship_name,
        deliver_to_collect_from=shipment.ship_contact,
        phone_number=shipment.ship_phone,
        notify_email=shipment.email,
        instructions=shipment.instructions,
        postal_code=shipment.ship_zip,
        city=shipment.ship_city,
        state=shipment.ship_state,
        country=shipment.ship_country,
        assign_to=assign_to,
        items=list(shipment.items),
    )


def payload_hash(job: Job) -> str:
    """A digest of what DeTrack would hold for the job; a new digest means the shipment changed."""
    content = job.to_api()
    content.pop("assign_to", None)  # the vehicle is ours to choose, not a change of the shipment
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def decide(shipment: Shipment, outboxed: Outboxed | None, do_numbers: DoNumbers) -> Decision:
    """What the outbox does with `shipment`; a new shipment takes its do_number from `do_numbers`."""
    if outboxed is None:
        if shipment.scheduled_ship_date is None:
            return NoDate()
        job_date = shipment.scheduled_ship_date
        do_number = do_numbers.next(shipment.job_number, job_date)
    elif outboxed.status is OutboxStatus.SENDING:
        return Leave("sending")  # settled first (recover_sending); a change is seen on the next run
    else:
        do_number, job_date = outboxed.do_number, outboxed.date  # a job keeps its key
    if not shipment.address:
        # payload_hash "" marks a row recorded as having no address (see plan._record_no_address)
        recorded = (
            outboxed is not None and outboxed.status is OutboxStatus.FAILED and not outboxed.payload_hash
        )
        return NoAddress(do_number, job_date, recorded)
    job = build_job(shipment, do_number, job_date, outboxed.assign_to if outboxed else None)
    digest = payload_hash(job)
    if outboxed is None:
        return Queue(Action.CREATE, job, digest, changed=False)
    if digest == outboxed.payload_hash:
        return Leave("unchanged")
    if outboxed.status is OutboxStatus.SENT and outboxed.detrack_status in FINISHED_STATUSES:
        return Leave("finished")  # delivered: the job is history
    # DeTrack has the job once it was sent, or once an update of it was queued.
    update = outboxed.status is OutboxStatus.SENT or outboxed.action is Action.UPDATE
    return Queue(Action.UPDATE if update else Action.CREATE, job, digest, changed=True)
