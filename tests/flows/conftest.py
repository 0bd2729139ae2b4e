"""Fixtures of the flow tests; the `Chat` driver lives in flowchat.py."""

from __future__ import annotations

import pytest

from chatstate.clock import FakeClock
from flowchat import WEDNESDAY


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WEDNESDAY)
