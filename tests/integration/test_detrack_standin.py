"""The DeTrack stand-in honours the API contract in spec/detrack-api.md, over real HTTP on loopback."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.detrack_standin import DetrackStandin, NotFound

KEY = "key-that-must-never-be-logged-7f3a"
DAY = "2024-05-01"
START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
CREATED = {"status": "info_recv", "created_at": "2024-05-01T09:00:00+00:00"}
VEHICLES = [
    {"id": 11, "name": "Van North", "detrack_id": "DT-11", "phone": "+44 1"},
    {"id": 12, "name": "Van South", "detrack_id": "DT-12", "phone": "+44 2"},
]
BLANK, TAKEN, NOT_ALLOWED = "can't be blank", "is already taken", "is not allowed"


class FakeClock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_standin(clock: FakeClock) -> Iterator[Callable[..., DetrackStandin]]:
    started: list[DetrackStandin] = []

    def make(**settings: Any) -> DetrackStandin:
        defaults: dict[str, Any] = {"vehicles": VEHICLES, "now": clock}
        standin = DetrackStandin(KEY, **(defaults | settings)).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def api(make_standin: Callable[..., DetrackStandin]) -> DetrackStandin:
    return make_standin()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-API-KEY"] = KEY
        yield session


def job(do_number: Any = "JOB1", date: Any = DAY, **fields: Any) -> dict[str, Any]:
    return {"do_number": do_number, "date": date, "address": "1 High St, Leeds, LS1 1AA", **fields}


def stored(payload: dict[str, Any], number: int) -> dict[str, Any]:
    """The job as the stand-in holds it after creating ``payload`` as its ``number``-th job."""
    return {
        "type": "Delivery",
        **payload,
        "id": f"{number:024x}",
        "status": "info_recv",
        "milestones": [CREATED],
    }


def failed(*errors: tuple[str, str]) -> dict[str, Any]:
    return {
        "code": "validation_failed",
        "message": "Validation failed",
        "errors": [{"field": field, "codes": [code]} for field, code in errors],
    }


NOT_FOUND = {"code": "not_found", "message": "Not found"}


# Life cycle


def test_listens_on_a_free_loopback_port_until_stopped(make_standin: Callable[..., DetrackStandin]) -> None:
    first, second = make_standin(), make_standin()
    assert first.base_url.startswith("http://127.0.0.1:")
    assert first.base_url.endswith("/api/v2")
    assert first.base_url != second.base_url
    url = f"{first.base_url}/vehicles"
    assert requests.get(url, headers={"X-API-KEY": KEY}).status_code == 200
    first.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, headers={"X-API-KEY": KEY})
    assert requests.get(f"{second.base_url}/vehicles", headers={"X-API-KEY": KEY}).status_code == 200


def test_context_manager_starts_and_stops() -> None:
    with DetrackStandin(KEY) as api:
        url = f"{api.base_url}/vehicles"
        assert requests.get(url, headers={"X-API-KEY": KEY}).json() == {"data": []}
    with pytest.raises(requests.ConnectionError):
        requests.get(url, headers={"X-API-KEY": KEY})


def test_base_url_needs_start_and_start_is_once(api: DetrackStandin) -> None:
    with pytest.raises(RuntimeError, match=r"^the stand-in is not running: call start\(\) first$"):
        _ = DetrackStandin(KEY).base_url
    with pytest.raises(RuntimeError, match=r"^the stand-in is already running$"):
        api.start()


# Authentication and the request log


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": ""}, {"X-API-KEY": "wrong"}, {"X-API-KEY": KEY + "x"}])
def test_a_missing_or_wrong_key_is_401_and_does_nothing(api: DetrackStandin, headers: dict[str, str]) -> None:
    answer = requests.post(f"{api.base_url}/dn/jobs", json={"data": job()}, headers=headers)
    assert (answer.status_code, answer.json()) == (401, {"message": "Unauthorized"})
    assert api.jobs == {}
    assert [(r.status, r.key_matched) for r in api.requests] == [(401, False)]


def test_the_request_log_records_each_request_but_never_the_key(
    api: DetrackStandin, http: requests.Session, clock: FakeClock, capfd: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"data": job()}).encode()
    http.get(f"{api.base_url}/vehicles")
    requests.get(f"{api.base_url}/vehicles", headers={"X-API-KEY": "wrong-key-also-secret"})
    clock.advance(1.5)
    http.post(f"{api.base_url}/dn/jobs", data=body, headers={"Content-Type": "application/json"})
    http.get(f"{api.base_url}/dn/jobs/JOB1/{DAY}?type=Delivery")

    assert [(r.method, r.path, r.status, r.at, r.body_bytes, r.key_matched) for r in api.requests] == [
        ("GET", "/api/v2/vehicles", 200, START, 0, True),
        ("GET", "/api/v2/vehicles", 401, START, 0, False),
        ("POST", "/api/v2/dn/jobs", 201, START + timedelta(seconds=1.5), len(body), True),
        ("GET", f"/api/v2/dn/jobs/JOB1/{DAY}?type=Delivery", 200, START + timedelta(seconds=1.5), 0, True),
    ]
    output = capfd.readouterr()
    for text in (repr(api.requests), repr(api.jobs), output.out, output.err):
        assert KEY not in text
        assert "wrong-key-also-secret" not in text


# POST /dn/jobs


def test_create_answers_201_with_the_job_and_a_generated_id(
    api: DetrackStandin, http: requests.Session
) -> None:
    answer = http.post(f"{api.base_url}/dn/jobs", json={"data": job()})
    assert (answer.status_code, answer.json()) == (201, {"data": stored(job(), 1)})
    assert api.jobs == {("JOB1", DAY): stored(job(), 1)}
    assert api.created_count("JOB1", DAY) == 1


def test_create_keeps_every_field_loadbay_sends(api: DetrackStandin, http: requests.Session) -> None:
    payload = job(
        "JOB7(2)",
        type="Collection",
        job_type="Van",
        tracking_number="S-1",
        order_number="O-1",
        company_name="Acme",
        deliver_to_collect_from="Ann",
        phone_number="0113",
        notify_email="a@example.com",
        instructions="Side door",
        postal_code="LS1 1AA",
        city="Leeds",
        state="West Yorkshire",
        country="GB",
        assign_to="Van North",
        webhook_url="https://example.com/hook",
        items=[{"sku": "SKU-1", "quantity": 2}, {"description": "Pallet", "quantity": 1.5}],
    )
    answer = http.post(f"{api.base_url}/dn/jobs", json={"data": payload})
    assert (answer.status_code, answer.json()) == (201, {"data": stored(payload, 1)})
    assert api.jobs[("JOB7(2)", DAY)]["type"] == "Collection"


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({"date": DAY, "address": "x"}, [("do_number", BLANK)]),
        (job(do_number=""), [("do_number", BLANK)]),
        (job(do_number=42), [("do_number", "is invalid")]),
        ({"do_number": "J", "address": "x"}, [("date", BLANK)]),
        (job(date="01/05/2024"), [("date", "is invalid")]),
        (job(date="2024-02-30"), [("date", "is invalid")]),
        (job(address="   "), [("address", BLANK)]),
        ({"do_number": "J", "date": DAY, "address": None}, [("address", BLANK)]),
        (job(type="Pickup"), [("type", "is not included in the list")]),
        (job(items="Box"), [("items", "is invalid")]),
        (job(items=[{"sku": "S", "quantity": 1}, "Box"]), [("items[1]", "is invalid")]),
        (job(items=[{"quantity": 1}]), [("items[0].description", BLANK)]),
        (job(items=[{"description": " ", "sku": "", "quantity": 1}]), [("items[0].description", BLANK)]),
        (job(items=[{"sku": "S"}]), [("items[0].quantity", BLANK)]),
        (job(items=[{"sku": "S", "quantity": "2"}]), [("items[0].quantity", "is not a number")]),
        (job(items=[{"sku": "S", "quantity": True}]), [("items[0].quantity", "is not a number")]),
        (job(id="5b22055510c92b1a046ece21"), [("id", NOT_ALLOWED)]),
        (job(status="completed"), [("status", NOT_ALLOWED)]),
        (job(milestones=[]), [("milestones", NOT_ALLOWED)]),
        (job(colour="red"), [("colour", NOT_ALLOWED)]),
        (
            {"colour": "red", "date": "2024-13-01", "address": "", "type": "x", "items": [{}], "id": "1"},
            [
                ("do_number", BLANK),
                ("date", "is invalid"),
                ("address", BLANK),
                ("type", "is not included in the list"),
                ("items[0].description", BLANK),
                ("items[0].quantity", BLANK),
                ("colour", NOT_ALLOWED),
                ("id", NOT_ALLOWED),
            ],
        ),
    ],
)
def test_create_rejects_invalid_jobs_with_422(
    api: DetrackStandin, http: requests.Session, payload: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    answer = http.post(f"{api.base_url}/dn/jobs", json={"data": payload})
    assert (answer.status_code, answer.json()) == (422, failed(*errors))
    assert api.jobs == {}


def test_a_do_number_is_unique_per_date(api: DetrackStandin, http: requests.Session) -> None:
    assert http.post(f"{api.base_url}/dn/jobs", json={"data": job()}).status_code == 201
    again = http.post(f"{api.base_url}/dn/jobs", json={"data": job(address="elsewhere", type="Collection")})
    reattempt = http.post(f"{api.base_url}/dn/jobs", json={"data": job(date="2024-05-02")})

    assert (again.status_code, again.json()) == (422, failed(("do_number", TAKEN)))
    assert (reattempt.status_code, reattempt.json()) == (201, {"data": stored(job(date="2024-05-02"), 2)})
    assert api.jobs[("JOB1", DAY)] == stored(job(), 1)
    assert (api.created_count("JOB1", DAY), api.duplicate_count("JOB1", DAY)) == (1, 1)
    assert (api.created_count("JOB1", "2024-05-02"), api.duplicate_count("JOB1", "2024-05-02")) == (1, 0)
    assert api.created_count("JOB9", DAY) == 0


def test_the_duplicate_code_is_configurable(
    make_standin: Callable[..., DetrackStandin], http: requests.Session
) -> None:
    api = make_standin(duplicate_code="has duplicate")
    api.add_job(job())
    answer = http.post(f"{api.base_url}/dn/jobs", json={"data": job()})
    assert answer.json() == failed(("do_number", "has duplicate"))
    api.duplicate_code = "is already taken"
    assert http.post(f"{api.base_url}/dn/jobs", json={"data": job()}).json() == failed(("do_number", TAKEN))


@pytest.mark.parametrize(
    ("path", "body", "content_type", "message"),
    [
        ("/dn/jobs", b'{"data": {', "application/json", "The body is not valid JSON"),
        ("/dn/jobs", b"\xff", "application/json", "The body is not valid JSON"),
        (
            "/dn/jobs",
            json.dumps({"data": job()}).encode(),
            "text/plain",
            "Content-Type must be application/json",
        ),
        ("/dn/jobs", json.dumps(job()).encode(), "application/json", 'The body must be {"data": {...}}'),
        (
            "/dn/jobs",
            json.dumps({"data": [job()]}).encode(),
            "application/json",
            'The body must be {"data": {...}}',
        ),
        (
            "/dn/jobs/bulk",
            json.dumps({"data": job()}).encode(),
            "application/json",
            'The body must be {"data": [...]}',
        ),
        (
            "/dn/jobs/bulk",
            json.dumps({"data": [job(), "JOB2"]}).encode(),
            "application/json; charset=utf-8",
            'The body must be {"data": [...]} with one object per job',
        ),
    ],
)
def test_malformed_bodies_are_400(
    api: DetrackStandin, http: requests.Session, path: str, body: bytes, content_type: str, message: str
) -> None:
    answer = http.post(f"{api.base_url}{path}", data=body, headers={"Content-Type": content_type})
    assert (answer.status_code, answer.json()) == (400, {"message": message})
    assert api.jobs == {}


# POST /dn/jobs/bulk


def test_bulk_creates_all_valid_jobs_in_order(api: DetrackStandin, http: requests.Session) -> None:
    payloads = [job("A"), job("B", type="Collection"), job("C")]
    answer = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": payloads})
    assert (answer.status_code, answer.json()) == (
        200,
        {"data": [stored(payload, number) for number, payload in enumerate(payloads, 1)]},
    )
    assert list(api.jobs) == [("A", DAY), ("B", DAY), ("C", DAY)]


def test_bulk_partial_failure_is_422_with_created_jobs_and_failed_jobs_echoed(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.add_job(job("OLD"))
    payloads = [job("A"), job("B", address=""), job("OLD"), job("A"), job("C", colour="red"), job("D")]
    answer = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": payloads})

    assert answer.status_code == 422
    assert answer.json() == {
        "code": "validation_failed",
        "message": "Validation failed",
        "data": [stored(job("A"), 2), stored(job("D"), 3)],
        "errors": [
            {**job("B", address=""), "errors": [{"field": "address", "codes": [BLANK]}]},
            {**job("OLD"), "errors": [{"field": "do_number", "codes": [TAKEN]}]},
            {**job("A"), "errors": [{"field": "do_number", "codes": [TAKEN]}]},
            {**job("C", colour="red"), "errors": [{"field": "colour", "codes": [NOT_ALLOWED]}]},
        ],
    }
    assert list(api.jobs) == [("OLD", DAY), ("A", DAY), ("D", DAY)]
    assert [api.created_count(name, DAY) for name in ("OLD", "A", "B", "C", "D")] == [1, 1, 0, 0, 1]


def test_bulk_takes_1_to_100_jobs(api: DetrackStandin, http: requests.Session) -> None:
    too_many = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": [job(f"J{i}") for i in range(101)]})
    empty = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": []})
    assert (too_many.status_code, too_many.json()) == (422, failed(("data", "is too long (maximum is 100)")))
    assert (empty.status_code, empty.json()) == (422, failed(("data", BLANK)))
    assert api.jobs == {}

    full = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": [job(f"J{i}") for i in range(100)]})
    assert full.status_code == 200
    assert [created["do_number"] for created in full.json()["data"]] == [f"J{i}" for i in range(100)]
    assert len(api.jobs) == 100


# GET /dn/jobs/{do_number}/{date}


@pytest.mark.parametrize("do_number", ["JOB1(2)", "A/B 7", "Ünïcode+1"])
def test_get_finds_a_job_by_url_decoded_do_number_and_date(
    api: DetrackStandin, http: requests.Session, do_number: str
) -> None:
    api.add_job(job(do_number))
    for path in (f"{do_number.replace('/', '%2F')}", quote(do_number, safe="")):
        answer = http.get(f"{api.base_url}/dn/jobs/{path}/{DAY}", params={"type": "Delivery"})
        assert (answer.status_code, answer.json()) == (200, {"data": stored(job(do_number), 1)})
    untyped = http.get(f"{api.base_url}/dn/jobs/{quote(do_number, safe='')}/{DAY}")
    assert untyped.json() == {"data": stored(job(do_number), 1)}


@pytest.mark.parametrize(
    "path", [f"JOB2/{DAY}?type=Delivery", "JOB1/2024-05-02?type=Delivery", f"JOB1/{DAY}?type=Collection"]
)
def test_get_of_an_absent_job_is_404(api: DetrackStandin, http: requests.Session, path: str) -> None:
    api.add_job(job())
    answer = http.get(f"{api.base_url}/dn/jobs/{path}")
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/dn/vehicles"), ("GET", "/dn/job"), ("POST", "/dn/jobs/x/y"), ("PUT", "/dn/jobs")],
)
def test_unknown_paths_are_404(api: DetrackStandin, http: requests.Session, method: str, path: str) -> None:
    answer = http.request(method, f"{api.base_url}{path}", json={"data": {}})
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)
    outside = http.get(api.base_url.replace("/api/v2", "/api/v1/vehicles"))
    assert (outside.status_code, outside.json()) == (404, NOT_FOUND)


# GET /dn/jobs?date=


def test_list_pages_through_a_days_jobs_by_links_next(api: DetrackStandin, http: requests.Session) -> None:
    for name in ("A", "B", "C"):
        api.add_job(job(name))
    api.add_job(job("OTHER", date="2024-05-02"))
    for name in ("D", "E"):
        api.add_job(job(name))
    base = f"{api.base_url}/dn/jobs"

    def link(page: int) -> str:
        return f"{base}?date={DAY}&page={page}&limit=2"

    url: str | None = f"{base}?limit=2&date={DAY}"
    pages = []
    while url is not None:
        answer = http.get(url)
        assert answer.status_code == 200
        pages.append(answer.json())
        url = answer.json()["links"]["next"]

    assert [[listed["do_number"] for listed in page["data"]] for page in pages] == [
        ["A", "B"],
        ["C", "D"],
        ["E"],
    ]
    assert pages[2]["data"] == [stored(job("E"), 6)]
    assert [page["links"] for page in pages] == [
        {"first": link(1), "last": link(3), "prev": None, "next": link(2)},
        {"first": link(1), "last": link(3), "prev": link(1), "next": link(3)},
        {"first": link(1), "last": link(3), "prev": link(2), "next": None},
    ]
    assert [page["meta"] for page in pages] == [
        {"current_page": number, "last_page": 3, "per_page": 2, "total": 5} for number in (1, 2, 3)
    ]


def test_list_defaults_filters_by_type_and_handles_empty_days(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.add_job(job("A"))
    api.add_job(job("B", type="Collection"))
    base = f"{api.base_url}/dn/jobs"

    everything = http.get(base, params={"date": DAY}).json()
    collections = http.get(base, params={"date": DAY, "type": "Collection"}).json()
    empty = http.get(base, params={"date": "2024-06-01"}).json()
    past_the_end = http.get(base, params={"date": DAY, "page": "9"}).json()

    assert [listed["do_number"] for listed in everything["data"]] == ["A", "B"]
    assert everything["meta"] == {"current_page": 1, "last_page": 1, "per_page": 100, "total": 2}
    assert collections["data"] == [stored(job("B", type="Collection"), 2)]
    assert collections["links"]["first"] == f"{base}?date={DAY}&type=Collection&page=1&limit=100"
    assert empty == {
        "data": [],
        "links": {
            "first": f"{base}?date=2024-06-01&page=1&limit=100",
            "last": f"{base}?date=2024-06-01&page=1&limit=100",
            "prev": None,
            "next": None,
        },
        "meta": {"current_page": 1, "last_page": 1, "per_page": 100, "total": 0},
    }
    assert (past_the_end["data"], past_the_end["links"]["next"]) == ([], None)


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ({}, [("date", BLANK)]),
        ({"date": "2024-5-1"}, [("date", "is invalid")]),
        ({"date": DAY, "limit": 101}, [("limit", "must be less than or equal to 100")]),
        ({"date": DAY, "limit": 0}, [("limit", "must be greater than or equal to 1")]),
        ({"date": DAY, "page": 0}, [("page", "must be greater than or equal to 1")]),
        ({"date": DAY, "page": "two"}, [("page", "is not a number")]),
        (
            {"page": -1, "limit": "1e3"},
            [("date", BLANK), ("page", "is not a number"), ("limit", "is not a number")],
        ),
    ],
)
def test_list_rejects_bad_query_parameters(
    api: DetrackStandin, http: requests.Session, query: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    answer = http.get(f"{api.base_url}/dn/jobs", params=query)
    assert (answer.status_code, answer.json()) == (422, failed(*errors))


# PUT /dn/jobs/{do_number}/{date}


def test_put_updates_fields_and_keeps_id_status_and_milestones(
    api: DetrackStandin, http: requests.Session, clock: FakeClock
) -> None:
    api.add_job(job("JOB1(2)", items=[{"sku": "S", "quantity": 1}]))
    clock.advance(60)
    api.set_status("JOB1(2)", DAY, "dispatched")
    fields = {"address": "2 Low St, York", "assign_to": "Van South", "items": [{"sku": "S", "quantity": 3}]}

    answer = http.put(
        f"{api.base_url}/dn/jobs/JOB1(2)/{DAY}", params={"type": "Delivery"}, json={"data": fields}
    )

    expected = {
        **stored(job("JOB1(2)"), 1),
        **fields,
        "status": "dispatched",
        "milestones": [CREATED, {"status": "dispatched", "created_at": "2024-05-01T09:01:00+00:00"}],
    }
    assert (answer.status_code, answer.json()) == (200, {"data": expected})
    assert api.jobs == {("JOB1(2)", DAY): expected}


def test_put_may_move_a_job_to_a_free_date(api: DetrackStandin, http: requests.Session) -> None:
    api.add_job(job())
    answer = http.put(f"{api.base_url}/dn/jobs/JOB1/{DAY}", json={"data": {"date": "2024-05-03"}})
    assert (answer.status_code, answer.json()) == (200, {"data": stored(job(date="2024-05-03"), 1)})
    assert list(api.jobs) == [("JOB1", "2024-05-03")]
    assert http.get(f"{api.base_url}/dn/jobs/JOB1/{DAY}").status_code == 404


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"id": "000000000000000000000009"}, [("id", NOT_ALLOWED)]),
        ({"status": "completed"}, [("status", NOT_ALLOWED)]),
        ({"colour": "red"}, [("colour", NOT_ALLOWED)]),
        ({"address": ""}, [("address", BLANK)]),
        ({"do_number": " "}, [("do_number", BLANK)]),
        ({"do_number": "JOB2"}, [("do_number", TAKEN)]),
        (
            {"date": "2024-02-30", "type": "Parcel"},
            [("date", "is invalid"), ("type", "is not included in the list")],
        ),
        ({"items": [{"description": "Box"}]}, [("items[0].quantity", BLANK)]),
    ],
)
def test_put_validates_like_create_and_changes_nothing_on_422(
    api: DetrackStandin, http: requests.Session, fields: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    api.add_job(job())
    api.add_job(job("JOB2"))
    answer = http.put(f"{api.base_url}/dn/jobs/JOB1/{DAY}?type=Delivery", json={"data": fields})
    assert (answer.status_code, answer.json()) == (422, failed(*errors))
    assert api.jobs == {("JOB1", DAY): stored(job(), 1), ("JOB2", DAY): stored(job("JOB2"), 2)}


@pytest.mark.parametrize("path", [f"JOB2/{DAY}", f"JOB1/{DAY}?type=Collection"])
def test_put_of_an_absent_job_is_404(api: DetrackStandin, http: requests.Session, path: str) -> None:
    api.add_job(job())
    answer = http.put(f"{api.base_url}/dn/jobs/{path}", json={"data": {"address": "x"}})
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)
    assert api.jobs == {("JOB1", DAY): stored(job(), 1)}


# GET /vehicles


def test_vehicles_are_listed_under_the_old_path_without_dn(
    api: DetrackStandin, http: requests.Session
) -> None:
    answer = http.get(f"{api.base_url}/vehicles")
    assert (answer.status_code, answer.json()) == (200, {"data": VEHICLES})
    api.vehicles = [{"id": 1, "name": "Spare", "detrack_id": "DT-1"}]
    assert http.get(f"{api.base_url}/vehicles").json() == {
        "data": [{"id": 1, "name": "Spare", "detrack_id": "DT-1"}]
    }


# Status changes


def test_set_status_changes_the_job_and_adds_a_milestone(
    api: DetrackStandin, http: requests.Session, clock: FakeClock
) -> None:
    api.add_job(job())
    clock.advance(3600)
    api.set_status("JOB1", DAY, "failed")
    api.set_status("JOB1", DAY, "completed_partial", at=datetime(2024, 5, 1, 15, 30, tzinfo=UTC))

    answer = http.get(f"{api.base_url}/dn/jobs/JOB1/{DAY}?type=Delivery").json()["data"]
    assert (answer["status"], answer["milestones"]) == (
        "completed_partial",
        [
            CREATED,
            {"status": "failed", "created_at": "2024-05-01T10:00:00+00:00"},
            {"status": "completed_partial", "created_at": "2024-05-01T15:30:00+00:00"},
        ],
    )
    assert (
        http.get(f"{api.base_url}/dn/jobs", params={"date": DAY}).json()["data"][0]["status"]
        == "completed_partial"
    )


def test_set_status_refuses_unknown_statuses_and_jobs(api: DetrackStandin) -> None:
    api.add_job(job())
    statuses = "info_recv, dispatched, completed, completed_partial, failed, on_hold, return"
    with pytest.raises(
        ValueError, match=re.escape(f"unknown status 'done'; DeTrack statuses are {statuses}")
    ):
        api.set_status("JOB1", DAY, "done")
    with pytest.raises(NotFound, match=r"^no job 'JOB2' on 2024-05-01$"):
        api.set_status("JOB2", DAY, "completed")


# Rate limit


def test_rate_limit_is_a_sliding_minute_with_retry_after(
    make_standin: Callable[..., DetrackStandin], http: requests.Session, clock: FakeClock
) -> None:
    api = make_standin(rate_limit_per_minute=3)
    url = f"{api.base_url}/vehicles"

    def call(after: float) -> tuple[int, str | None]:
        clock.advance(after)
        answer = http.get(url)
        return answer.status_code, answer.headers.get("Retry-After")

    assert [call(0), call(10), call(10)] == [(200, None)] * 3  # at 0, 10 and 20 s
    limited = http.get(url)
    assert (limited.status_code, limited.json(), limited.headers["Retry-After"]) == (
        429,
        {"message": "Too Many Attempts."},
        "40",
    )
    assert call(10.5) == (429, "30")  # 30.5 s: the request at 0 leaves at 60
    assert call(29.4) == (429, "1")  # 59.9 s
    assert call(0.1) == (200, None)  # 60 s: the first request has left the window; 429s never counted
    assert call(0) == (429, "10")  # the window holds 10, 20 and 60 s
    assert requests.get(url, headers={"X-API-KEY": "bad"}).status_code == 401  # auth comes first


def test_rate_limit_without_retry_after_and_401s_do_not_count(
    make_standin: Callable[..., DetrackStandin], http: requests.Session
) -> None:
    api = make_standin(rate_limit_per_minute=1, send_retry_after=False)
    url = f"{api.base_url}/vehicles"
    assert requests.get(url, headers={"X-API-KEY": "bad"}).status_code == 401
    assert http.get(url).status_code == 200
    limited = http.get(url)
    assert (limited.status_code, limited.json()) == (429, {"message": "Too Many Attempts."})
    assert "Retry-After" not in limited.headers


def test_the_default_limit_is_60_a_minute(api: DetrackStandin, http: requests.Session) -> None:
    statuses = [http.get(f"{api.base_url}/vehicles").status_code for _ in range(61)]
    assert statuses == [200] * 60 + [429]
    assert api.rate_limit_per_minute == 60


def test_rate_limit_next_injects_429s(api: DetrackStandin, http: requests.Session) -> None:
    api.rate_limit_next(2, retry_after=7)
    api.rate_limit_next(1)
    answers = [http.get(f"{api.base_url}/vehicles") for _ in range(4)]
    assert [(a.status_code, a.headers.get("Retry-After")) for a in answers] == [
        (429, "7"),
        (429, "7"),
        (429, None),
        (200, None),
    ]
    assert answers[0].json() == {"message": "Too Many Attempts."}


# Injected faults


def test_fail_next_answers_5xx_without_doing_anything(api: DetrackStandin, http: requests.Session) -> None:
    api.fail_next(2)
    api.fail_next(1, status=500)
    answers = [http.post(f"{api.base_url}/dn/jobs", json={"data": job()}) for _ in range(4)]
    assert [(a.status_code, a.json()) for a in answers[:3]] == [
        (503, {"message": "Service Unavailable"}),
        (503, {"message": "Service Unavailable"}),
        (500, {"message": "Internal Server Error"}),
    ]
    assert (answers[3].status_code, answers[3].json()) == (201, {"data": stored(job(), 1)})
    assert api.created_count("JOB1", DAY) == 1
    with pytest.raises(ValueError, match="999 is not a valid HTTPStatus"):
        api.fail_next(1, status=999)


def test_fail_every_fails_each_kth_request(api: DetrackStandin, http: requests.Session) -> None:
    url = f"{api.base_url}/vehicles"
    api.fail_every(3)
    assert [http.get(url).status_code for _ in range(7)] == [200, 200, 503, 200, 200, 503, 200]
    api.fail_every(2, status=502)
    answers = [http.get(url) for _ in range(4)]
    assert [(a.status_code, a.json()) for a in answers][:2] == [
        (200, {"data": VEHICLES}),
        (502, {"message": "Bad Gateway"}),
    ]
    assert [a.status_code for a in answers] == [200, 502, 200, 502]
    api.fail_every(0)
    assert [http.get(url).status_code for _ in range(3)] == [200, 200, 200]


def test_planned_faults_come_in_the_order_they_were_planned(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.fail_next(1)
    api.rate_limit_next(1, retry_after=2)
    api.timeout_next(1, 0.05)
    api.fail_next(1, status=504)
    api.fail_every(2)  # planned faults take precedence over the every-k-th rule
    statuses = [http.get(f"{api.base_url}/vehicles").status_code for _ in range(6)]
    assert statuses == [503, 429, 200, 504, 200, 503]


def test_latency_delays_every_request(api: DetrackStandin, http: requests.Session) -> None:
    api.latency(0.3)
    started = time.monotonic()
    assert requests.get(f"{api.base_url}/vehicles").status_code == 401
    assert http.get(f"{api.base_url}/vehicles").status_code == 200
    assert time.monotonic() - started >= 0.6


def test_a_processed_timeout_creates_the_job_but_the_client_never_hears(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.timeout_next(1, 5.0)  # mode "processed"
    with pytest.raises(requests.ReadTimeout):
        http.post(f"{api.base_url}/dn/jobs", json={"data": job()}, timeout=0.3)

    assert api.jobs == {("JOB1", DAY): stored(job(), 1)}
    assert [(r.method, r.status) for r in api.requests] == [("POST", 201)]
    found = http.get(f"{api.base_url}/dn/jobs/JOB1/{DAY}?type=Delivery", timeout=2)
    assert (found.status_code, found.json()) == (200, {"data": stored(job(), 1)})
    again = http.post(f"{api.base_url}/dn/jobs", json={"data": job()}, timeout=2)
    assert again.json() == failed(("do_number", TAKEN))
    assert (api.created_count("JOB1", DAY), api.duplicate_count("JOB1", DAY)) == (1, 1)


def test_a_processed_timeout_answers_late_to_a_patient_client(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.timeout_next(1, 0.3, mode="processed")
    started = time.monotonic()
    answer = http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": [job("A"), job("B")]}, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert (answer.status_code, answer.json()) == (200, {"data": [stored(job("A"), 1), stored(job("B"), 2)]})


def test_a_dropped_timeout_creates_nothing_and_never_answers(
    api: DetrackStandin, http: requests.Session
) -> None:
    api.timeout_next(1, 5.0, mode="dropped")
    with pytest.raises(requests.ReadTimeout):
        http.post(f"{api.base_url}/dn/jobs", json={"data": job()}, timeout=0.3)
    api.timeout_next(1, 0.1, mode="dropped")
    with pytest.raises(requests.ConnectionError):
        http.post(f"{api.base_url}/dn/jobs/bulk", json={"data": [job()]}, timeout=5)

    assert api.jobs == {}
    assert [(r.path, r.status) for r in api.requests] == [
        ("/api/v2/dn/jobs", None),
        ("/api/v2/dn/jobs/bulk", None),
    ]
    assert http.post(f"{api.base_url}/dn/jobs", json={"data": job()}, timeout=2).status_code == 201


# Thread safety and reset


def test_concurrent_creates_of_one_job_make_exactly_one(api: DetrackStandin) -> None:
    statuses: list[int] = []
    barrier = threading.Barrier(10)

    def create(name: str) -> None:
        barrier.wait()
        answer = requests.post(
            f"{api.base_url}/dn/jobs", json={"data": job(name)}, headers={"X-API-KEY": KEY}
        )
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=create, args=("SAME",)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] + [422] * 9
    assert (api.created_count("SAME", DAY), api.duplicate_count("SAME", DAY)) == (1, 9)
    assert list(api.jobs) == [("SAME", DAY)]
    assert len(api.requests) == 10


def test_reset_forgets_everything_and_restores_settings(
    make_standin: Callable[..., DetrackStandin], http: requests.Session
) -> None:
    api = make_standin(rate_limit_per_minute=5)
    api.add_job(job())
    http.get(f"{api.base_url}/vehicles")
    api.rate_limit_per_minute, api.send_retry_after, api.duplicate_code = 1, False, "has duplicate"
    api.vehicles = []
    api.fail_next(3)
    api.fail_every(1)
    api.latency(5)

    api.reset()

    assert (api.jobs, api.requests, api.created_count("JOB1", DAY)) == ({}, [], 0)
    assert (api.rate_limit_per_minute, api.send_retry_after, api.duplicate_code) == (5, True, TAKEN)
    assert http.get(f"{api.base_url}/vehicles").json() == {"data": VEHICLES}
    assert http.post(f"{api.base_url}/dn/jobs", json={"data": job()}).json() == {"data": stored(job(), 1)}
