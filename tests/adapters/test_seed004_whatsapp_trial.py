"""Seed 004 end to end: signed WhatsApp webhooks into the receiver, replies to a fake Graph
API, timeouts driven through the Lifecycle runner with a FakeClock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from examples import seed004_whatsapp_trial as seed
from fake_whatsapp import (
    ACCESS_TOKEN,
    APP_SECRET,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    FakeGraph,
    button_reply_webhook,
    encode,
    text_webhook,
)

from chatstate.adapters.whatsapp import WhatsAppAdapter, WhatsAppSender, sign
from chatstate.clock import FakeClock
from chatstate.lifecycle import Lifecycle
from chatstate.model import Status
from chatstate.stores.memory import MemoryStore

PHONE = "5491155556666"
T0 = 1_700_000_000.0


class Trial:
    def __init__(self, graph: FakeGraph, clock: FakeClock, adapter: WhatsAppAdapter,
                 lifecycle: Lifecycle, http: httpx.AsyncClient) -> None:
        self.graph, self.clock, self.adapter = graph, clock, adapter
        self.lifecycle, self.http = lifecycle, http
        self.manager = adapter.manager

    async def say(self, text: str) -> list[str]:
        return await self._post(text_webhook(PHONE, text))

    async def press(self, reply_id: str, title: str) -> list[str]:
        return await self._post(button_reply_webhook(PHONE, reply_id, title))

    async def _post(self, payload: dict[str, Any]) -> list[str]:
        before = len(self.graph.texts(PHONE))
        body = encode(payload)
        response = await self.http.post("/webhook", content=body, headers={
            "X-Hub-Signature-256": sign(APP_SECRET, body)})
        assert response.status_code == 200
        return self.graph.texts(PHONE)[before:]

    async def record(self) -> Any:
        return await self.manager.get(self.adapter.key_of(PHONE))


@pytest.fixture
async def trial() -> AsyncIterator[Trial]:
    graph = await FakeGraph().start()
    clock = FakeClock(T0)
    manager = seed.build_manager(MemoryStore(), clock=clock, policy=seed.policy_from_env({}))
    sender = WhatsAppSender(ACCESS_TOKEN, PHONE_NUMBER_ID, base_url=graph.base_url)
    adapter, lifecycle = seed.build_whatsapp(manager, sender, app_secret=APP_SECRET,
                                             verify_token=VERIFY_TOKEN)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=adapter.asgi_app()),
                             base_url="http://testserver")
    yield Trial(graph, clock, adapter, lifecycle, http)
    await http.aclose()
    await sender.aclose()
    await graph.stop()


async def test_trial_is_delivered_and_the_session_closes(trial: Trial) -> None:
    [welcome] = await trial.say("hola")
    assert welcome.startswith("¡Hola, Ana!")
    offer = trial.graph.sent(PHONE)[-1]["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in offer] == ["Sí, quiero", "No, gracias"]
    assert await trial.press("si", "Sí, quiero") == ["¡Genial! ¿Cuál es tu nombre?"]
    assert await trial.say("Ana") == [
        "Gracias, Ana. ¿A qué correo electrónico enviamos el acceso?"]
    assert await trial.say("ana@@mal") == [seed.TEXTS["bad_email"]]
    credentials, closed = await trial.say("Ana@Ejemplo.com")
    user, password = seed.credentials_for(PHONE, "Ana@ejemplo.com")
    assert f"Usuario: {user}" in credentials and f"Contraseña: {password}" in credentials
    assert closed == seed.TEXTS["closed_completed"]
    record = await trial.record()
    assert record.status is Status.CLOSED and record.close_reason == "completed"
    # the next message starts a new session
    [again] = await trial.say("hola de nuevo")
    assert again.startswith("¡Hola")
    assert (await trial.record()).id != record.id


async def test_goodbye_closes_with_a_farewell(trial: Trial) -> None:
    await trial.say("hola")
    assert await trial.say("gracias, hasta luego") == [
        seed.TEXTS["farewell"], seed.TEXTS["closed_goodbye"]]
    record = await trial.record()
    assert record.status is Status.CLOSED and record.close_reason == "goodbye"
    # nothing left to time out
    trial.clock.advance(600)
    assert (await trial.lifecycle.run_once()).expired == 0
    assert trial.graph.texts(PHONE)[-1] == seed.TEXTS["closed_goodbye"]


async def test_cancel_closes_the_request(trial: Trial) -> None:
    await trial.say("hola")
    await trial.say("sí")
    assert await trial.say("cancelar") == [seed.TEXTS["cancelled"], seed.TEXTS["closed_cancelled"]]
    assert (await trial.record()).close_reason == "cancelled"


async def test_three_minutes_of_silence_close_with_a_spanish_notice(trial: Trial) -> None:
    await trial.say("hola")
    trial.clock.advance(179)
    assert (await trial.lifecycle.run_once()).expired == 0
    trial.clock.advance(1)
    report = await trial.lifecycle.run_once()
    assert report.expired == 1
    notice = trial.graph.texts(PHONE)[-1]
    assert notice == ("⏰ Tu sesión se cerró por inactividad (3 minutos sin mensajes). "
                      "Si necesitas algo más, escríbenos de nuevo.")
    record = await trial.record()
    assert record.status is Status.EXPIRED and record.close_reason == "timeout"
    # once only
    trial.clock.advance(600)
    await trial.lifecycle.run_once()
    assert trial.graph.texts(PHONE).count(notice) == 1


async def test_each_message_resets_the_timeout(trial: Trial) -> None:
    await trial.say("hola")
    for _ in range(3):
        trial.clock.advance(150)
        assert (await trial.lifecycle.run_once()).expired == 0
        await trial.say("sí")
    assert (await trial.record()).status is Status.ACTIVE
    trial.clock.advance(180)
    assert (await trial.lifecycle.run_once()).expired == 1


def test_timeout_comes_from_the_environment() -> None:
    assert seed.policy_from_env({}).idle_timeout == 180
    assert seed.policy_from_env({"SESSION_TIMEOUT_MINUTES": "5"}).idle_timeout == 300
