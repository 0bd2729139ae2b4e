"""WhatsApp Cloud API adapter: signed webhooks in Meta's shape posted to the real Starlette
receiver, replies sent to a local fake Graph API, sessions per phone number, redelivery handled
once, bad signatures refused with nothing stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from examples import flows_order
from fake_whatsapp import (
    ACCESS_TOKEN,
    APP_SECRET,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    FakeGraph,
    button_reply_webhook,
    encode,
    image_webhook,
    list_reply_webhook,
    status_webhook,
    text_webhook,
)

from chatstate.adapters.whatsapp import (
    SEEN_FIELD,
    WhatsAppAdapter,
    WhatsAppSender,
    render,
    sign,
)
from chatstate.engine import SessionManager
from chatstate.errors import PlatformAPIError
from chatstate.model import Button, Incoming, Outgoing
from chatstate.session import Session
from chatstate.stores.memory import MemoryStore

PHONE = "5491122334455"


class Rig:
    def __init__(self, graph: FakeGraph, adapter: WhatsAppAdapter, http: httpx.AsyncClient,
                 manager: SessionManager) -> None:
        self.graph = graph
        self.adapter = adapter
        self.http = http
        self.manager = manager

    async def post(self, payload: dict[str, Any], *, signature: str | None = "good"
                   ) -> httpx.Response:
        body = encode(payload)
        headers = {"Content-Type": "application/json"}
        if signature == "good":
            headers["X-Hub-Signature-256"] = sign(APP_SECRET, body)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return await self.http.post("/webhook", content=body, headers=headers)


async def echo(session: Session, incoming: Incoming) -> Any:
    count = session.data.get("count", 0) + 1
    session.data["count"] = count
    if incoming.payload:
        return f"pressed {incoming.payload}"
    if incoming.attachments:
        return f"got a {incoming.attachments[0].kind} ({incoming.text or 'no caption'})"
    return f"#{count}: {incoming.text}"


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = await FakeGraph().start()
    yield fake
    await fake.stop()


async def make_rig(graph: FakeGraph, handler: Any = echo) -> Rig:
    manager = SessionManager(MemoryStore())
    sender = WhatsAppSender(ACCESS_TOKEN, PHONE_NUMBER_ID, base_url=graph.base_url)
    adapter = WhatsAppAdapter(manager, handler, sender=sender, app_secret=APP_SECRET,
                              verify_token=VERIFY_TOKEN)
    transport = httpx.ASGITransport(app=adapter.asgi_app("/webhook"))
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    return Rig(graph, adapter, http, manager)


@pytest.fixture
async def rig(graph: FakeGraph) -> AsyncIterator[Rig]:
    r = await make_rig(graph)
    yield r
    await r.http.aclose()
    await r.adapter.sender.aclose()
    await r.manager.aclose()


async def test_verification_handshake(rig: Rig) -> None:
    ok = await rig.http.get("/webhook", params={
        "hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444",
    })
    assert ok.status_code == 200 and ok.text == "1158201444"
    wrong = await rig.http.get("/webhook", params={
        "hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158201444",
    })
    assert wrong.status_code == 403 and "1158201444" not in wrong.text


async def test_text_message_is_answered_in_the_phone_numbers_session(rig: Rig) -> None:
    response = await rig.post(text_webhook(PHONE, "hola"))
    assert response.status_code == 200
    await rig.post(text_webhook(PHONE, "otra vez"))
    assert rig.graph.texts(PHONE) == ["#1: hola", "#2: otra vez"]
    call = rig.graph.sent(PHONE)[0]
    assert call["messaging_product"] == "whatsapp" and call["type"] == "text"
    record = await rig.manager.get(rig.adapter.key_of(PHONE))
    assert record is not None and record.key == f"whatsapp:user:{PHONE}"
    assert record.data["count"] == 2 and record.counters.messages == 2
    # a delivery status is not a message
    await rig.post(status_webhook(PHONE))
    assert len(rig.graph.sent()) == 2


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "md5=abc", "sha256="])
async def test_bad_or_missing_signature_is_401_and_nothing_stored(
    rig: Rig, signature: str | None
) -> None:
    response = await rig.post(text_webhook(PHONE, "hola"), signature=signature)
    assert response.status_code == 401
    assert await rig.manager.get(rig.adapter.key_of(PHONE)) is None
    assert await rig.manager.store.count() is not None
    assert (await rig.manager.store.count()).total == 0
    assert rig.graph.calls == []


async def test_signature_of_other_bytes_is_refused(rig: Rig) -> None:
    payload = text_webhook(PHONE, "hola")
    signed = sign(APP_SECRET, encode(payload))
    tampered = text_webhook(PHONE, "hola!", wamid=payload["entry"][0]["changes"][0]["value"][
        "messages"][0]["id"])
    response = await rig.post(tampered, signature=signed)
    assert response.status_code == 401
    assert rig.graph.calls == []


async def test_redelivered_message_is_handled_once(rig: Rig) -> None:
    payload = text_webhook(PHONE, "hola", wamid="wamid.SAME")
    for _ in range(3):
        assert (await rig.post(payload)).status_code == 200
    assert rig.graph.texts(PHONE) == ["#1: hola"]
    record = await rig.manager.get(rig.adapter.key_of(PHONE))
    assert record is not None and record.counters.messages == 1
    assert record.data[SEEN_FIELD] == ["wamid.SAME"]


async def test_redelivery_is_recognised_by_another_process(graph: FakeGraph) -> None:
    """The ids live in the store: a second adapter (another instance) on the same store skips
    it, even after the first delivery closed the session."""
    store = MemoryStore()

    async def closing(session: Session, incoming: Incoming) -> str:
        session.close("goodbye")
        return "adiós"

    adapters = []
    for _ in range(2):
        manager = SessionManager(store)
        sender = WhatsAppSender(ACCESS_TOKEN, PHONE_NUMBER_ID, base_url=graph.base_url)
        adapters.append(WhatsAppAdapter(manager, closing, sender=sender, app_secret=APP_SECRET,
                                        verify_token=VERIFY_TOKEN))
    payload = text_webhook(PHONE, "chau", wamid="wamid.BYE")
    assert [r is not None for r in await adapters[0].handle_payload(payload)] == [True]
    assert await adapters[1].handle_payload(payload) == [None]
    assert graph.texts(PHONE) == ["adiós"]
    # a new message opens a new session that still knows the handled ids
    await adapters[1].handle_payload(text_webhook(PHONE, "hola", wamid="wamid.NEW"))
    record = await adapters[1].manager.get(adapters[1].key_of(PHONE))
    assert record is not None and record.data[SEEN_FIELD] == ["wamid.BYE", "wamid.NEW"]
    for adapter in adapters:
        await adapter.sender.aclose()


async def test_concurrent_redeliveries_are_handled_once(rig: Rig) -> None:
    payload = text_webhook(PHONE, "hola", wamid="wamid.RACE")
    responses = await asyncio.gather(*(rig.post(payload) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses)
    assert rig.graph.texts(PHONE) == ["#1: hola"]
    record = await rig.manager.get(rig.adapter.key_of(PHONE))
    assert record is not None and record.counters.messages == 1


async def test_seen_ids_are_bounded(graph: FakeGraph) -> None:
    r = await make_rig(graph)
    r.adapter.remember_ids = 5
    for i in range(8):
        await r.post(text_webhook(PHONE, f"m{i}", wamid=f"wamid.{i}"))
    record = await r.manager.get(r.adapter.key_of(PHONE))
    assert record is not None
    assert record.data[SEEN_FIELD] == [f"wamid.{i}" for i in range(3, 8)]
    await r.http.aclose()


async def test_flow_buttons_lists_and_their_replies(graph: FakeGraph) -> None:
    r = await make_rig(graph, flows_order.build_runner())
    await r.post(text_webhook(PHONE, "/order"))
    first = graph.sent(PHONE)[-1]
    assert first["type"] == "interactive"
    interactive = first["interactive"]
    assert interactive["type"] == "button"
    assert interactive["body"]["text"] == "What product do you want to order?"
    buttons = interactive["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Apple", "Banana", "Orange"]
    banana = buttons[1]["reply"]
    await r.post(button_reply_webhook(PHONE, banana["id"], banana["title"]))
    assert graph.texts(PHONE)[-1] == "How many Banana do you want?"
    record = await r.manager.get(r.adapter.key_of(PHONE))
    assert record is not None and record.flow is not None
    assert record.flow.data["product"] == "Banana"
    await r.http.aclose()


async def test_list_reply_media_and_keyboard_text(rig: Rig) -> None:
    await rig.post(list_reply_webhook(PHONE, "opt-7", "Seven"))
    await rig.post(image_webhook(PHONE, caption="mi foto"))
    assert rig.graph.texts(PHONE) == ["pressed opt-7", "got a photo (mi foto)"]


def test_rendering_buttons_lists_links_keyboards_and_long_text() -> None:
    three = Outgoing(text="pick", buttons=[[Button(text="A", payload="a"),
                                            Button(text="B", payload="b")],
                                           [Button(text="C", payload="c")]])
    [body] = render("1", three)
    assert body["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in body["interactive"]["action"]["buttons"]] == ["a", "b", "c"]
    five = Outgoing(text="pick", buttons=[[Button(text=f"Option {i}", payload=str(i))]
                                          for i in range(5)],
                    metadata={"list_button": "Elegir"})
    [body] = render("1", five)
    action = body["interactive"]["action"]
    assert body["interactive"]["type"] == "list" and action["button"] == "Elegir"
    assert [row["id"] for row in action["sections"][0]["rows"]] == ["0", "1", "2", "3", "4"]
    many = Outgoing(text="pick", buttons=[[Button(text=f"N{i}", payload=str(i))]
                                          for i in range(12)])
    [body] = render("1", many)
    assert body["type"] == "text" and "\n12. N11" in body["text"]["body"]
    link = Outgoing(text="docs", buttons=[[Button(text="Open", url="https://example.org")]])
    [body] = render("1", link)
    assert body["interactive"]["type"] == "cta_url"
    assert body["interactive"]["action"]["parameters"]["url"] == "https://example.org"
    keyboard = Outgoing(text="yes?", keyboard=[["Sí", "No"]])
    [body] = render("1", keyboard)
    assert [b["reply"]["id"] for b in body["interactive"]["action"]["buttons"]] == [
        "kb:Sí", "kb:No"]
    long = render("1", Outgoing(text="palabra " * 1200))
    assert len(long) == 3 and all(len(b["text"]["body"]) <= 4096 for b in long)


async def test_keyboard_press_comes_back_as_text(rig: Rig) -> None:
    await rig.post(button_reply_webhook(PHONE, "kb:Sí", "Sí"))
    assert rig.graph.texts(PHONE) == ["#1: Sí"]


async def test_sender_raises_a_typed_error_and_notifier_sends(graph: FakeGraph) -> None:
    bad = WhatsAppSender("wrong-token", PHONE_NUMBER_ID, base_url=graph.base_url)
    with pytest.raises(PlatformAPIError) as info:
        await bad.send_text(PHONE, "hola")
    assert info.value.status == 401 and "access token" in info.value.detail
    await bad.aclose()
    good = WhatsAppSender(ACCESS_TOKEN, PHONE_NUMBER_ID, base_url=graph.base_url)
    ids = await good.send_text(PHONE, "hola")
    assert ids and ids[0].startswith("wamid.")
    await good.aclose()


async def test_a_refused_reply_does_not_lose_the_update(rig: Rig) -> None:
    rig.graph.fail_next = 1
    assert (await rig.post(text_webhook(PHONE, "uno"))).status_code == 200
    await rig.post(text_webhook(PHONE, "dos"))
    record = await rig.manager.get(rig.adapter.key_of(PHONE))
    assert record is not None and record.data["count"] == 2
    assert rig.graph.texts(PHONE)[-1] == "#2: dos"


async def test_invalid_json_with_a_good_signature_is_400(rig: Rig) -> None:
    body = b"not json"
    response = await rig.http.post("/webhook", content=body, headers={
        "X-Hub-Signature-256": sign(APP_SECRET, body)})
    assert response.status_code == 400
