"""A local stand-in for Meta's Graph API (WhatsApp Cloud API) and builders of webhook bodies.

`FakeGraph` serves ``POST /<version>/<phone_number_id>/messages`` on 127.0.0.1, answers like the
Cloud API (``{"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id":
"wamid..."}]}``), checks the bearer token, and records every call so a test asserts on what the
bot sent. The builders produce webhook bodies in the documented shape
(``object: whatsapp_business_account`` / ``entry[].changes[].value.messages[]``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VERSION = "v21.0"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
ACCESS_TOKEN = "EAAtest-access-token"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"


@dataclass
class FakeGraph:
    calls: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    fail_next: int = 0  # answer this many calls with a Graph API error
    _runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{VERSION}"

    async def start(self) -> FakeGraph:
        app = web.Application()
        app.router.add_post("/{version}/{phone_id}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
            return web.json_response({"error": {
                "message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190,
            }}, status=401)
        if request.match_info["phone_id"] != PHONE_NUMBER_ID:
            return web.json_response({"error": {"message": "Unsupported post request",
                                                "code": 100}}, status=400)
        body = await request.json()
        self.calls.append(body)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {
                "message": "(#131047) Re-engagement message", "code": 131047,
            }}, status=400)
        if "status" in body:  # mark as read
            return web.json_response({"success": True})
        wamid = f"wamid.HBgL{next(self._ids):08d}"
        return web.json_response({
            "messaging_product": "whatsapp",
            "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
            "messages": [{"id": wamid}],
        })

    # -- what the bot sent ------------------------------------------------------------------

    def sent(self, to: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls if "status" not in c and (to is None or c["to"] == to)]

    def texts(self, to: str | None = None) -> list[str]:
        out = []
        for call in self.sent(to):
            if call["type"] == "text":
                out.append(call["text"]["body"])
            elif call["type"] == "interactive":
                out.append(call["interactive"]["body"]["text"])
        return out


# -- webhook bodies -----------------------------------------------------------------------------

_wamids = itertools.count(1)


def new_wamid() -> str:
    return f"wamid.HBgLMTU1NTAxMjM0NTY3FQIAEhgg{next(_wamids):010d}"


def envelope(messages: list[dict[str, Any]], contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": DISPLAY_NUMBER,
                                 "phone_number_id": PHONE_NUMBER_ID},
                    "contacts": contacts,
                    "messages": messages,
                },
                "field": "messages",
            }],
        }],
    }


def _contact(phone: str, name: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": phone}


def _message(phone: str, kind: str, body: dict[str, Any], wamid: str | None) -> dict[str, Any]:
    return {"from": phone, "id": wamid or new_wamid(), "timestamp": str(int(time.time())),
            "type": kind, kind: body}


def text_webhook(phone: str, text: str, *, wamid: str | None = None, name: str = "Ana"
                 ) -> dict[str, Any]:
    return envelope([_message(phone, "text", {"body": text}, wamid)], [_contact(phone, name)])


def button_reply_webhook(phone: str, reply_id: str, title: str, *, wamid: str | None = None,
                         context_id: str = "wamid.prev") -> dict[str, Any]:
    message = _message(phone, "interactive", {
        "type": "button_reply", "button_reply": {"id": reply_id, "title": title}}, wamid)
    message["context"] = {"from": DISPLAY_NUMBER, "id": context_id}
    return envelope([message], [_contact(phone, "Ana")])


def list_reply_webhook(phone: str, reply_id: str, title: str) -> dict[str, Any]:
    message = _message(phone, "interactive", {
        "type": "list_reply", "list_reply": {"id": reply_id, "title": title}}, None)
    return envelope([message], [_contact(phone, "Ana")])


def image_webhook(phone: str, caption: str | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"id": "1479537139650973", "mime_type": "image/jpeg",
                             "sha256": "HgdNOOyJ8UIBbU0rDfEMtkAcoSSMdZSYnIkBMhRqmvA="}
    if caption:
        image["caption"] = caption
    return envelope([_message(phone, "image", image, None)], [_contact(phone, "Ana")])


def status_webhook(phone: str) -> dict[str, Any]:
    """A delivery status notification (no user message)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": DISPLAY_NUMBER,
                         "phone_number_id": PHONE_NUMBER_ID},
            "statuses": [{"id": new_wamid(), "status": "delivered",
                          "timestamp": str(int(time.time())), "recipient_id": phone}],
        }}]}],
    }


def encode(payload: dict[str, Any]) -> bytes:
    # Meta sends compact JSON; the signature covers these exact bytes.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
