"""The DeTrack API v2 endpoints of the stand-in, as plain functions from a request to a :class:`Reply`.

Paths are relative to ``/api/v2``; each segment is URL-decoded after splitting, so a do_number may
hold ``(``, ``)`` or an encoded ``/``. The ``type`` query parameter is optional: when given, a job of
the other type is not found.

Answers that the spec leaves open, as chosen here:

- 400 ``{"message": ...}`` when a POST or PUT body is not JSON, not sent as ``application/json``, or not
  ``{"data": ...}`` with an object (a list for bulk).
- 404 ``{"code": "not_found", "message": "Not found"}`` for an unknown job or path.
- Bulk: 1 to 100 jobs, else 422 on field ``data`` (``can't be blank`` /
  ``is too long (maximum is 100)``) and nothing is created. Jobs are created one by one, in order
  (a repeated do_number inside one batch is taken by the first). A partial failure answers::

      422 {"code": "validation_failed", "message": "Validation failed",
           "data": [<each created job, with its id>],
           "errors": [{<the failed job exactly as sent>, "errors": [{"field": ..., "codes": [...]}]}]}

  with both lists in request order and no index: reconcile by do_number and date.
- List: ``date`` is required; ``page`` (default 1) must be at least 1, ``limit`` (default 100) from 1
  to 100, else 422 on that field. Jobs come in creation order. ``links`` has ``first``, ``last``,
  ``prev`` and ``next``: full URLs keeping the request's other query parameters, then ``page`` and
  ``limit``; ``prev`` / ``next`` are null at the ends. ``meta`` has ``current_page``, ``last_page``,
  ``per_page`` and ``total``. A page past the last is empty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.detrack_standin.state import (
    BLANK,
    INVALID,
    NOT_A_NUMBER,
    FieldError,
    JobStore,
    NotFound,
    error,
    is_date,
)

BASE_PATH = "/api/v2"
MAX_BULK = 100
MAX_LIMIT = 100


@dataclass
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    content_type: str
    body: bytes


class BadRequest(Exception):
    """The request body is malformed; the message is sent back with a 400."""


NOT_FOUND = Reply(404, {"code": "not_found", "message": "Not found"})


def validation_failed(errors: list[FieldError], **extra: Any) -> Reply:
    """The API's 422 body; ``extra`` goes between ``message`` and ``errors`` (bulk adds ``data``)."""
    body = {"code": "validation_failed", "message": "Validation failed", **extra, "errors": errors}
    return Reply(422, body)


def route(
    store: JobStore, vehicles: list[dict[str, Any]], request: Request, origin: str, now: datetime
) -> Reply:
    """Answer one request that has passed authentication, rate limiting and fault injection."""
    url = urlsplit(request.target)
    if not url.path.startswith(BASE_PATH + "/"):
        return NOT_FOUND
    parts = [unquote(part) for part in url.path[len(BASE_PATH) + 1 :].split("/")]
    query = {name: values[-1] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
    job_type = query.get("type")
    try:
        match request.method, parts:
            case "GET", ["vehicles"]:
                return Reply(200, {"data": vehicles})
            case "POST", ["dn", "jobs"]:
                return _create(store, _data(request, dict), now)
            case "POST", ["dn", "jobs", "bulk"]:
                return _bulk(store, _data(request, list), now)
            case "GET", ["dn", "jobs"]:
                return _list(store, query, origin + url.path)
            case "GET", ["dn", "jobs", do_number, date]:
                return Reply(200, {"data": store.get(do_number, date, job_type)})
            case "PUT", ["dn", "jobs", do_number, date]:
                job, errors = store.update(do_number, date, job_type, _data(request, dict))
                return Reply(200, {"data": job}) if job else validation_failed(errors)
    except BadRequest as exc:
        return Reply(400, {"message": str(exc)})
    except NotFound:
        return NOT_FOUND
    return NOT_FOUND


def _data(request: Request, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    """The payload under ``data``, which must be a ``kind``."""
    if request.content_type.split(";")[0].strip() != "application/json":
        raise BadRequest("Content-Type must be application/json")
    try:
        document = json.loads(request.body)
    except ValueError as exc:
        raise BadRequest("The body is not valid JSON") from exc
    shape = '{"data": {...}}' if kind is dict else '{"data": [...]}'
    if not isinstance(document, dict) or not isinstance(document.get("data"), kind):
        raise BadRequest(f"The body must be {shape}")
    if kind is list and not all(isinstance(job, dict) for job in document["data"]):
        raise BadRequest(f"The body must be {shape} with one object per job")
    return document["data"]


def _create(store: JobStore, payload: Mapping[str, Any], now: datetime) -> Reply:
    job, errors = store.create(payload, now)
    return Reply(201, {"data": job}) if job else validation_failed(errors)


def _bulk(store: JobStore, payloads: list[dict[str, Any]], now: datetime) -> Reply:
    if not payloads:
        return validation_failed([error("data", BLANK)])
    if len(payloads) > MAX_BULK:
        return validation_failed([error("data", f"is too long (maximum is {MAX_BULK})")])
    created, failed = [], []
    for payload in payloads:
        job, errors = store.create(payload, now)
        if job:
            created.append(job)
        else:
            failed.append({**payload, "errors": errors})
    return validation_failed(failed, data=created) if failed else Reply(200, {"data": created})


def _list(store: JobStore, query: dict[str, str], url: str) -> Reply:
    date = query.get("date", "")
    errors = [error("date", BLANK if not date.strip() else INVALID)] if not is_date(date) else []
    page, page_errors = _whole_number(query, "page", default=1, high=None)
    limit, limit_errors = _whole_number(query, "limit", default=MAX_LIMIT, high=MAX_LIMIT)
    errors += page_errors + limit_errors
    if errors:
        return validation_failed(errors)
    jobs = store.list_for_date(date, query.get("type"))
    last_page = max(1, math.ceil(len(jobs) / limit))
    others = {name: value for name, value in query.items() if name not in ("page", "limit")}

    def link(number: int) -> str | None:
        exists = 1 <= number <= last_page
        return f"{url}?{urlencode(others | {'page': number, 'limit': limit})}" if exists else None

    links = {"first": link(1), "last": link(last_page), "prev": link(page - 1), "next": link(page + 1)}
    meta = {"current_page": page, "last_page": last_page, "per_page": limit, "total": len(jobs)}
    return Reply(200, {"data": jobs[(page - 1) * limit : page * limit], "links": links, "meta": meta})


def _whole_number(
    query: dict[str, str], name: str, *, default: int, high: int | None
) -> tuple[int, list[FieldError]]:
    """A query parameter that must be a whole number from 1 to ``high``."""
    text = query.get(name, str(default))
    if not (text.isascii() and text.isdigit()):
        return default, [error(name, NOT_A_NUMBER)]
    value = int(text)
    if value < 1:
        return default, [error(name, "must be greater than or equal to 1")]
    if high is not None and value > high:
        return default, [error(name, f"must be less than or equal to {high}")]
    return value, []
