"""Fixtures of the flow tests; the `Chat` driver lives in flowchat.py."""

from __future__ import annotations

import pytest
from flowchat import WEDNESDAY

from chatstate.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WEDNESDAY)
