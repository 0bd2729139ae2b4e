"""The v1 API and the chat, on every available store (memory, SQLite, Redis, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

from server_helpers import Service, service

from chatstate.flows import Step, Wizard
from chatstate.model import Outgoing, Summary


def order_flow() -> Wizard:
    return Wizard("order", [
        Step("product", "Which product?", choices=["Apple", "Banana"]),
        Step("quantity", "How many?"),
        Step("address", "Where to?"),
    ])


async def test_chat_anonymous_session_comes_back_by_cookie(svc: Service) -> None:
    first = await svc.client.post("/v1/chat", json={"message": "hello"})
    assert first.status_code == 200, first.text
    body = first.json()
    user_id = body["user_id"]
    assert user_id.startswith("anon-")
    assert first.cookies.get("chatstate_uid") == user_id
    assert "name" in body["reply"]
    assert body["session"]["message_count"] == 1
    assert body["session"]["remaining_seconds"] == 1800.0

    svc.clock.advance(60)
    second = await svc.client.post("/v1/chat", json={"message": "Ada"})  # cookie jar sends it
    assert second.json()["user_id"] == user_id
    assert second.json()["session"]["session_id"] == body["session"]["session_id"]
    assert second.json()["session"]["message_count"] == 2
    assert "Ada" in second.json()["reply"]


async def test_list_filters_and_cursor_pagination(svc: Service) -> None:
    for i in range(5):
        svc.clock.advance(1)
        assert (await svc.chat("hi", user_id=f"user{i}")).status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "status": "active", "platform": "web"}
        if cursor:
            params["cursor"] = cursor
        page = (await svc.client.get("/v1/sessions", params=params)).json()
        seen += [item["key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"web:user:user{i}" for i in reversed(range(5))]  # newest activity first
    assert (await svc.client.get("/v1/sessions", params={"status": "closed"})).json()["items"] == []
    prefix = (await svc.client.get("/v1/sessions", params={"q": "web:user:user3"})).json()
    assert [i["key"] for i in prefix["items"]] == ["web:user:user3"]
    since = (await svc.client.get(
        "/v1/sessions", params={"updated_since": svc.clock.now() - 1.5}
    )).json()
    assert {i["key"] for i in since["items"]} == {"web:user:user3", "web:user:user4"}


async def test_get_patch_with_if_match_close_and_delete(svc: Service) -> None:
    await svc.chat("hello")
    by_key = await svc.client.get("/v1/sessions/web:user:u1")
    assert by_key.status_code == 200
    record = by_key.json()
    assert by_key.headers["etag"] == f'"{record["version"]}"'
    by_id = (await svc.client.get(f"/v1/sessions/{record['id']}")).json()
    assert by_id["key"] == "web:user:u1" and by_id["current"] is True

    stale = await svc.client.patch(
        f"/v1/sessions/{record['id']}", json={"data": {"vip": True}},
        headers={"If-Match": f'"{record["version"] + 5}"'},
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    assert "reload" in stale.json()["detail"]

    patched = await svc.client.patch(
        f"/v1/sessions/{record['id']}",
        json={"data": {"vip": True, "name": None}, "state": "vip", "labels": {"user_type": "gold"}},
        headers={"If-Match": by_key.headers["etag"]},
    )
    assert patched.status_code == 200, patched.text
    after = patched.json()
    assert after["data"]["vip"] is True and "name" not in after["data"]
    assert after["state"] == "vip" and after["labels"] == {"user_type": "gold"}
    assert after["version"] == record["version"] + 1

    closed = await svc.client.post(f"/v1/sessions/{record['id']}/close", json={"reason": "spam"})
    assert closed.json()["status"] == "closed" and closed.json()["close_reason"] == "spam"
    again = await svc.client.patch(f"/v1/sessions/{record['id']}", json={"state": "x"})
    assert again.status_code == 409

    # the user's next message starts a new session; the old one is still readable by id
    await svc.chat("back again")
    old = (await svc.client.get(f"/v1/sessions/{record['id']}")).json()
    assert old["status"] == "closed" and old["current"] is False

    assert (await svc.client.delete(f"/v1/sessions/{record['id']}")).status_code == 204
    assert (await svc.client.get(f"/v1/sessions/{record['id']}")).status_code == 404
    assert (await svc.client.get("/v1/sessions/web:user:u1")).status_code == 200
    assert (await svc.client.get("/v1/sessions/web:user:nobody")).status_code == 404
    assert (await svc.client.get("/v1/sessions/not:a")).status_code == 400


async def test_messages_context_clear_and_export(svc: Service) -> None:
    created = await svc.client.post(
        "/v1/sessions", json={"key": "api:user:7", "state": "start", "data": {"plan": "pro"}}
    )
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert (await svc.client.post("/v1/sessions", json={"key": "api:user:7"})).status_code == 409
    for i in range(7):
        role = "user" if i % 2 == 0 else "assistant"
        r = await svc.client.post(
            f"/v1/sessions/{sid}/messages", json={"role": role, "content": f"message {i}"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["seq"] == i + 1 and r.json()["tokens"] > 0

    page = (await svc.client.get(f"/v1/sessions/{sid}/messages", params={"limit": 3})).json()
    assert [m["seq"] for m in page["items"]] == [5, 6, 7]
    older = (await svc.client.get(
        f"/v1/sessions/{sid}/messages", params={"limit": 3, "before_seq": page["next_before_seq"]}
    )).json()
    assert [m["seq"] for m in older["items"]] == [2, 3, 4]

    context = (await svc.client.post(
        f"/v1/sessions/{sid}/context", json={"max_tokens": 40, "system": "be brief"}
    )).json()
    assert context["messages"][0] == {"role": "system", "content": "be brief"}
    assert 0 < context["tokens"] <= 40
    assert len(context["messages"]) < 8  # the budget left older messages out

    # a summary made by the memory layer survives clearing the messages
    async with svc.manager.session("api:user:7", message=False) as s:
        s.add_summary(Summary(start_seq=1, end_seq=4, content="they counted", tokens=3))
    cleared = (await svc.client.post(f"/v1/sessions/{sid}/clear-messages")).json()
    assert cleared == {"dropped_through_seq": 7, "summaries_kept": 1}
    assert (await svc.client.get(f"/v1/sessions/{sid}/messages")).json()["items"] == []

    exported = await svc.client.get(f"/v1/sessions/{sid}/export")
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert lines[0]["type"] == "session" and lines[0]["record"]["data"]["plan"] == "pro"
    assert [line["type"] for line in lines].count("summary") == 1


async def test_move_to_flow_step_and_funnel(store) -> None:  # type: ignore[no-untyped-def]
    async with service(store, flows=[order_flow()]) as svc:
        await svc.chat("hi")
        bad = await svc.client.post(
            "/v1/sessions/web:user:u1/move", json={"flow": "order", "step": "nope"}
        )
        assert bad.status_code == 400 and "product, quantity, address" in bad.json()["detail"]
        unknown = await svc.client.post("/v1/sessions/web:user:u1/move", json={"flow": "x"})
        assert unknown.status_code == 400 and "order" in unknown.json()["detail"]

        moved = await svc.client.post("/v1/sessions/web:user:u1/move", json={"flow": "order"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["flow"]["step"] == "product" and moved.json()["state"] == "product"
        moved = await svc.client.post(
            "/v1/sessions/web:user:u1/move", json={"flow": "order", "step": "quantity"}
        )
        assert moved.json()["flow"]["stack"] == ["product"]
        listed = (await svc.client.get(
            "/v1/sessions", params={"flow": "order", "step": "quantity"}
        )).json()
        assert [i["key"] for i in listed["items"]] == ["web:user:u1"]
        await svc.client.post("/v1/sessions/web:user:u1/close", json={"reason": "gave_up"})

        analytics = (await svc.client.get("/v1/analytics")).json()
        funnel = {(r["flow"], r["step"]): r for r in analytics["funnel"]}
        assert funnel["order", "product"]["entered"] == 1
        assert funnel["order", "product"]["completed"] == 1
        assert funnel["order", "quantity"]["entered"] == 1
        assert funnel["order", "quantity"]["abandoned"] == 1
        assert analytics["close_reasons"] == {"gave_up": 1}
        flows = (await svc.client.get("/v1/flows")).json()["items"]
        assert flows[0]["steps"] == ["product", "quantity", "address"]
        assert flows[0]["diagram"].startswith("stateDiagram-v2")


async def test_analytics_metrics_and_health(svc: Service) -> None:
    await svc.chat("one", user_id="a")
    await svc.chat("two", user_id="a")
    svc.clock.advance(120)
    await svc.chat("three", user_id="b")
    svc.clock.advance(300)  # a new bucket of the series (the start-up sample saw 0)
    await svc.runtime.sampler.sample()
    analytics = (await svc.client.get("/v1/analytics")).json()
    assert analytics["totals"]["sessions"] == 2 and analytics["totals"]["active"] == 2
    assert analytics["messages"] == 3
    assert analytics["by_platform"] == {"web": 2}
    assert analytics["active_series"][-1]["active"] == 2

    metrics = await svc.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'chatstate_sessions{status="active"} 2.0' in text
    assert "chatstate_session_updates_total" in text
    assert 'chatstate_store_seconds_count{operation="commit"}' in text
    assert "chatstate_commit_conflicts_total" in text and "chatstate_lease_waits_total" in text
    assert "chatstate_lifecycle_lag_seconds" in text

    assert (await svc.client.get("/healthz")).json()["status"] == "ok"
    assert (await svc.client.get("/readyz")).json()["status"] == "ok"


async def test_session_bot_labels_reach_seed_003_analytics(store) -> None:  # type: ignore[no-untyped-def]
    async def bot(session, incoming):  # type: ignore[no-untyped-def]
        session.set_label("user_type", "phase1")
        session.set_label("intent", "selling" if "sell" in (incoming.text or "") else "info")
        session.data.setdefault("preferences", {})["plastic"] = 1
        return [Outgoing(text=f"you said {incoming.text}")]

    async with service(store, bot=bot) as svc:
        r = await svc.client.post(
            "/chatbot/chatbotquery", json={"message": "I want to sell plastic", "userId": "user123"}
        )
        assert r.json() == {
            "success": True, "message": "you said I want to sell plastic",
            "data": "you said I want to sell plastic",
            "sessionInfo": {"userId": "user123", "messageCount": 1, "remainingTime": 30},
        }
        await svc.client.post("/chatbot/chatbotquery", json={"message": "hello", "userId": "u2"})
        # the bot's history: user message and reply, committed with the session
        messages = (await svc.client.get("/v1/sessions/web:user:user123/messages")).json()
        assert [m["role"] for m in messages["items"]] == ["user", "assistant"]

        info = (await svc.client.get("/chatbot/session/user123")).json()
        assert info["sessionInfo"] == {"userId": "user123", "messageCount": 1, "remainingTime": 30}
        assert info["session"]["userType"] == "phase1"
        assert info["session"]["currentIntent"] == "selling"
        assert info["session"]["preferences"] == {"plastic": 1}

        svc.clock.advance(180)
        analytics = (await svc.client.get("/chatbot/sessions/analytics")).json()
        assert set(analytics) == {
            "totalActiveSessions", "totalConversationHistories", "sessionDetails", "summary"
        }
        assert analytics["totalActiveSessions"] == 2
        detail = {d["userId"]: d for d in analytics["sessionDetails"]}["user123"]
        assert set(detail) == {
            "userId", "sessionAge", "messageCount", "userType", "currentIntent",
            "remainingTime", "preferences",
        }
        assert detail["sessionAge"] == 3 and detail["remainingTime"] == 27
        summary = analytics["summary"]
        assert summary["totalMessages"] == 2
        assert summary["userTypes"] == {"phase1": 2}
        assert summary["topIntents"] == {"selling": 1, "info": 1}

        cleared = (await svc.client.delete("/chatbot/session/user123")).json()
        assert cleared["success"] is True
        missing = await svc.client.get("/chatbot/session/user123")
        assert missing.status_code == 404 and missing.json()["success"] is False


async def test_seed_001_api(svc: Service) -> None:
    created = (await svc.client.post("/api/sessions", json={
        "action": "create", "conversation_id": 123, "interface_type": "telegram",
        "external_user_id": "user123", "external_chat_id": "chat456", "token_limit": 8000,
        "expires_in_ms": 3600000,
    })).json()
    assert created["success"] is True
    session = created["session"]
    assert session["conversation_id"] == 123 and session["interface_type"] == "telegram"
    assert session["token_limit"] == 8000 and session["status"] == "active"
    sid = session["id"]
    again = (await svc.client.post(
        "/api/sessions", json={"action": "create", "conversation_id": 123}
    )).json()
    assert again["session"]["id"] == sid  # findOrCreate

    for role, content in (("user", "What's the weather?"), ("assistant", "It's sunny today!")):
        added = (await svc.client.post("/api/sessions", json={
            "action": "addMessage", "sessionId": sid, "role": role, "content": content,
        })).json()
        assert added["success"] is True and added["message"]["content"] == content
    state = (await svc.client.post("/api/sessions", json={
        "action": "updateState", "sessionId": sid, "state": {"language": "en"},
    })).json()
    assert state["session"]["state"] == {"language": "en"}

    context = (await svc.client.post("/api/sessions", json={
        "action": "buildContext", "sessionId": sid, "maxMessages": 20,
    })).json()["context"]
    contents = [m["content"] for m in context["messages"]]
    assert contents == ["What's the weather?", "It's sunny today!"]

    one = (await svc.client.get("/api/sessions", params={"id": sid})).json()
    assert [m["role"] for m in one["session"]["messages"]] == ["user", "assistant"]
    by_conv = (await svc.client.get("/api/sessions", params={"conversationId": "123"})).json()
    assert by_conv["session"]["id"] == sid
    listed = (await svc.client.get("/api/sessions", params={"limit": 50})).json()
    assert listed["count"] == 1 and listed["sessions"][0]["id"] == sid
    stats = (await svc.client.get("/api/sessions", params={"stats": "true"})).json()["stats"]
    assert stats["total_sessions"] == 1 and stats["active_sessions"] == 1
    assert stats["sessions_by_interface"] == {"telegram": 1}

    assert (await svc.client.post(
        "/api/sessions", json={"action": "clearMessages", "sessionId": sid}
    )).json() == {"success": True}
    assert (await svc.client.get("/api/sessions", params={"id": sid})).json()["session"][
        "messages"] == []
    cleanup = (await svc.client.post("/api/sessions", json={"action": "cleanup"})).json()
    assert cleanup["success"] is True
    deactivated = (await svc.client.post(
        "/api/sessions", json={"action": "deactivate", "sessionId": sid}
    )).json()
    assert deactivated["session"]["status"] == "inactive"
    missing = await svc.client.post("/api/sessions", json={"action": "addMessage"})
    assert missing.status_code == 400 and missing.json()["success"] is False
    assert (await svc.client.delete("/api/sessions", params={"id": sid})).json()["success"]
    gone = await svc.client.get("/api/sessions", params={"id": sid})
    assert gone.status_code == 404 and gone.json()["error"]


async def test_operator_changes_never_lose_user_updates(svc: Service) -> None:
    """Chats and operator PATCHes on one session at once: every change is kept."""
    await svc.chat("hello", user_id="race")

    async def operator(i: int) -> None:
        r = await svc.client.patch(
            "/v1/sessions/web:user:race", json={"data": {f"op{i}": i}}
        )
        assert r.status_code == 200, r.text

    await asyncio.gather(
        *(svc.chat(f"msg {i}", user_id="race") for i in range(10)),
        *(operator(i) for i in range(10)),
    )
    record = (await svc.client.get("/v1/sessions/web:user:race")).json()
    assert record["counters"]["messages"] == 11
    assert all(record["data"][f"op{i}"] == i for i in range(10))
    assert record["counters"]["last_seq"] == 22  # each message and its reply in the history
