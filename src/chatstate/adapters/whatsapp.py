"""WhatsApp Cloud API: a webhook receiver, a Graph API sender, sessions per phone number.

    from chatstate import SessionManager
    from chatstate.adapters.whatsapp import WhatsAppAdapter, WhatsAppSender

    manager = SessionManager("redis://localhost:6379/0")
    sender = WhatsAppSender(ACCESS_TOKEN, PHONE_NUMBER_ID)
    adapter = WhatsAppAdapter(manager, bot, sender=sender, app_secret=APP_SECRET,
                              verify_token=VERIFY_TOKEN)
    app = adapter.asgi_app("/webhook")        # uvicorn module:app, or mount adapter.routes()

The receiver answers Meta's verification handshake (``GET ?hub.mode=subscribe&
hub.verify_token=...&hub.challenge=...``), checks ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw
body with the app secret; a bad or missing signature is a 401 and nothing is read or stored),
turns each message of the webhook into an `Incoming` (text, reply-button and list replies,
template quick replies, media and locations kept as attachments), runs the bot in the session of
the sender's phone number and sends the replies through the Graph API.

Redelivery. Meta delivers at least once: a webhook that timed out or failed is sent again, with
the same message ids. The ids handled for a phone number are kept (bounded) in its session record
and carried into the next session of that number, so a redelivered message is answered once,
even when the first delivery closed the conversation.

Rendering. Text over 4096 characters is split; up to 3 buttons become reply buttons, up to 10 a
list (``Outgoing.metadata["list_button"]`` names its menu button), more are numbered in the text;
a single URL button becomes a call-to-action button. Reply-keyboard rows are sent the same way and
their presses come back as typed text.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine import SessionManager
from ..errors import ConfigurationError, PlatformAPIError
from ..model import Attachment, Button, Incoming, Outgoing, SessionKey
from ..session import Session
from .base import (
    BotRuntime,
    BusyPolicy,
    ChatRef,
    HandlerLike,
    KeyChooser,
    LifecycleNotifier,
    NotificationTexts,
    Result,
    RuntimeTexts,
    as_handler,
    scope_key,
    split_text,
)

try:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the WhatsApp adapter needs httpx and starlette: pip install 'chatstate[whatsapp]'"
    ) from exc

log = logging.getLogger("chatstate.adapters.whatsapp")

PLATFORM = "whatsapp"
DEFAULT_GRAPH_URL = "https://graph.facebook.com/v21.0"
SIGNATURE_HEADER = "X-Hub-Signature-256"
SEEN_FIELD = "_whatsapp_seen"  # data field: ids of the messages handled for this number
KEYBOARD_PREFIX = "kb:"  # reply-keyboard presses come back as text, not as a payload

MAX_TEXT = 4096  # text message body
MAX_INTERACTIVE_BODY = 1024
MAX_REPLY_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_LIST_ROWS = 10
MAX_ROW_TITLE = 24
MAX_ROW_DESCRIPTION = 72
MAX_ID = 256


# -- signature and handshake ------------------------------------------------------------------


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for `body`."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(app_secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the HMAC-SHA256 of the raw `body` with the app secret."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(app_secret, body), header.strip())


def verify_handshake(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo when the subscription request carries our verify token."""
    if params.get("hub.mode") != "subscribe":
        return None
    given = params.get("hub.verify_token") or ""
    if not hmac.compare_digest(given.encode(), verify_token.encode()):
        return None
    return params.get("hub.challenge")


# -- webhook -> Incoming ----------------------------------------------------------------------


_MEDIA = ("image", "document", "audio", "video", "sticker")


def incomings_from_webhook(payload: Mapping[str, Any], platform: str = PLATFORM
                           ) -> list[Incoming]:
    """Every user message of a webhook body (``object: whatsapp_business_account``), in order.
    Delivery statuses and other changes are skipped."""
    if payload.get("object") not in (None, "whatsapp_business_account"):
        return []
    out: list[Incoming] = []
    for entry in payload.get("entry") or ():
        for change in entry.get("changes") or ():
            if change.get("field", "messages") != "messages":
                continue
            value = change.get("value") or {}
            names = {
                str(c.get("wa_id")): (c.get("profile") or {}).get("name")
                for c in value.get("contacts") or () if isinstance(c, Mapping)
            }
            for message in value.get("messages") or ():
                incoming = incoming_from_message(message, names, platform)
                if incoming is not None:
                    out.append(incoming)
    return out


