"""Seed 003 end to end: the JunkJet bot served by the chatstate server's seed-003 routes, and
through a BotRuntime with its 5-minute (+2 for active users) sessions on a FakeClock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from examples import seed003_junkjet as seed

from chatstate.adapters.base import BotRuntime
from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.lifecycle import Lifecycle
from chatstate.model import Incoming, SessionKey, Status
from chatstate.stores.memory import MemoryStore

T0 = 1_800_000_000.0


def test_detection() -> None:
    assert seed.detect_intent("I want to sell plastic bottles") == "selling"
    assert seed.detect_intent("where can I buy recycled paper?") == "buying"
    assert seed.detect_intent("how is glass recycled?") == "information"
    assert seed.detect_intent("hello") is None
    assert seed.detect_materials("old newspapers and aluminium cans") == ["paper", "metal"]
    assert seed.detect_materials("a box of batteries") == ["cardboard", "electronics"]
    assert seed.detect_location("pick it up from my home please") == "home"
    assert seed.detect_location("any centre near me?") == "current"


@pytest.fixture
async def server() -> AsyncIterator[tuple[httpx.AsyncClient, SessionManager, FakeClock]]:
    from chatstate.server import Settings, create_app

    clock = FakeClock(T0)
    manager = SessionManager(MemoryStore(), clock=clock, policy=seed.POLICY)
    app = create_app(Settings(store_url="memory://", chat_burst=1000), manager=manager,
                     bot=seed.JunkJetBot, lifecycle=None)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1:8000") as client:
            yield client, manager, clock


async def test_served_by_the_seed_003_api(
    server: tuple[httpx.AsyncClient, SessionManager, FakeClock]
) -> None:
    client, manager, _clock = server

    async def ask(text: str) -> dict[str, object]:
        response = await client.post("/chatbot/chatbotquery",
                                     json={"message": text, "userId": "user123"})
        assert response.status_code == 200
        body: dict[str, object] = response.json()
        return body

    first = await ask("Hello, I want to sell plastic")
    assert first["success"] is True and "plastic at about" in str(first["message"])
    assert first["sessionInfo"] == {"userId": "user123", "messageCount": 1, "remainingTime": 5}
    await ask("also some plastic bottles and cardboard boxes")
    third = await ask("I can sell plastic containers too")
    assert "plastic a lot" in str(third["message"])
    info = (await client.get("/chatbot/session/user123")).json()
    session = info["session"]
    assert session["preferences"] == {"plastic": 3, "cardboard": 1}
    assert session["currentIntent"] == "selling" and session["userType"] == "phase2"
    for i in range(5):
        last = await ask(f"how much for {i} kg of metal scrap?")
    assert last["sessionInfo"]["remainingTime"] == 7  # type: ignore[index]  # active: +2 min
    record = await manager.get(SessionKey.user("web", "user123"))
    assert record is not None and record.labels["user_type"] == "phase3"
    stored = await manager.store.read_tail(record.ref, 100)
    assert len(stored) == seed.MAX_HISTORY
    assert stored[-1].role == "assistant" and stored[-2].text == "how much for 4 kg of metal scrap?"
    analytics = (await client.get("/chatbot/sessions/analytics")).json()
    assert analytics["totalActiveSessions"] == 1
    assert analytics["summary"]["topIntents"] == {"selling": 1}


async def test_five_minute_sessions_extended_for_active_users() -> None:
    clock = FakeClock(T0)
    manager = SessionManager(MemoryStore(), clock=clock, policy=seed.POLICY)
    runtime = BotRuntime(manager, seed.JunkJetBot(manager), key_for="user", record_history=True)
    expired: list[str] = []
    lifecycle = Lifecycle(manager, restore=False,
                          on_expire=lambda session, due: expired.append(session.key.ids[0]))

    def msg(user: str, text: str) -> Incoming:
        return Incoming.from_text(text, platform="web", user_id=user, chat_id=user)

    # a casual user: gone 5 minutes after the last message
    await runtime.process(msg("casual", "hi"))
    # an active user: more than 5 messages earn +2 minutes
    for i in range(6):
        result = await runtime.process(msg("active", f"what about glass {i}?"))
        assert result.ok
    clock.advance(300)
    await lifecycle.run_once()
    assert expired == ["casual"]
    active = await manager.get(SessionKey.user("web", "active"))
    assert active is not None and active.status is Status.ACTIVE
    clock.advance(120)
    await lifecycle.run_once()
    assert expired == ["casual", "active"]
    # the history never held more than 10 messages
    assert len(await manager.store.read_tail(active.ref, 100)) == seed.MAX_HISTORY
    assert active.data["preferences"] == {"glass": 6}
