"""Helpers for the flow tests: a `Chat` that sends messages to a FlowRunner, either on a bare
Session (unit tests) or through a SessionManager (end to end, one update per message)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from chatstate.clock import FakeClock
from chatstate.flows import FlowRunner
from chatstate.model import Attachment, Incoming, Outgoing, SessionKey, new_record
from chatstate.session import Session

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the examples/ directory lives at the repository root
    sys.path.insert(0, str(ROOT))

# 2025-03-12 10:00 UTC, a Wednesday (so "tomorrow" is Thursday and "friday" is 2025-03-14).
WEDNESDAY = 1741773600.0


class Chat:
    """One user talking to a runner. `manager=None` keeps a Session in memory directly."""

    def __init__(
        self, runner: FlowRunner, manager: Any = None, *, key: SessionKey | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.runner = runner
        self.manager = manager
        self.key = key or SessionKey.user("test", 42)
        self.clock = clock or (manager.clock if manager is not None else FakeClock(WEDNESDAY))
        if manager is None:
            runner.clock = self.clock
            self.session = Session(new_record(self.key, now=self.clock.now()), key=self.key)
        self.replies: list[Outgoing] = []

    async def send_incoming(self, incoming: Incoming) -> list[Outgoing]:
        if self.manager is None:
            self.replies = await self.runner.handle(self.session, incoming)
        else:
            async with self.manager.session(self.key) as session:
                self.replies = await self.runner.handle(session, incoming)
        return self.replies

    async def send(self, text: str | None, **fields: Any) -> list[Outgoing]:
        incoming = Incoming.from_text(text, **fields) if text is not None else Incoming(**fields)
        return await self.send_incoming(incoming)

    async def press(self, label: str) -> list[Outgoing]:
        """Press the button called `label` in the last replies."""
        for out in self.replies:
            for row in out.buttons:
                for button in row:
                    if button.text == label:
                        assert button.payload is not None
                        return await self.send_incoming(Incoming.button(button.payload))
        raise AssertionError(f"no button {label!r} in {self.buttons}")

    async def attach(self, kind: str = "sticker") -> list[Outgoing]:
        return await self.send_incoming(Incoming(attachments=[Attachment(kind=kind)]))

    @property
    def text(self) -> str:
        return "\n".join(o.text for o in self.replies)

    @property
    def buttons(self) -> list[str]:
        return [b.text for o in self.replies for row in o.buttons for b in row]

    async def record(self) -> Any:
        if self.manager is None:
            return self.session.record
        return await self.manager.get(self.key)

    async def step(self) -> str | None:
        record = await self.record()
        return None if record is None or record.flow is None else record.flow.step

    async def state(self) -> str | None:
        record = await self.record()
        return None if record is None else record.state
