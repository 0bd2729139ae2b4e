"""A local stand-in for Discord's REST API, and gateway payloads in Discord's documented shapes.

`FakeDiscord` answers the routes a bot uses (``/api/v10/users/@me``, application info, channel
messages, interaction callbacks, follow-up webhooks, ``@original`` edits) the way Discord does,
and records every call (method, path, JSON body). Point discord.py at it with
``monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)``; feed gateway events with
``client._connection.parse_message_create(payload)`` and ``parse_interaction_create``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GfakeX.test-token-for-the-fake-discord-server"
BOT_ID = "1100000000000000001"
APP_ID = BOT_ID
GUILD_ID = "1200000000000000001"
TEXT_CHANNEL_ID = "1300000000000000001"
THREAD_ID = "1300000000000000099"
DM_CHANNEL_ID = "1400000000000000001"
TIMESTAMP = "2025-01-15T10:30:00.000000+00:00"

BOT_USER = {"id": BOT_ID, "username": "chatstate-bot", "discriminator": "0",
            "global_name": None, "avatar": None, "bot": True, "flags": 0}

_snowflakes = itertools.count(1500000000000000001)


def snowflake() -> str:
    return str(next(_snowflakes))


def user(user_id: str, name: str = "ada") -> dict[str, Any]:
    return {"id": user_id, "username": name, "discriminator": "0", "global_name": name.title(),
            "avatar": None}


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly Discord's header: discord.py decodes only "application/json", without charset.
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json"})


@dataclass
class Call:
    method: str
    path: str
    body: Any

    @property
    def content(self) -> str | None:
        return self.body.get("content") if isinstance(self.body, dict) else None

    @property
    def components(self) -> list[dict[str, Any]]:
        return (self.body or {}).get("components") or [] if isinstance(self.body, dict) else []

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", [])]


@dataclass
class FakeDiscord:
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    async def start(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_route("*", "/api/v10/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._changed = asyncio.Condition()
        return self

    async def wait_sent(self, count: int) -> None:
        """Wait until the bot has sent `count` messages (events run as discord.py tasks); 5 s
        is only ever reached by a bot that does not answer."""
        assert self._changed is not None
        async with asyncio.timeout(5.0), self._changed:
            await self._changed.wait_for(lambda: len(self.sent()) >= count)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the API --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": True}
        self.calls.append(Call(request.method, path, body))
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        parts = path.strip("/").split("/")
        if path == "/users/@me":
            return _json(BOT_USER)
        if path == "/oauth2/applications/@me":
            return _json({
                "id": APP_ID, "name": "chatstate-bot", "icon": None, "description": "",
                "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                "owner": user("1000000000000000001", "owner"), "flags": 0, "team": None,
                "summary": "",
            })
        if parts[0] == "channels" and parts[-1] == "messages" and request.method == "POST":
            return _json(self.message(parts[1], body or {}))
        if parts[0] == "interactions" and parts[-1] == "callback":
            kind = (body or {}).get("type")
            return _json({
                "interaction": {"id": parts[1], "type": 2,
                                "response_message_loading": kind == 5,
                                "response_message_ephemeral": False},
                "resource": {"type": kind},
            })
        if parts[0] == "webhooks":
            if request.method == "DELETE":
                return web.Response(status=204)
            return _json(self.message(TEXT_CHANNEL_ID, body or {}))
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def message(self, channel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": snowflake(), "channel_id": channel_id, "author": BOT_USER, "type": 0,
            "content": body.get("content") or "", "timestamp": TIMESTAMP,
            "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "flags": 0,
            "components": body.get("components") or [],
        }

    # -- what the bot sent ----------------------------------------------------------------------

    def sent(self) -> list[Call]:
        """Messages the bot posted: channel messages, follow-ups and edits of a response."""
        return [
            c for c in self.calls
            if (c.method == "POST" and (c.path.endswith("/messages") or c.path.startswith(
                "/webhooks/"))) or (c.method == "PATCH" and c.path.startswith("/webhooks/"))
        ]

    def contents(self) -> list[str]:
        return [c.content or "" for c in self.sent()]


# -- gateway payloads ---------------------------------------------------------------------------


def guild_create() -> dict[str, Any]:
    """GUILD_CREATE for a guild with one text channel and one public thread in it."""
    return {
        "id": GUILD_ID, "name": "Test Guild", "icon": None, "splash": None,
        "owner_id": "1000000000000000001", "afk_channel_id": None, "afk_timeout": 300,
        "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "mfa_level": 0, "features": [], "emojis": [],
        "stickers": [], "system_channel_id": None, "system_channel_flags": 0,
        "rules_channel_id": None, "vanity_url_code": None, "description": None,
        "banner": None, "premium_tier": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled": False,
        "joined_at": TIMESTAMP, "large": False, "unavailable": False, "member_count": 3,
        "voice_states": [], "presences": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": [],
        "roles": [{"id": GUILD_ID, "name": "@everyone", "permissions": "1071698660929",
                   "position": 0, "color": 0, "hoist": False, "managed": False,
                   "mentionable": False, "flags": 0}],
        "members": [{"user": BOT_USER, "roles": [], "joined_at": TIMESTAMP, "deaf": False,
                     "mute": False, "flags": 0}],
        "channels": [{"id": TEXT_CHANNEL_ID, "type": 0, "guild_id": GUILD_ID, "name": "general",
                      "position": 0, "permission_overwrites": [], "nsfw": False,
                      "parent_id": None, "topic": None, "rate_limit_per_user": 0,
                      "last_message_id": None}],
        "threads": [{"id": THREAD_ID, "type": 11, "guild_id": GUILD_ID, "parent_id":
                     TEXT_CHANNEL_ID, "name": "help thread", "owner_id": "1000000000000000001",
                     "last_message_id": None, "rate_limit_per_user": 0, "message_count": 0,
                     "member_count": 1, "flags": 0,
                     "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                         "archive_timestamp": TIMESTAMP, "locked": False}}],
    }


def message_create(
    content: str, *, author: dict[str, Any], channel_id: str = DM_CHANNEL_ID,
    guild: bool = False, mentions: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": snowflake(), "channel_id": channel_id, "author": author, "content": content,
        "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": mentions or [], "mention_roles": [],
        "attachments": attachments or [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
        "components": [], "nonce": snowflake(),
    }
    if guild:
        data["guild_id"] = GUILD_ID
        data["member"] = {"roles": [], "joined_at": TIMESTAMP, "deaf": False, "mute": False,
                          "flags": 0}
    return data


def attachment(filename: str, content_type: str, size: int = 1234) -> dict[str, Any]:
    aid = snowflake()
    return {"id": aid, "filename": filename, "size": size, "content_type": content_type,
            "url": f"https://cdn.discordapp.com/attachments/{DM_CHANNEL_ID}/{aid}/{filename}",
            "proxy_url": f"https://media.discordapp.net/attachments/{aid}/{filename}"}


def _interaction(kind: int, data: dict[str, Any], *, who: dict[str, Any], channel_id: str,
                 guild: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": snowflake(), "application_id": APP_ID, "type": kind, "data": data,
        "channel_id": channel_id, "token": "itok-" + snowflake(), "version": 1,
        "locale": "en-US", "app_permissions": "1071698660929", "entitlements": [],
        "attachment_size_limit": 10485760,
        "authorizing_integration_owners": {"0": GUILD_ID} if guild else {"1": who["id"]},
        "context": 0 if guild else 1,
        "channel": {"id": channel_id, "type": 0 if guild else 1},
    }
    if guild:
        payload["guild_id"] = GUILD_ID
        payload["guild_locale"] = "en-US"
        payload["member"] = {"user": who, "roles": [], "joined_at": TIMESTAMP, "deaf": False,
                             "mute": False, "flags": 0, "permissions": "1071698660929"}
        payload["channel"]["guild_id"] = GUILD_ID
        payload["channel"]["name"] = "general"
    else:
        payload["user"] = who
    return payload


def slash_command(name: str, text: str | None = None, *, who: dict[str, Any],
                  channel_id: str = DM_CHANNEL_ID, guild: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": snowflake(), "name": name, "type": 1}
    if text is not None:
        data["options"] = [{"name": "text", "type": 3, "value": text}]
    return _interaction(2, data, who=who, channel_id=channel_id, guild=guild)


def button_press(custom_id: str, *, who: dict[str, Any], channel_id: str = DM_CHANNEL_ID,
                 guild: bool = False, message_components: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    payload = _interaction(3, {"custom_id": custom_id, "component_type": 2}, who=who,
                           channel_id=channel_id, guild=guild)
    payload["message"] = {
        "id": snowflake(), "channel_id": channel_id, "author": BOT_USER, "content": "…",
        "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": False, "type": 0, "flags": 0,
        "components": message_components or [],
    }
    return payload