def incoming_from_message(
    message: Mapping[str, Any], names: Mapping[str, str | None] | None = None,
    platform: str = PLATFORM,
) -> Incoming | None:
    """One Cloud API message object as an `Incoming` (None when it has no sender or id)."""
    sender = str(message.get("from") or "")
    message_id = message.get("id")
    if not sender or not message_id:
        return None
    kind = message.get("type")
    try:
        timestamp = float(message.get("timestamp") or 0)
    except (TypeError, ValueError):
        timestamp = 0.0
    fields: dict[str, Any] = {
        "platform": platform, "user_id": sender, "chat_id": sender,
        "message_id": str(message_id), "timestamp": timestamp,
        "user_name": (names or {}).get(sender),
    }
    if kind == "text":
        return Incoming.from_text(str((message.get("text") or {}).get("body") or ""), **fields)
    if kind == "interactive":
        inner = message.get("interactive") or {}
        reply = inner.get("button_reply") or inner.get("list_reply") or {}
        reply_id = str(reply.get("id") or "")
        if reply_id.startswith(KEYBOARD_PREFIX):
            return Incoming.from_text(reply_id[len(KEYBOARD_PREFIX):], **fields)
        return Incoming(payload=reply_id or str(reply.get("title") or ""),
                        text=reply.get("title"), **fields)
    if kind == "button":  # quick reply of a template message
        button = message.get("button") or {}
        return Incoming(payload=button.get("payload") or button.get("text"),
                        text=button.get("text"), **fields)
    if kind in _MEDIA:
        media = message.get(kind) or {}
        attachment = Attachment(
            kind="photo" if kind == "image" else kind, file_id=media.get("id"),
            mime_type=media.get("mime_type"), name=media.get("filename"),
        )
        caption = media.get("caption")
        if caption:
            return Incoming.from_text(str(caption), attachments=[attachment], **fields)
        return Incoming(attachments=[attachment], **fields)
    if kind == "location":
        loc = message.get("location") or {}
        name = f"{loc.get('latitude')},{loc.get('longitude')}"
        return Incoming(attachments=[Attachment(kind="location", name=name)], **fields)
    if kind == "contacts":
        contacts = message.get("contacts") or []
        phones = [p.get("phone") for c in contacts for p in c.get("phones") or () if p.get("phone")]
        return Incoming(attachments=[Attachment(kind="contact", name=p) for p in phones],
                        **fields)
    return Incoming(attachments=[Attachment(kind=str(kind or "other"))], **fields)


# -- Outgoing -> Graph API --------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _choices(outgoing: Outgoing) -> tuple[list[tuple[str, str]], list[Button]]:
    """(id, title) pairs for the reply buttons or list rows, and the URL buttons."""
    choices: list[tuple[str, str]] = []
    links: list[Button] = []
    for row in outgoing.buttons:
        for button in row:
            if button.url:
                links.append(button)
            else:
                choices.append(((button.payload or button.text)[:MAX_ID], button.text))
    for krow in outgoing.keyboard:
        for label in krow:
            choices.append(((KEYBOARD_PREFIX + label)[:MAX_ID], label))
    return choices, links


def render(to: str, outgoing: Outgoing) -> list[dict[str, Any]]:
    """The Graph API message bodies for one reply (several when the text is long)."""
    base = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
    choices, links = _choices(outgoing)
    text = outgoing.text or ""
    if links and (choices or len(links) > 1):
        text += "".join(f"\n{b.text}: {b.url}" for b in links)  # only one CTA button exists
        links = []
    interactive: dict[str, Any] | None = None
    if links:
        link = links[0]
        interactive = {"type": "cta_url", "action": {"name": "cta_url", "parameters": {
            "display_text": _cut(link.text, MAX_BUTTON_TITLE), "url": link.url}}}
    elif choices and len(choices) <= MAX_REPLY_BUTTONS and all(
        len(title) <= MAX_BUTTON_TITLE for _, title in choices
    ):
        interactive = {"type": "button", "action": {"buttons": [
            {"type": "reply", "reply": {"id": cid, "title": title}} for cid, title in choices
        ]}}
    elif choices and len(choices) <= MAX_LIST_ROWS:
        rows = []
        for cid, title in choices:
            row = {"id": cid, "title": _cut(title, MAX_ROW_TITLE)}
            if len(title) > MAX_ROW_TITLE:
                row["description"] = _cut(title, MAX_ROW_DESCRIPTION)
            rows.append(row)
        label = str(outgoing.metadata.get("list_button") or "Options")
        interactive = {"type": "list", "action": {
            "button": _cut(label, MAX_BUTTON_TITLE),
            "sections": [{"title": _cut(label, MAX_ROW_TITLE), "rows": rows}],
        }}
    elif choices:  # too many for WhatsApp's widgets: numbered, answered by typing
        text += "".join(f"\n{i}. {title}" for i, (_, title) in enumerate(choices, 1))
    if interactive is None:
        return [
            {**base, "type": "text", "text": {"body": part, "preview_url": "http" in part}}
            for part in split_text(text, MAX_TEXT)
        ]
    parts = split_text(text or "…", MAX_TEXT)
    head, last = parts[:-1], parts[-1]
    if len(last) > MAX_INTERACTIVE_BODY:
        more = split_text(last, MAX_INTERACTIVE_BODY)
        head, last = head + more[:-1], more[-1]
    interactive["body"] = {"text": last}
    bodies = [{**base, "type": "text", "text": {"body": part}} for part in head]
    bodies.append({**base, "type": "interactive", "interactive": interactive})
    return bodies


