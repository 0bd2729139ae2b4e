"""Discord with discord.py: sessions per DM, channel, thread or guild member; messages, slash
commands and button presses; long replies split at Discord's 2000-character limit; attachments
kept as metadata; lifecycle notifications.

    import discord
    from chatstate import SessionManager
    from chatstate.adapters.discord import DiscordAdapter

    manager = SessionManager("sqlite:///chatstate.db")
    client = discord.Client(intents=discord.Intents.default())
    adapter = DiscordAdapter(manager, runner, scope="channel")   # runner: a FlowRunner
    adapter.install(client, commands={"order": "Place an order", "reset": "Start over"})
    client.run(TOKEN)

Scopes: ``"channel"`` (the default, seed 001's "session tracking per channel": one session per DM
channel, guild channel, or thread), ``"member"`` (one per user in each guild, one per user in
DMs) and ``"user"`` (one per user everywhere). Any ``key_for(incoming)`` may replace them.

Messages in DMs are always handled; in guild channels only those that mention the bot, unless
``guild_messages="all"`` (which needs the message content intent). Slash commands registered by
`install` arrive as ``/name text`` (so flows and escape commands see them as typed commands).
Buttons are rendered as a `discord.ui.View` whose buttons carry the payload in their
``custom_id``; a press comes back as `Incoming.payload`. The adapter handles presses from the
raw interaction, so buttons keep working after a restart and no view is kept in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

from ..engine import SessionManager
from ..errors import ConfigurationError
from ..model import Attachment, Incoming, Message, Outgoing, SessionKey
from ..session import Session
from .base import (
    BotRuntime,
    BusyPolicy,
    ChatRef,
    HandlerLike,
    LifecycleNotifier,
    NotificationTexts,
    Result,
    RuntimeTexts,
    as_handler,
    split_text,
)

try:
    import discord
    from discord import app_commands
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigurationError(
        "the Discord adapter needs discord.py: pip install 'chatstate[discord]'"
    ) from exc

log = logging.getLogger("chatstate.adapters.discord")

PLATFORM = "discord"
MAX_MESSAGE = 2000
MAX_CUSTOM_ID = 100
MAX_BUTTONS_PER_ROW = 5
MAX_ROWS = 5
KEYBOARD_PREFIX = "kb:"  # reply-keyboard labels rendered as buttons come back as text

DiscordScope = Literal["channel", "thread", "member", "user"]
Where = Literal["dm", "guild"]


# -- discord -> Incoming ----------------------------------------------------------------------


def attachments_of(message: discord.Message) -> list[Attachment]:
    out: list[Attachment] = []
    for item in message.attachments:
        mime = item.content_type or ""
        kind = mime.split("/", 1)[0] if mime else "document"
        out.append(Attachment(
            kind={"image": "photo", "application": "document", "text": "document"}.get(kind, kind),
            file_id=str(item.id), url=item.url, name=item.filename,
            mime_type=item.content_type, size=item.size,
        ))
    return out


def attachment_metadata(incoming: Incoming) -> dict[str, Any]:
    """History metadata for an update's attachments (seed 001: "attachment context
    preservation"): ``{"attachments": [{"kind", "name", "url", "mime_type", "size"}]}``."""
    if not incoming.attachments:
        return {}
    import msgspec

    return {"attachments": [msgspec.to_builtins(a) for a in incoming.attachments]}


