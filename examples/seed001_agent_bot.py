"""Seed 001: the agent bot on Telegram and Discord, on chatstate.

One OpenAI Agents SDK agent with two tools (``calculate``, ``get_time``). Its conversation memory
is a chatstate session per chat (`ChatstateAgentSession`): messages with roles and token counts,
tool calls linked to their results and counted, model usage in the ledger, errors recorded, and
rolling summaries at 70% of a 4,000-token limit (seed 001's numbers), so long conversations keep
their gist. ``/reset`` forgets the conversation. On Discord the session is the channel (DMs,
channels, threads; slash commands too), attachments are kept as message metadata and long
answers are split at 2,000 characters.

The model is any OpenAI-compatible endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
``AGENT_MODEL``), or, without a key, a deterministic offline model, so the bot runs anywhere:

    python -m examples.seed001_agent_bot                   # terminal chat, offline model
    DISCORD_TOKEN=... python -m examples.seed001_agent_bot  # Discord
    TELEGRAM_TOKEN=... python -m examples.seed001_agent_bot # Telegram (python-telegram-bot)
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import operator
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import (
    Agent,
    Model,
    ModelResponse,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from chatstate.adapters.discord import attachment_metadata
from chatstate.adapters.openai_agents import ChatstateAgentSession
from chatstate.engine import SessionManager
from chatstate.errors import ConfigurationError
from chatstate.memory import Memory, MemoryConfig
from chatstate.memory.context import SUMMARY_PREFIX
from chatstate.model import Incoming, Outgoing
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session

log = logging.getLogger("examples.seed001")

INSTRUCTIONS = ("You are a helpful assistant in a chat. Be brief. Use the tools for arithmetic "
                "and for the time.")
POLICY = LifecyclePolicy(idle_timeout=24 * 3600.0, max_age=None)  # seed 001: 24-hour sessions
MEMORY = MemoryConfig(token_limit=4000, summarize_at=0.7, keep_recent=0.3,
                      summary_max_tokens=500, min_messages=10)
HELP = ("I'm an AI assistant with memory of this chat. Ask me anything; I can calculate "
        "(\"calculate 12*7\") and tell the time. /reset forgets our conversation.")


# -- tools --------------------------------------------------------------------------------------

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if isinstance(node.op, ast.Pow) and abs(_evaluate(node.right)) > 100:
            raise ValueError("exponent too large")
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError("only numbers and + - * / % ** are allowed")


@function_tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as 12*7 or (3+4)/2."""
    try:
        value = _evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return f"{value:g}"


@function_tool
def get_time() -> str:
    """The current UTC time."""
    return time.strftime("%H:%M UTC", time.gmtime())


# -- the offline model ---------------------------------------------------------------------------


class ModelFailure(RuntimeError):
    """The offline model was asked to fail (message starting with "fail"): exercises the bot's
    error recording without a network."""


