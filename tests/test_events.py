"""EventBus: hooks by name, by prefix and for all; `listening` tells hot paths the truth."""

from __future__ import annotations

from chatstate.events import Event, EventBus


async def test_prefix_name_and_catch_all_hooks() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.on("flow.*", lambda e: seen.append(("flow.*", e.name)))
    bus.on("session.closed", lambda e: seen.append(("closed", e.name)))

    async def everything(event: Event) -> None:
        seen.append(("*", event.name))

    bus.on("*", everything)
    await bus.emit(Event(name="flow.step.entered"))
    await bus.emit(Event(name="session.closed"))
    await bus.emit(Event(name="flowers"))  # 'flow.*' means the prefix 'flow.'
    assert seen == [
        ("flow.*", "flow.step.entered"), ("*", "flow.step.entered"),
        ("closed", "session.closed"), ("*", "session.closed"),
        ("*", "flowers"),
    ]
    assert bus.counts["flow.step.entered"] == 1 and bus.counts["flowers"] == 1


async def test_listening_follows_on_and_off() -> None:
    bus = EventBus()
    assert not bus.listening("session.committed")

    def hook(event: Event) -> None:
        pass

    bus.on("*", hook)
    assert bus.listening("session.committed")
    bus.off("*", hook)
    assert not bus.listening("session.committed")  # no empty entry left behind
    bus.on("session.*", hook)
    assert bus.listening("session.committed") and not bus.listening("flow.step.entered")
    bus.off("session.*", hook)
    assert not bus.listening("session.committed")
    bus.count("session.committed")  # counted without a hook or an event object
    assert bus.counts["session.committed"] == 1