def _channel_ids(channel: Any) -> tuple[str, str | None]:
    """(chat id, thread id): a thread belongs to its parent channel."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(channel.id), None


def _strip_mention(text: str, bot_id: int | None) -> str:
    if bot_id is None:
        return text.strip()
    for mention in (f"<@{bot_id}>", f"<@!{bot_id}>"):
        text = text.replace(mention, " ")
    return text.strip()


def incoming_from_message(message: discord.Message, *, bot_id: int | None = None,
                          platform: str = PLATFORM) -> Incoming:
    chat, thread = _channel_ids(message.channel)
    author = message.author
    fields: dict[str, Any] = {
        "platform": platform, "user_id": str(author.id), "chat_id": chat, "thread_id": thread,
        "message_id": str(message.id), "user_name": author.display_name,
        "timestamp": message.created_at.timestamp(), "attachments": attachments_of(message),
    }
    text = _strip_mention(message.content or "", bot_id)
    if text:
        return Incoming.from_text(text, **fields)
    return Incoming(**fields)


def incoming_from_interaction(interaction: discord.Interaction, platform: str = PLATFORM
                              ) -> Incoming | None:
    """A slash command as ``/name text`` and a button press as a payload; None otherwise."""
    channel = interaction.channel
    if channel is None and interaction.channel_id is None:
        return None
    chat, thread = (_channel_ids(channel) if channel is not None
                    else (str(interaction.channel_id), None))
    user = interaction.user
    fields: dict[str, Any] = {
        "platform": platform, "user_id": str(user.id), "chat_id": chat, "thread_id": thread,
        "user_name": user.display_name, "timestamp": interaction.created_at.timestamp(),
    }
    data: Mapping[str, Any] = interaction.data or {}
    if interaction.type is discord.InteractionType.application_command:
        name = str(data.get("name") or "")
        values = [str(o.get("value")) for o in data.get("options") or () if "value" in o]
        text = f"/{name} {' '.join(values)}".strip()
        return Incoming.from_text(text, **fields)
    if interaction.type is discord.InteractionType.component:
        custom_id = str(data.get("custom_id") or "")
        if interaction.message is not None:
            fields["message_id"] = str(interaction.message.id)
        if custom_id.startswith(KEYBOARD_PREFIX):
            return Incoming.from_text(custom_id[len(KEYBOARD_PREFIX):], **fields)
        return Incoming(payload=custom_id, **fields)
    return None


# -- Outgoing -> discord ----------------------------------------------------------------------


class ButtonsView(discord.ui.View):
    """The buttons of one reply. Not dispatchable: presses are handled from the raw interaction
    (restart-safe, nothing kept in memory per sent message)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    def is_dispatchable(self) -> bool:
        return False


def view_for(outgoing: Outgoing) -> ButtonsView | None:
    """Inline buttons (payload -> custom_id, or a link) and reply-keyboard labels as buttons,
    at most 5 rows of 5."""
    rows: list[list[discord.ui.Button[Any]]] = []
    for row in outgoing.buttons:
        items: list[discord.ui.Button[Any]] = []
        for button in row:
            if button.url:
                items.append(discord.ui.Button(label=button.text[:80], url=button.url))
                continue
            custom_id = button.payload or button.text
            if len(custom_id) > MAX_CUSTOM_ID:
                log.warning("button %r dropped: its payload is over Discord's %d-character "
                            "custom_id limit", button.text, MAX_CUSTOM_ID)
                continue
            items.append(discord.ui.Button(label=button.text[:80], custom_id=custom_id,
                                           style=discord.ButtonStyle.secondary))
        rows.append(items)
    for keys in outgoing.keyboard:
        rows.append([
            discord.ui.Button(label=label[:80], custom_id=(KEYBOARD_PREFIX + label)[:MAX_CUSTOM_ID],
                              style=discord.ButtonStyle.primary)
            for label in keys
        ])
    view = ButtonsView()
    placed = 0
    for items in rows:
        for start in range(0, len(items), MAX_BUTTONS_PER_ROW):
            if placed >= MAX_ROWS:
                log.warning("reply has more than %d rows of buttons; the rest were dropped",
                            MAX_ROWS)
                return view
            for item in items[start:start + MAX_BUTTONS_PER_ROW]:
                item.row = placed
                view.add_item(item)
            placed += 1
    return view if view.children else None


def render(outgoing: Outgoing) -> list[tuple[str, ButtonsView | None]]:
    """(content, view) per Discord message: the text split at 2000 characters, the buttons on
    the last part."""
    parts = split_text(outgoing.text or "", MAX_MESSAGE)
    view = view_for(outgoing)
    if view is None and outgoing.remove_keyboard and not outgoing.text:
        return []
    return [(part or "\u200b", view if i == len(parts) - 1 else None)
            for i, part in enumerate(parts)]


