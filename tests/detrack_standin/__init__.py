"""A local stand-in for the DeTrack API v2, for tests. See :mod:`tests.detrack_standin.server`."""

from tests.detrack_standin.api import MAX_BULK, MAX_LIMIT
from tests.detrack_standin.server import DetrackStandin, RequestRecord
from tests.detrack_standin.state import STATUSES, NotFound

__all__ = ["MAX_BULK", "MAX_LIMIT", "STATUSES", "DetrackStandin", "NotFound", "RequestRecord"]
