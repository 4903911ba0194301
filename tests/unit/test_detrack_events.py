"""A DeTrack job read into the columns warehouse.detrack_jobs keeps (webhook and status sync)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from models.detrack_events import JobEvent, NotAJob, job_event

COMPLETED = {
    "id": "000000000000000000000001",
    "do_number": "J0001",
    "date": "2024-06-03",
    "status": "completed",
    "address": "Unit 1 Example Park, Leeds",
    "received_by_sent_by": "A. Person",
    "signature_file_url": "https://detrack.example/sig/1.png",
    "photo_1_file_url": "https://detrack.example/photo/1.jpg",
    "photo_2_file_url": "",
    "photo_3_file_url": "https://detrack.example/photo/3.jpg",
    "pod_at": "2024-06-03T14:05:00+01:00",
    "reason": None,
    "milestones": [
        {"status": "info_recv", "created_at": "2024-06-03T08:00:00Z"},
        {"status": "completed", "created_at": "2024-06-03T13:05:30Z"},
    ],
}


def test_a_completed_job_gives_status_time_and_proof_of_delivery() -> None:
    assert job_event(COMPLETED) == JobEvent(
        do_number="J0001",
        date=date(2024, 6, 3),
        status="completed",
        event_at=datetime(2024, 6, 3, 13, 5, 30, tzinfo=UTC),
        pod_at=datetime(2024, 6, 3, 13, 5, tzinfo=UTC),
        received_by="A. Person",
        signature_url="https://detrack.example/sig/1.png",
        photo_urls=["https://detrack.example/photo/1.jpg", "https://detrack.example/photo/3.jpg"],
        failure_reason=None,
    )
    assert job_event(COMPLETED).delivered is True
    assert job_event({"data": COMPLETED}) == job_event(COMPLETED)  # wrapped like a GET answer


def test_a_failed_job_keeps_its_reason_and_is_not_delivered() -> None:
    event = job_event(
        {
            "do_number": "J2",
            "date": "2024-06-03",
            "status": "failed",
            "reason": "Customer not in",
            "milestones": [{"status": "failed", "created_at": "2024-06-03T15:00:00"}],
        }
    )
    assert (event.status, event.failure_reason, event.delivered, event.pod_at) == (
        "failed",
        "Customer not in",
        False,
        None,
    )
    assert event.event_at == datetime(2024, 6, 3, 15, tzinfo=UTC)  # no offset: UTC


def test_without_pod_at_a_finished_job_is_delivered_at_its_completing_milestone() -> None:
    job = {k: v for k, v in COMPLETED.items() if k != "pod_at"}
    assert job_event(job).pod_at == datetime(2024, 6, 3, 13, 5, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([COMPLETED], "the body is not a JSON object (a DeTrack job)"),
        ("J0001", "the body is not a JSON object (a DeTrack job)"),
        ({"date": "2024-06-03"}, "the job has no do_number"),
        ({"do_number": " ", "date": "2024-06-03"}, "the job has no do_number"),
        ({"do_number": "J1"}, "the job has no date"),
        ({"do_number": "J1", "date": "03/06/2024"}, "the job's date is not YYYY-MM-DD"),
    ],
)
def test_what_is_not_a_job_is_refused(body: object, message: str) -> None:
    with pytest.raises(NotAJob) as caught:
        job_event(body)
    assert str(caught.value) == message
