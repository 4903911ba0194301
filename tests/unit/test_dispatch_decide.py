"""The dispatch rules without a database: what the outbox does with a shipment, do_number
suffixes, vans and their loads, and the tallies of a plan."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import date

import pytest

from models.detrack import AssignmentRules, Item, Job, Rule
from models.outbox import Action, OutboxStatus, ship_via_codes
from services.dispatch.decide import (
    Assigner,
    Decision,
    DoNumbers,
    Leave,
    NoAddress,
    NoDate,
    Outboxed,
    Queue,
    Shipment,
    build_job,
    decide,
    payload_hash,
    van_loads,
)
from services.dispatch.plan import Plan

MONDAY, TUESDAY = date(2024, 6, 3), date(2024, 6, 4)
SHIPMENT = Shipment(
    shipment_number="S00001",
    job_number="J77",
    scheduled_ship_date=MONDAY,
    ship_name="Customer 1",
    ship_address1="Unit 1 Example Park",
    ship_address2="  ",
    ship_city="Leeds",
    ship_state="West Yorkshire",
    ship_zip="LS1 4AP",
    ship_country="United Kingdom",
    ship_contact="Goods In",
    instructions="Ring twice",
    ship_phone="+44 0000 000000",
    email="orders@example.com",
    items=(Item(sku="P1", description="Box", quantity=2),),
)
NO_ADDRESS = replace(
    SHIPMENT,
    ship_address1=None,
    ship_address2=None,
    ship_city="",
    ship_state=" ",
    ship_zip=None,
    ship_country=None,
)
EXPECTED_API = {
    "do_number": "J77",
    "date": "2024-06-03",
    "type": "Delivery",
    "address": "Unit 1 Example Park, Leeds, West Yorkshire, LS1 4AP, United Kingdom",
    "tracking_number": "S00001",
    "company_name": "Customer 1",
    "deliver_to_collect_from": "Goods In",
    "phone_number": "+44 0000 000000",
    "notify_email": "orders@example.com",
    "instructions": "Ring twice",
    "postal_code": "LS1 4AP",
    "city": "Leeds",
    "state": "West Yorkshire",
    "country": "United Kingdom",
    "items": [{"sku": "P1", "description": "Box", "quantity": 2}],
}


def outboxed(status: OutboxStatus, *, action: Action = Action.CREATE, **fields: object) -> Outboxed:
    """The row SHIPMENT got when it was first planned (its payload unchanged since)."""
    job = build_job(SHIPMENT, "J77", MONDAY, None)
    values: dict[str, object] = {
        "do_number": "J77",
        "date": MONDAY,
        "status": status,
        "action": action,
        "payload_hash": payload_hash(job),
        "assign_to": "Van Alpha",
        "detrack_status": None,
    }
    return Outboxed(**(values | fields))  # type: ignore[arg-type]


# --- a shipment new to the outbox ----------------------------------------------------------


def test_a_new_shipment_is_queued_as_a_create_of_the_job_detrack_takes() -> None:
    decision = decide(SHIPMENT, None, DoNumbers())

    assert isinstance(decision, Queue)
    assert (decision.action, decision.changed, decision.job_date) == (Action.CREATE, False, MONDAY)
    assert decision.job.to_api() == EXPECTED_API
    assert decision.job.assign_to is None  # chosen by the Assigner when the plan is written
    assert decision.digest == payload_hash(decision.job)
    assert len(decision.digest) == 64


def test_second_and_third_shipment_of_a_job_on_a_date_get_suffixes_and_another_date_starts_again() -> None:
    numbers = DoNumbers()
    shipments = [
        replace(SHIPMENT, shipment_number="S1"),
        replace(SHIPMENT, shipment_number="S2"),
        replace(SHIPMENT, shipment_number="S3"),
        replace(SHIPMENT, shipment_number="S4", scheduled_ship_date=TUESDAY),
        replace(SHIPMENT, shipment_number="S5", job_number="J78"),
    ]

    decisions = [decide(s, None, numbers) for s in shipments]

    assert [(d.job.do_number, d.job.date) for d in decisions if isinstance(d, Queue)] == [
        ("J77", "2024-06-03"),
        ("J77(2)", "2024-06-03"),
        ("J77(3)", "2024-06-03"),
        ("J77", "2024-06-04"),
        ("J78", "2024-06-03"),
    ]


def test_suffixes_continue_after_the_highest_in_the_outbox() -> None:
    numbers = DoNumbers([("J77", MONDAY), ("J77(2)", MONDAY), ("J77", TUESDAY), ("J9(5)", MONDAY)])

    assert numbers.next("J77", MONDAY) == "J77(3)"
    assert numbers.next("J77", MONDAY) == "J77(4)"
    assert numbers.next("J77", TUESDAY) == "J77(2)"
    assert numbers.next("J9", MONDAY) == "J9(6)"  # a gap below the highest is not reused
    assert numbers.next("J9", TUESDAY) == "J9"


def test_a_job_number_that_looks_like_a_suffix_never_gets_a_do_number_in_use() -> None:
    # "A(3)" in the outbox reads as job A number 3; job "A(3)" must not be given "A(3)" again.
    numbers = DoNumbers([("A(3)", MONDAY)])

    assert numbers.next("A(3)", MONDAY) == "A(3)(2)"
    assert numbers.next("A(3)", MONDAY) == "A(3)(3)"
    assert numbers.next("A", MONDAY) == "A(4)"
    assert numbers.next("A(3)", TUESDAY) == "A(3)"


def test_a_shipment_without_a_date_cannot_be_a_job_and_takes_no_do_number() -> None:
    numbers = DoNumbers()

    assert decide(replace(SHIPMENT, scheduled_ship_date=None), None, numbers) == NoDate()
    assert numbers.next("J77", MONDAY) == "J77"


def test_a_new_shipment_without_an_address_is_recorded_under_its_do_number() -> None:
    numbers = DoNumbers([("J77", MONDAY)])

    assert decide(NO_ADDRESS, None, numbers) == NoAddress("J77(2)", MONDAY, recorded=False)
    assert numbers.next("J77", MONDAY) == "J77(3)"  # the failed row holds J77(2)


# --- a shipment with an outbox row ---------------------------------------------------------


def test_a_shipment_being_sent_is_left_alone_whatever_changed() -> None:
    row = outboxed(OutboxStatus.SENDING, payload_hash="old")

    assert decide(replace(SHIPMENT, ship_city="York"), row, DoNumbers()) == Leave("sending")
    assert decide(NO_ADDRESS, row, DoNumbers()) == Leave("sending")


@pytest.mark.parametrize("status", [s for s in OutboxStatus if s is not OutboxStatus.SENDING])
def test_an_unchanged_shipment_is_left_alone(status: OutboxStatus) -> None:
    assert decide(SHIPMENT, outboxed(status), DoNumbers()) == Leave("unchanged")


@pytest.mark.parametrize("finished", ["completed", "completed_partial"])
def test_a_changed_shipment_of_a_finished_job_is_left_alone(finished: str) -> None:
    row = outboxed(OutboxStatus.SENT, detrack_status=finished)

    assert decide(replace(SHIPMENT, ship_city="York"), row, DoNumbers()) == Leave("finished")


@pytest.mark.parametrize(
    ("status", "action", "detrack_status", "expected"),
    [
        (OutboxStatus.SENT, Action.CREATE, None, Action.UPDATE),  # DeTrack has it: PUT
        (OutboxStatus.SENT, Action.CREATE, "failed", Action.UPDATE),  # a failed delivery is not finished
        (OutboxStatus.SENT, Action.UPDATE, "info_recv", Action.UPDATE),
        (OutboxStatus.PENDING, Action.CREATE, None, Action.CREATE),  # never sent: still a create
        (OutboxStatus.RETRY, Action.CREATE, None, Action.CREATE),
        (OutboxStatus.FAILED, Action.CREATE, None, Action.CREATE),  # refused: try the new version
        (OutboxStatus.PENDING, Action.UPDATE, None, Action.UPDATE),  # an update not yet sent
        (OutboxStatus.RETRY, Action.UPDATE, None, Action.UPDATE),
        (OutboxStatus.FAILED, Action.UPDATE, None, Action.UPDATE),
    ],
)
def test_a_changed_shipment_is_queued_again_as_create_or_update(
    status: OutboxStatus, action: Action, detrack_status: str | None, expected: Action
) -> None:
    row = outboxed(status, action=action, detrack_status=detrack_status)
    changed = replace(SHIPMENT, ship_city="York")

    decision = decide(changed, row, DoNumbers())

    assert isinstance(decision, Queue)
    assert (decision.action, decision.changed) == (expected, True)
    assert decision.digest == payload_hash(build_job(changed, "J77", MONDAY, None)) != row.payload_hash
    assert decision.job.city == "York"


def test_a_changed_shipment_keeps_its_do_number_date_and_vehicle() -> None:
    row = outboxed(OutboxStatus.SENT, do_number="J77(2)", assign_to="Van Bravo")
    moved = replace(SHIPMENT, scheduled_ship_date=TUESDAY, ship_city="York")
    numbers = DoNumbers()

    decision = decide(moved, row, numbers)

    assert isinstance(decision, Queue)
    assert (decision.job.do_number, decision.job.date, decision.job.assign_to) == (
        "J77(2)",
        "2024-06-03",
        "Van Bravo",
    )
    assert numbers.next("J77", TUESDAY) == "J77"  # no new do_number was taken


def test_a_shipment_that_lost_its_address_is_recorded_once() -> None:
    first = decide(NO_ADDRESS, outboxed(OutboxStatus.SENT, do_number="J77(2)"), DoNumbers())
    again = decide(
        NO_ADDRESS, outboxed(OutboxStatus.FAILED, do_number="J77(2)", payload_hash=""), DoNumbers()
    )
    refused = decide(NO_ADDRESS, outboxed(OutboxStatus.FAILED, do_number="J77(2)"), DoNumbers())

    assert first == NoAddress("J77(2)", MONDAY, recorded=False)
    assert again == NoAddress("J77(2)", MONDAY, recorded=True)
    assert refused == NoAddress("J77(2)", MONDAY, recorded=False)  # failed for another reason


def test_a_shipment_recorded_without_an_address_that_gets_one_is_created() -> None:
    decision = decide(SHIPMENT, outboxed(OutboxStatus.FAILED, payload_hash="", assign_to=None), DoNumbers())

    assert isinstance(decision, Queue)
    assert (decision.action, decision.changed, decision.job.do_number) == (Action.CREATE, True, "J77")


# --- the job, its hash and the rows it comes from --------------------------------------------


def test_the_address_joins_the_non_empty_parts_trimmed() -> None:
    shipment = replace(SHIPMENT, ship_address1=" Unit 1 ", ship_address3="Park Road", ship_state=None)

    assert shipment.address == "Unit 1, Park Road, Leeds, LS1 4AP, United Kingdom"
    assert NO_ADDRESS.address == ""


def test_the_payload_hash_ignores_the_vehicle_and_sees_every_other_field() -> None:
    job = build_job(SHIPMENT, "J77", MONDAY, None)

    assert payload_hash(job) == payload_hash(job.model_copy(update={"assign_to": "Van Alpha"}))
    assert payload_hash(job) != payload_hash(job.model_copy(update={"instructions": "Ring once"}))
    assert payload_hash(job) != payload_hash(job.model_copy(update={"items": []}))


def test_rows_become_a_shipment_and_its_outbox_row() -> None:
    row: dict[str, object] = {
        name: getattr(SHIPMENT, name) for name in Shipment.__dataclass_fields__ if name != "items"
    }
    row["items"] = json.dumps([{"sku": "P1", "description": "Box", "quantity": 2}])
    outbox = {
        "do_number": "J77(2)",
        "job_date": MONDAY,
        "status": "retry",
        "action": "update",
        "payload_hash": "abc",
        "assign_to": None,
        "detrack_status": "info_recv",
    }

    assert Shipment.from_row(row) == SHIPMENT
    assert Outboxed.from_row(row | dict.fromkeys(outbox)) is None
    assert Outboxed.from_row(row | outbox) == Outboxed(
        "J77(2)", MONDAY, OutboxStatus.RETRY, Action.UPDATE, "abc", None, "info_recv"
    )


def test_ship_via_codes_are_trimmed_and_blanks_dropped() -> None:
    assert ship_via_codes("10005") == ["10005"]
    assert ship_via_codes(" 10005, ,10007 ,") == ["10005", "10007"]
    assert ship_via_codes(" , ") == []


# --- vans --------------------------------------------------------------------------------------


def job_in(city: str, day: str = "2024-06-03", postal_code: str = "XX1 1XX") -> Job:
    return Job(do_number="J", date=day, address="somewhere", city=city, postal_code=postal_code)


def test_van_loads_count_jobs_per_day_and_vehicle() -> None:
    loads = van_loads([(MONDAY, "Van Alpha", 3), (MONDAY, "Van Bravo", 1), (TUESDAY, "Van Alpha", 2)])

    assert loads == Counter(
        {("2024-06-03", "Van Alpha"): 3, ("2024-06-03", "Van Bravo"): 1, ("2024-06-04", "Van Alpha"): 2}
    )


def test_least_loaded_counts_the_outbox_and_each_choice_with_ties_by_name() -> None:
    asked: list[int] = []

    def vehicles() -> list[str]:
        asked.append(1)
        return ["Van Charlie", "Van Bravo", "Van Alpha"]

    load = van_loads([(MONDAY, "Van Alpha", 2), (MONDAY, "Van Bravo", 1)])
    assigner = Assigner(AssignmentRules(), vehicles, load)

    chosen = [assigner.choose(job_in("Leeds")) for _ in range(5)] + [
        assigner.choose(job_in("Leeds", "2024-06-04"))
    ]

    assert chosen == ["Van Charlie", "Van Bravo", "Van Charlie", "Van Alpha", "Van Bravo", "Van Alpha"]
    assert load == Counter(
        {
            ("2024-06-03", "Van Alpha"): 3,
            ("2024-06-03", "Van Bravo"): 3,
            ("2024-06-03", "Van Charlie"): 2,
            ("2024-06-04", "Van Alpha"): 1,
        }
    )
    assert asked == [1]  # the vehicle list is read once


def test_rules_come_first_in_order_and_count_towards_the_load() -> None:
    rules = AssignmentRules(
        rules=[
            Rule(vehicle="Van Charlie", postal_code_prefix="ls1"),
            Rule(vehicle="Van Bravo", city="york"),
            Rule(vehicle="Van Alpha", city="Leeds"),
        ]
    )
    load: Counter[tuple[str, str]] = Counter()
    assigner = Assigner(rules, lambda: pytest.fail("no job needs the vehicle list"), load)

    assert assigner.choose(job_in("Leeds", postal_code="LS1 4AP")) == "Van Charlie"
    assert assigner.choose(job_in(" YORK ")) == "Van Bravo"
    assert assigner.choose(job_in("Leeds")) == "Van Alpha"
    assert load == Counter({("2024-06-03", n): 1 for n in ("Van Charlie", "Van Bravo", "Van Alpha")})


def test_no_rule_and_fallback_none_or_no_vehicles_leave_the_job_unassigned() -> None:
    load: Counter[tuple[str, str]] = Counter()

    assert Assigner(AssignmentRules(fallback="none"), list, load).choose(job_in("Hull")) is None
    assert Assigner(AssignmentRules(), list, load).choose(job_in("Hull")) is None
    assert load == Counter()


# --- the plan's tallies ------------------------------------------------------------------------


def test_the_plan_counts_new_changed_and_unsendable_shipments() -> None:
    job = build_job(SHIPMENT, "J77", MONDAY, None)
    plan = Plan()
    decisions: list[Decision] = [
        Queue(Action.CREATE, job, "d", changed=False),
        Queue(Action.CREATE, job, "d", changed=False),
        Queue(Action.UPDATE, job, "d", changed=True),
        Queue(Action.CREATE, job, "d", changed=True),
        Leave("unchanged"),
        Leave("sending"),
        Leave("finished"),
        NoDate(),
        NoAddress("J1", MONDAY, recorded=False),
        NoAddress("J2", MONDAY, recorded=True),
    ]
    for decision in decisions:
        plan.count(decision)

    assert (plan.new, plan.changed, plan.unsendable, plan.jobs) == (2, 2, 3, [])