class DiscordNotifier:
    """A `Notifier` that sends lifecycle notifications to a channel (or thread) by id."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def send(self, chat: ChatRef, outgoing: Outgoing) -> Any:
        target = self.client.get_partial_messageable(int(chat.thread_id or chat.chat_id))
        sent = []
        for content, view in render(outgoing):
            if view is not None:
                sent.append(await target.send(content, view=view))
            else:
                sent.append(await target.send(content))
        return sent


# -- the adapter ------------------------------------------------------------------------------


class DiscordAdapter:
    """Runs a chatstate handler (a `FlowRunner`, or ``async def handle(session, incoming)``)
    for discord.py messages, slash commands and button presses."""

    def __init__(
        self,
        manager: SessionManager,
        handler: HandlerLike,
        *,
        scope: DiscordScope = "channel",
        key_for: Callable[[Incoming], SessionKey] | None = None,
        busy: BusyPolicy | None = None,
        texts: RuntimeTexts | None = None,
        platform: str = PLATFORM,
        guild_messages: Literal["mentions", "all", "none"] = "mentions",
        record_history: bool = False,
    ) -> None:
        if scope not in ("channel", "thread", "member", "user"):
            raise ConfigurationError(
                f"scope={scope!r}: use 'channel' (DM, channel or thread), 'member' (user in a "
                "guild) or 'user', or pass key_for"
            )
        self.manager = manager
        self.platform = platform
        self.scope = scope
        self.guild_messages = guild_messages
        self.record_history = record_history
        self._custom_key = key_for
        self._inner = as_handler(handler)
        self.runtime = BotRuntime(
            manager, self._handle, key_for=key_for or self._key_without_guild, busy=busy,
            texts=texts,
        )
        self.handler = handler
        self.client: discord.Client | None = None

    # -- keys ---------------------------------------------------------------------------------

    def key_of(self, incoming: Incoming, guild_id: int | None) -> SessionKey:
        if self._custom_key is not None:
            return self._custom_key(incoming)
        p = self.platform
        if self.scope == "user" or (self.scope == "member" and guild_id is None):
            return SessionKey.user(p, incoming.user_id)
        if self.scope == "member":
            return SessionKey.user_in_chat(p, str(guild_id), incoming.user_id)
        if incoming.thread_id:
            return SessionKey.thread(p, incoming.chat_id, incoming.thread_id)
        return SessionKey.chat(p, incoming.chat_id)

    def _key_without_guild(self, incoming: Incoming) -> SessionKey:
        return self.key_of(incoming, None)

    # -- handling -----------------------------------------------------------------------------

    async def _handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        handler = session.temp.pop("_discord_handler", None) or self._inner
        if self.record_history:
            text = incoming.text or (f"[button] {incoming.payload}" if incoming.payload else "")
            session.append(Message(role="user", content=text, name=incoming.user_name,
                                   metadata=attachment_metadata(incoming)))
        replies: list[Outgoing] = await handler(session, incoming)
        if self.record_history:
            for reply in replies:
                if reply.text:
                    session.append(Message(role="assistant", content=reply.text))
        return replies

    async def process_incoming(
        self, incoming: Incoming, guild_id: int | None,
        send: Callable[[Result], Awaitable[None]], handler: HandlerLike | None = None,
    ) -> Result:
        run = None
        if handler is not None:
            chosen = as_handler(handler)

            async def run_with(session: Session, inc: Incoming) -> list[Outgoing]:
                session.temp["_discord_handler"] = chosen
                return await self._handle(session, inc)

            run = run_with
        return await self.runtime.process(
            incoming, deliver=send, handler=run, key=self.key_of(incoming, guild_id)
        )

    async def on_message(self, message: discord.Message) -> Result | None:
        """Handle a message (DMs always; in guilds per `guild_messages`)."""
        client = self.client
        me = client.user if client is not None else None
        if message.author.bot or (me is not None and message.author.id == me.id):
            return None
        if message.guild is not None:
            if self.guild_messages == "none":
                return None
            if self.guild_messages == "mentions" and (
                me is None or not any(u.id == me.id for u in message.mentions)
            ):
                return None
        incoming = incoming_from_message(message, bot_id=me.id if me else None,
                                         platform=self.platform)
        channel = message.channel

        async def deliver(result: Result) -> None:
            for outgoing in result.replies:
                for content, view in render(outgoing):
                    try:
                        if view is not None:
                            await channel.send(content, view=view)
                        else:
                            await channel.send(content)
                    except discord.HTTPException:
                        log.warning("could not send a reply to %s", channel.id, exc_info=True)

        guild_id = message.guild.id if message.guild is not None else None
        return await self.process_incoming(incoming, guild_id, deliver)

    async def on_interaction(self, interaction: discord.Interaction) -> Result | None:
        """Handle a press of one of our buttons (slash commands come through the tree)."""
        if interaction.type is not discord.InteractionType.component:
            return None
        data: Mapping[str, Any] = interaction.data or {}
        if data.get("component_type") != discord.ComponentType.button.value:
            return None
        return await self.process_interaction(interaction)

    async def process_interaction(
        self, interaction: discord.Interaction, handler: HandlerLike | None = None
    ) -> Result | None:
        incoming = incoming_from_interaction(interaction, self.platform)
        if incoming is None:
            return None
        is_command = interaction.type is discord.InteractionType.application_command
        # Acknowledge first: Discord wants an answer within 3 seconds, the bot may take longer.
        try:
            await interaction.response.defer(thinking=is_command)
        except discord.HTTPException:
            log.warning("could not acknowledge interaction %s", interaction.id, exc_info=True)

        async def deliver(result: Result) -> None:
            first = True
            for outgoing in result.replies:
                for content, view in render(outgoing):
                    try:
                        if first and outgoing.edit and not is_command:
                            await interaction.edit_original_response(
                                content=content, view=view)
                        elif view is not None:
                            await interaction.followup.send(content, view=view)
                        else:
                            await interaction.followup.send(content)
                    except discord.HTTPException:
                        log.warning("could not answer interaction %s", interaction.id,
                                    exc_info=True)
                    first = False
            if first and is_command:  # nothing to say: remove the "thinking..." message
                try:
                    await interaction.delete_original_response()
                except discord.HTTPException:
                    log.info("could not delete the deferred response", exc_info=True)

        guild_id = interaction.guild_id
        return await self.process_incoming(incoming, guild_id, deliver, handler)

    # -- wiring -------------------------------------------------------------------------------

    def install(
        self,
        client: discord.Client,
        *,
        commands: Mapping[str, str] | Sequence[str] = (),
        tree: app_commands.CommandTree[Any] | None = None,
    ) -> app_commands.CommandTree[Any] | None:
        """Listen to messages and button presses of `client`, and register `commands` (name ->
        description) as slash commands taking an optional ``text``. Returns the command tree
        (``await tree.sync()`` once to publish the commands to Discord)."""
        self.client = client
        add_listener = getattr(client, "add_listener", None)
        if callable(add_listener):  # commands.Bot
            add_listener(self.on_message, "on_message")
            add_listener(self.on_interaction, "on_interaction")
        else:
            _chain(client, "on_message", self.on_message)
            _chain(client, "on_interaction", self.on_interaction)
        described = (dict(commands) if isinstance(commands, Mapping)
                     else {name: f"/{name}" for name in commands})
        if not described:
            return tree
        if tree is None:
            tree = getattr(client, "tree", None) or app_commands.CommandTree(client)
        for name, description in described.items():
            tree.add_command(app_commands.Command(
                name=name, description=description[:100] or name,
                callback=_command_callback(self),
            ))
        return tree

    def notifier(self) -> DiscordNotifier:
        if self.client is None:
            raise ConfigurationError("install the adapter on a client first: adapter.install("
                                     "client)")
        return DiscordNotifier(self.client)

    def lifecycle_notifier(self, texts: NotificationTexts | None = None) -> LifecycleNotifier:
        """Hooks for a `Lifecycle`: ``Lifecycle(manager, **adapter.lifecycle_notifier()
        .hooks())``."""
        return LifecycleNotifier(self.notifier(), texts)


def _chain(client: discord.Client, name: str, fn: Callable[[Any], Awaitable[Any]]) -> None:
    """Add `fn` to a plain Client's event, keeping a handler the bot set before."""
    previous = getattr(client, name, None)

    async def both(arg: Any) -> None:
        if previous is not None:
            await previous(arg)
        await fn(arg)

    both.__name__ = name
    setattr(client, name, both)


def _command_callback(
    adapter: DiscordAdapter,
) -> Callable[[discord.Interaction[Any], str | None], Coroutine[Any, Any, None]]:
    # discord.py reads the option ("text", optional) from this signature.
    async def callback(interaction: discord.Interaction[Any], text: str | None = None) -> None:
        await adapter.process_interaction(interaction)

    return callback


__all__ = [
    "ButtonsView",
    "DiscordAdapter",
    "DiscordNotifier",
    "attachment_metadata",
    "attachments_of",
    "incoming_from_interaction",
    "incoming_from_message",
    "render",
    "view_for",
]