class WhatsAppSender:
    """Sends messages through the Graph API (``POST {base_url}/{phone_number_id}/messages``).
    Also a `Notifier`, for lifecycle notifications."""

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        base_url: str = DEFAULT_GRAPH_URL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not access_token or not phone_number_id:
            raise ConfigurationError(
                "WhatsAppSender needs the access token and the phone number id of the business "
                "number (Meta app dashboard > WhatsApp > API setup)"
            )
        self.phone_number_id = str(phone_number_id)
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {access_token}"}

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/{self.phone_number_id}/messages"

    async def post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        response = await self.client.post(self.messages_url, json=body, headers=self._headers)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = data.get("error") or {}
            detail = str(error.get("message") or response.text[:300])
            raise PlatformAPIError(PLATFORM, response.status_code, detail)
        return data

    async def send_outgoing(self, to: str, outgoing: Outgoing) -> list[str]:
        """Send one reply; returns the ids (wamid) of the messages sent."""
        ids: list[str] = []
        for body in render(to, outgoing):
            data = await self.post(body)
            ids.extend(str(m.get("id")) for m in data.get("messages") or ())
        return ids

    async def send_text(self, to: str, text: str) -> list[str]:
        return await self.send_outgoing(to, Outgoing(text=text))

    async def mark_read(self, message_id: str) -> None:
        await self.post({"messaging_product": "whatsapp", "status": "read",
                         "message_id": message_id})

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> list[str]:
        return await self.send_outgoing(chat.chat_id, outgoing)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()


# -- the adapter ------------------------------------------------------------------------------


