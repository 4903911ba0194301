"""A DeTrack API v2 client on `requests`: envelope, key, timeouts, retries and a rate limit.

Retries are urllib3's (429, 5xx, timeouts and dropped connections; `Retry-After` honoured), with
the backoff loadbay promises: 1 s, doubling, at most 300 s, plus jitter. Retrying a create is
safe because DeTrack refuses a second job with the same do_number and date, and the dispatcher
confirms such a refusal with a GET.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app.backoff import doubling
from app.errors import ConfigError, DetrackUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
BULK_LIMIT = 100
# DESIGN §6's schedule for DeTrack, within a request (urllib3) and between runs (the outbox):
# app.backoff.doubling from 1 s to at most this, plus up to this much jitter.
LONGEST_WAIT_S = 300.0
JITTER_S = 0.5


class Backoff(Retry):
    """urllib3's retry with loadbay's schedule: 1 s, 2 s, 4 s … at most 300 s, plus jitter."""

    def get_backoff_time(self) -> float:
        """The wait before the next try: by the failed tries so far (429, 5xx or no answer)."""
        errors = len([h for h in self.history if h.status is None or h.status >= 429])
        return doubling(errors, longest=self.backoff_max, jitter=self.backoff_jitter)


class RateLimiter:
    """At most `per_minute` requests in any 60 s window; bursts up to that are allowed.

    Written here because it is a dozen lines and has to count exactly the requests this client
    makes, across the threads that share it."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until a request may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0] >= 60:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return waited
                pause = 60 - (now - self._sent[0])
            time.sleep(pause)
            waited += pause


class DetrackClient:
    """DeTrack API v2 over HTTP: the calls dispatch makes, rate-limited and retried."""

    def __init__(
        self, base_url: str, api_key: SecretStr, per_minute: int, timeout_s: float = 30.0, retries: int = 8
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)
        self.limiter = RateLimiter(per_minute)
        self.session = requests.Session()
        self.session.headers.update({"X-API-KEY": api_key.get_secret_value(), "Accept": "application/json"})
        retry = Backoff(
            total=retries,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,  # POST too: a repeated create is refused as a duplicate
            respect_retry_after_header=True,
            backoff_max=LONGEST_WAIT_S,
            backoff_jitter=JITTER_S,
            remove_headers_on_redirect=("Authorization", "X-API-KEY"),
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.limiter.wait()
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            # The message names the URL and the cause, never the key (it is a header).
            raise DetrackUnavailable(
                f"DeTrack did not answer {method} {path}: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            raise ConfigError(
                f"DeTrack refused the API key ({response.status_code})",
                hint="Check DETRACK_API_KEY and DETRACK_BASE_URL",
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise DetrackUnavailable(
                f"DeTrack answered {response.status_code} to {method} {path} after retries"
            )
        return response

    def create_jobs(self, jobs: list[dict[str, object]]) -> requests.Response:
        """POST up to 100 jobs; the caller reconciles the answer item by item."""
        if len(jobs) > BULK_LIMIT:
            raise ValueError(f"at most {BULK_LIMIT} jobs a request")
        return self._call("POST", "/dn/jobs/bulk", json={"data": jobs})

    def get_job(self, do_number: str, date: str) -> dict[str, Any] | None:
        """The job with this do_number on this date, or None when DeTrack has none."""
        response = self._call(
            "GET", f"/dn/jobs/{quote(do_number, safe='')}/{date}", params={"type": "Delivery"}
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        data: dict[str, Any] = response.json()["data"]
        return data

    def update_job(self, do_number: str, date: str, fields: dict[str, object]) -> requests.Response:
        """PUT new fields of an existing job; the caller reads the answer."""
        return self._call(
            "PUT",
            f"/dn/jobs/{quote(do_number, safe='')}/{date}",
            params={"type": "Delivery"},
            json={"data": fields},
        )

    def jobs_on(self, date: str) -> Iterator[dict[str, Any]]:
        """Every job of a day, following `links.next` page by page."""
        path: str | None = f"/dn/jobs?date={date}&page=1&limit={BULK_LIMIT}"
        while path:
            response = self._call("GET", path)
            response.raise_for_status()
            body = response.json()
            yield from body.get("data") or []
            next_url = (body.get("links") or {}).get("next")
            path = (
                next_url[len(self.base_url) :]
                if next_url and next_url.startswith(self.base_url)
                else next_url
            )
            if path and path.startswith("http"):
                raise DetrackUnavailable("DeTrack's next page points to another host")

    def vehicle_names(self) -> list[str]:
        """The names of DeTrack's vehicles, sorted (what `assign_to` takes)."""
        response = self._call("GET", "/vehicles")
        response.raise_for_status()
        return sorted({str(v["name"]) for v in response.json().get("data") or [] if v.get("name")})