class OfflineModel(Model):
    """A deterministic stand-in for an LLM, for running the bot with no key: calls
    ``calculate`` for "calculate ..." and ``get_time`` for "what time...", reports tool results,
    and otherwise answers with what it remembers of the conversation."""

    async def get_response(
        self, system_instructions: str | None, input: str | list[Any],
        model_settings: ModelSettings, tools: list[Any], output_schema: Any, handoffs: Any,
        tracing: Any, *, previous_response_id: str | None = None,
        conversation_id: str | None = None, prompt: Any = None,
    ) -> ModelResponse:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        output = self.decide(items)
        tokens_in = sum(len(json.dumps(i, default=str)) for i in items) // 4
        tokens_out = len(json.dumps([o.model_dump() for o in output])) // 4
        return ModelResponse(
            output=output, response_id=None,
            usage=Usage(requests=1, input_tokens=tokens_in, output_tokens=tokens_out,
                        total_tokens=tokens_in + tokens_out),
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise ConfigurationError("the offline model does not stream: use Runner.run")

    def decide(self, items: list[Any]) -> list[Any]:
        last = items[-1] if items else {}
        if isinstance(last, dict) and last.get("type") == "function_call_output":
            return [self.say(f"The result is {last.get('output')}.")]
        users = [i for i in items if isinstance(i, dict) and i.get("role") == "user"]
        text = _content(users[-1]) if users else ""
        if text.lower().startswith("fail"):
            raise ModelFailure("the offline model failed on purpose")
        match = re.match(r"\s*(?:calculate|compute|what is)\s+([-+*/%().\d\s]+)\??$", text, re.I)
        if match:
            return [self.call("calculate", {"expression": match.group(1).strip()})]
        if re.search(r"\bwhat time\b", text, re.I):
            return [self.call("get_time", {})]
        summaries = [i for i in items if isinstance(i, dict) and i.get("role") == "system"
                     and _content(i).startswith(SUMMARY_PREFIX)]
        earlier = [_content(u) for u in users[:-1]]
        memory = f"I remember {len(earlier)} earlier message(s)"
        if earlier:
            memory += f", the last one was: “{earlier[-1][:60]}”"
        if summaries:
            memory += " (and a summary of older ones)"
        return [self.say(f"You said: “{text[:200]}”. {memory}.")]

    @staticmethod
    def say(text: str) -> ResponseOutputMessage:
        return ResponseOutputMessage(
            id=f"msg_{uuid.uuid4().hex[:12]}", type="message", role="assistant",
            status="completed",
            content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
        )

    @staticmethod
    def call(name: str, arguments: dict[str, Any]) -> ResponseFunctionToolCall:
        return ResponseFunctionToolCall(
            type="function_call", id=f"fc_{uuid.uuid4().hex[:12]}",
            call_id=f"call_{uuid.uuid4().hex[:12]}", name=name,
            arguments=json.dumps(arguments), status="completed",
        )


def _content(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def model_from_env(environ: dict[str, str] | None = None) -> Model:
    """An OpenAI-compatible endpoint when ``OPENAI_API_KEY`` is set, else the offline model."""
    env = os.environ if environ is None else environ
    key = env.get("OPENAI_API_KEY") or env.get("AGENT_API_KEY")
    if not key:
        return OfflineModel()
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=key, base_url=env.get("OPENAI_BASE_URL") or None)
    return OpenAIChatCompletionsModel(model=env.get("AGENT_MODEL", "gpt-4o-mini"),
                                      openai_client=client)


# -- the bot ------------------------------------------------------------------------------------


class AgentBot:
    """The handler every platform adapter calls: one agent run per message, in the chat's
    session (the run's items commit with the update, or not at all)."""

    def __init__(self, manager: SessionManager, *, model: Model | None = None,
                 memory: Memory | None = None) -> None:
        set_tracing_disabled(True)  # no traces leave the machine unless the bot author asks
        self.manager = manager
        self.memory = memory or Memory(manager, config=MEMORY)
        self.model = model or model_from_env()
        self.agent: Agent[Any] = Agent(name="assistant", instructions=INSTRUCTIONS,
                                       model=self.model, tools=[calculate, get_time])

    async def handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        if incoming.command == "reset":
            await self.memory.clear_messages(session, keep_summaries=False)
            session.reset()
            return [Outgoing(text="🔄 Conversation reset. What shall we talk about?")]
        if incoming.command in ("start", "help"):
            return [Outgoing(text=HELP)]
        text = incoming.text or ""
        if incoming.command == "chat":  # Discord's /chat slash command
            text = " ".join(incoming.args)
        if incoming.attachments:
            names = ", ".join(a.name or a.kind for a in incoming.attachments)
            text = f"{text}\n[attachments: {names}]".strip()
        if not text:
            return [Outgoing(text=HELP)]
        memory_session = ChatstateAgentSession(
            self.manager, session.key, memory=self.memory,
            budget_tokens=self.memory.config.token_limit,
        )
        started = time.perf_counter()
        try:
            result = await Runner.run(self.agent, text, session=memory_session)
        except Exception as exc:
            # seed 001's recordError: counted on the session; the runtime then discards this
            # turn and resets the session after repeated errors.
            log.warning("agent run failed for %s: %s", session.key, exc)
            session.record.counters.errors += 1
            session.record.last_error = f"{type(exc).__name__}: {exc}"[:500]
            return [Outgoing(text="⚠️ Sorry, I couldn't answer that. Please try again.")]
        usage = result.context_wrapper.usage
        self.memory.record_model_call(
            session, {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            model=getattr(self.model, "model", None) or type(self.model).__name__,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        metadata = attachment_metadata(incoming)
        if metadata:  # keep the attachments with the user's message in the history
            for message in session.history.append:
                if message.role == "user":
                    message.metadata.update(metadata)
                    break
        return [Outgoing(text=str(result.final_output))]


# -- running it ---------------------------------------------------------------------------------


def build_manager(store: Any = None, **kw: Any) -> SessionManager:
    return SessionManager(store, policy=kw.pop("policy", POLICY), **kw)


def run_discord(token: str) -> None:  # pragma: no cover - needs a Discord token
    import discord

    from chatstate.adapters.discord import DiscordAdapter

    async def main() -> None:
        manager = build_manager(os.environ.get("CHATSTATE_STORE", "sqlite:///seed001.db"))
        bot = AgentBot(manager)
        intents = discord.Intents.default()
        intents.message_content = True
        client = discord.Client(intents=intents)
        adapter = DiscordAdapter(manager, bot, scope="channel")
        tree = adapter.install(client, commands={"chat": "Talk to the assistant",
                                                 "reset": "Forget this conversation",
                                                 "help": "What I can do"})

        @client.event
        async def on_ready() -> None:
            if tree is not None:
                await tree.sync()

        async with client:
            await client.start(token)

    asyncio.run(main())


def build_telegram_application(
    token: str, manager: SessionManager, bot: AgentBot, *, base_url: str | None = None
) -> Any:
    """The PTB Application: one session per chat (seed 001's per-chat sessions), updates of a
    chat handled in order even with concurrent updates on."""
    from telegram.ext import ApplicationBuilder

    from chatstate.adapters.telegram import TelegramAdapter

    builder = ApplicationBuilder().token(token).concurrent_updates(True)
    if base_url:
        builder = builder.base_url(base_url)
    app = builder.build()
    TelegramAdapter(manager, bot, scope="chat").install(app)
    return app


def run_telegram(token: str) -> None:  # pragma: no cover - needs a Telegram token
    manager = build_manager(os.environ.get("CHATSTATE_STORE", "sqlite:///seed001.db"))
    build_telegram_application(token, manager, AgentBot(manager)).run_polling()


async def terminal() -> None:  # pragma: no cover - interactive
    from chatstate.adapters.base import BotRuntime

    manager = build_manager()
    runtime = BotRuntime(manager, AgentBot(manager), key_for="chat")
    loop = asyncio.get_running_loop()
    print(HELP + "  (offline model unless OPENAI_API_KEY is set; Ctrl-D quits)")
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        incoming = Incoming.from_text(line.strip(), platform="cli", user_id="local",
                                      chat_id="local")
        for reply in (await runtime.process(incoming)).replies:
            print(reply.text)


def main() -> None:  # pragma: no cover - interactive
    logging.basicConfig(level=logging.INFO)
    if os.environ.get("DISCORD_TOKEN"):
        run_discord(os.environ["DISCORD_TOKEN"])
    elif os.environ.get("TELEGRAM_TOKEN"):
        run_telegram(os.environ["TELEGRAM_TOKEN"])
    else:
        asyncio.run(terminal())


if __name__ == "__main__":  # pragma: no cover
    main()