class WhatsAppAdapter:
    """Runs a chatstate handler for WhatsApp Cloud API webhooks, one session per phone number
    (or per `key_for`)."""

    def __init__(
        self,
        manager: SessionManager,
        handler: HandlerLike,
        *,
        sender: WhatsAppSender,
        app_secret: str,
        verify_token: str,
        key_for: KeyChooser | None = None,
        busy: BusyPolicy | None = None,
        texts: RuntimeTexts | None = None,
        platform: str = PLATFORM,
        record_history: bool = False,
        remember_ids: int = 100,
        mark_read: bool = False,
    ) -> None:
        if not app_secret or not verify_token:
            raise ConfigurationError(
                "WhatsAppAdapter needs app_secret (to check X-Hub-Signature-256) and "
                "verify_token (the webhook verification handshake)"
            )
        self.manager = manager
        self.sender = sender
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.platform = platform
        self.remember_ids = max(1, remember_ids)
        self.mark_read = mark_read
        self._inner = as_handler(handler)
        self.runtime = BotRuntime(
            manager, self._handle, key_for=key_for or scope_key("user", platform), busy=busy,
            texts=texts, record_history=record_history,
        )
        self._recent: OrderedDict[str, None] = OrderedDict()  # fast path, this process only
        self.duplicates = 0

    # -- one message ------------------------------------------------------------------------

    async def _handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        seen = _seen_ids(session.data.get(SEEN_FIELD))
        if session.created:
            seen = session.temp.pop("_whatsapp_previous_seen", seen)
        message_id = incoming.message_id
        if message_id and message_id in seen:
            # Redelivered while the first delivery was being handled: answer nothing, and do
            # not count it as a message of the conversation.
            self.duplicates += 1
            session.record.counters.messages -= 1
            session.temp["_whatsapp_duplicate"] = True
            return []
        replies = await self._inner(session, incoming)
        if message_id:
            seen = [*seen, message_id][-self.remember_ids:]
        # Set after the handler: a /reset inside it must not forget which messages were handled.
        session.data[SEEN_FIELD] = seen
        return replies

    async def process(self, incoming: Incoming) -> Result | None:
        """Handle one message and send the replies; None when it was a redelivery."""
        message_id = incoming.message_id
        if message_id and message_id in self._recent:
            self.duplicates += 1
            return None
        key = self.runtime.key_for(incoming)
        stored = await self.manager.get(key)
        previous = _seen_ids(stored.data.get(SEEN_FIELD)) if stored is not None else []
        if message_id and message_id in previous:
            self.duplicates += 1
            self._remember(message_id)
            return None

        carried = previous

        async def run(session: Session, inc: Incoming) -> list[Outgoing]:
            if session.created and carried:
                # A new session of the same number (the last one closed): keep the ids handled.
                session.temp["_whatsapp_previous_seen"] = carried
            return await self._handle(session, inc)

        async def deliver(result: Result) -> None:
            for outgoing in result.replies:
                try:
                    await self.sender.send_outgoing(incoming.chat_id, outgoing)
                except Exception:
                    # The session is committed; a reply the API refused is logged and the
                    # following replies still go out.
                    log.warning("could not send a reply to %s", incoming.chat_id, exc_info=True)

        result = await self.runtime.process(incoming, deliver=deliver, handler=run)
        if message_id and result.ok:
            self._remember(message_id)
        if self.mark_read and message_id and result.ok:
            try:
                await self.sender.mark_read(message_id)
            except Exception:
                log.info("could not mark %s as read", message_id, exc_info=True)
        return result

    def _remember(self, message_id: str) -> None:
        self._recent[message_id] = None
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)

    async def handle_payload(self, payload: Mapping[str, Any]) -> list[Result | None]:
        """Handle a verified webhook body: messages of one number in order, numbers
        concurrently."""
        by_key: dict[str, list[Incoming]] = {}
        for incoming in incomings_from_webhook(payload, self.platform):
            by_key.setdefault(str(self.runtime.key_for(incoming)), []).append(incoming)

        async def one_key(items: Sequence[Incoming]) -> list[Result | None]:
            return [await self.process(item) for item in items]

        groups = await asyncio.gather(*(one_key(items) for items in by_key.values()))
        return [result for group in groups for result in group]

    # -- HTTP ------------------------------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        """The Starlette endpoint: GET for the handshake, POST for notifications."""
        if request.method == "GET":
            challenge = verify_handshake(request.query_params, self.verify_token)
            if challenge is None:
                return PlainTextResponse("verification failed", status_code=403)
            return PlainTextResponse(challenge)
        body = await request.body()
        if not verify_signature(self.app_secret, body, request.headers.get(SIGNATURE_HEADER)):
            log.warning("webhook with a bad or missing %s rejected", SIGNATURE_HEADER)
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        results = await self.handle_payload(payload)
        return JSONResponse({"handled": sum(1 for r in results if r is not None),
                             "duplicates": sum(1 for r in results if r is None)})

    def routes(self, path: str = "/webhook") -> list[Route]:
        return [Route(path, self.webhook, methods=["GET", "POST"])]

    def asgi_app(self, path: str = "/webhook") -> Starlette:
        return Starlette(routes=self.routes(path))

    # -- notifications ---------------------------------------------------------------------------

    def lifecycle_notifier(self, texts: NotificationTexts | None = None) -> LifecycleNotifier:
        """Hooks for a `Lifecycle`: ``Lifecycle(manager, **adapter.lifecycle_notifier(texts)
        .hooks())``."""
        return LifecycleNotifier(self.sender, texts)

    def key_of(self, phone: str) -> SessionKey:
        return self.runtime.key_for(Incoming(platform=self.platform, user_id=phone,
                                             chat_id=phone))


def _seen_ids(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


__all__ = [
    "DEFAULT_GRAPH_URL",
    "SIGNATURE_HEADER",
    "WhatsAppAdapter",
    "WhatsAppSender",
    "incoming_from_message",
    "incomings_from_webhook",
    "render",
    "sign",
    "verify_handshake",
    "verify_signature",
]
