from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.helpers import Watchers


@pytest.fixture
def watchers() -> Iterator[Watchers]:
    """Starts `main.py --watch` processes; any still running at the end of the test is killed."""
    started = Watchers()
    yield started
    started.cleanup()
