"""Seed 003: the JunkJet recycling web chat's bot logic, on chatstate.

What the seed's bot does with its session, here kept in a chatstate session per user:

* detects the intent (selling, buying, information) and the materials (plastic, paper, metal,
  glass, cardboard, electronics) of each message, and where the user is (current location or
  home);
* counts the user's material preferences (``data["preferences"] = {"plastic": 3, ...}``) and
  keeps ``currentIntent``, ``userType`` (phase1/2/3 by how far the conversation got) and
  ``location`` in the session, with ``intent`` and ``user_type`` as labels for analytics;
* keeps at most 10 history messages (``MAX_HISTORY``), and answers with that context
  ("long conversation" hints, preferred material);
* sessions last 5 minutes from the last message, +2 minutes for users with more than 5
  messages (`POLICY`).

Serve it as the chatstate server's chat bot (``POST /chatbot/chatbotquery`` and ``/v1/chat``):

    CHATSTATE_BOT=examples.seed003_junkjet:JunkJetBot CHATSTATE_SESSION_TIMEOUT_MINUTES=5 \\
        chatstate serve        # and pass policy=examples.seed003_junkjet.POLICY for the +2 min

or chat with it in the terminal: ``python -m examples.seed003_junkjet``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterable
from typing import Any

from chatstate.engine import SessionManager
from chatstate.model import Incoming, Message, Outgoing
from chatstate.policy import Extension, LifecyclePolicy
from chatstate.session import Session

SESSION_TIMEOUT = 5 * 60.0
ACTIVE_AFTER_MESSAGES = 5
ACTIVE_EXTRA = 2 * 60.0
MAX_HISTORY = 10

POLICY = LifecyclePolicy(
    idle_timeout=SESSION_TIMEOUT,
    max_age=None,
    extension=Extension(after_messages=ACTIVE_AFTER_MESSAGES, extra_seconds=ACTIVE_EXTRA),
    expiry_message="Your JunkJet chat session ended after 5 minutes of inactivity.",
)

INTENTS: dict[str, tuple[str, ...]] = {
    "selling": ("sell", "selling", "get rid", "pick up", "pickup", "collect", "dispose",
                "recycle my", "how much for", "pay me"),
    "buying": ("buy", "buying", "purchase", "need some", "looking for", "order", "price of"),
    "information": ("how", "what", "where", "when", "which", "why", "info", "information",
                    "tell me", "can i", "do you", "?"),
}

MATERIALS: dict[str, tuple[str, ...]] = {
    "plastic": ("plastic", "bottle", "bottles", "pet", "container", "containers"),
    "paper": ("paper", "newspaper", "newspapers", "magazine", "magazines", "books"),
    "cardboard": ("cardboard", "carton", "cartons", "box", "boxes"),
    "metal": ("metal", "metals", "aluminium", "aluminum", "cans", "tin", "copper", "iron",
              "steel", "scrap"),
    "glass": ("glass", "jar", "jars"),
    "electronics": ("electronics", "e-waste", "ewaste", "phone", "phones", "laptop", "laptops",
                    "battery", "batteries", "computer", "tv"),
}

LOCATIONS: dict[str, tuple[str, ...]] = {
    "home": ("my home", "my house", "at home", "home address", "from home"),
    "current": ("near me", "nearby", "here", "current location", "where i am", "around me"),
}

GREETINGS = ("hi", "hello", "hey", "good morning", "good evening", "hola")

PRICES = {"plastic": 12, "paper": 8, "cardboard": 6, "metal": 30, "glass": 4, "electronics": 45}

_WORD = re.compile(r"[a-z0-9\-']+")


def _has(text: str, phrases: Iterable[str]) -> str | None:
    padded = f" {' '.join(_WORD.findall(text.lower()))} "
    for phrase in phrases:
        if phrase == "?":
            if "?" in text:
                return phrase
        elif f" {phrase} " in padded:
            return phrase
    return None


def detect_intent(text: str) -> str | None:
    """selling / buying / information, in that order of precedence (a question about selling
    is about selling)."""
    for intent in ("selling", "buying", "information"):
        if _has(text, INTENTS[intent]):
            return intent
    return None


def detect_materials(text: str) -> list[str]:
    return [name for name, words in MATERIALS.items() if _has(text, words)]


def detect_location(text: str) -> str | None:
    for name, phrases in LOCATIONS.items():
        if _has(text, phrases):
            return name
    return None


def user_type(messages: int, intents_seen: int) -> str:
    """phase1: just arrived; phase2: engaged (3+ messages or an intent); phase3: active
    (more than 5 messages, the seed's threshold for extending the session)."""
    if messages > ACTIVE_AFTER_MESSAGES:
        return "phase3"
    if messages >= 3 or intents_seen:
        return "phase2"
    return "phase1"


class JunkJetBot:
    """A session bot: ``await bot.reply(session, incoming) -> list[Outgoing]``.

    The host (the chatstate server, or `BotRuntime(record_history=True)`) records the user's
    message before calling it and the reply after; `reply` keeps the stored history at
    `MAX_HISTORY` messages counting that reply."""

    def __init__(self, manager: SessionManager | None = None, *,
                 max_history: int = MAX_HISTORY) -> None:
        self.manager = manager
        self.max_history = max_history

    async def handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        return await self.reply(session, incoming)

    async def reply(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        text = (incoming.text or incoming.payload or "").strip()
        data = session.data
        data.setdefault("sessionStart", session.created_at)
        intent = detect_intent(text)
        materials = detect_materials(text)
        location = detect_location(text)
        prefs: dict[str, int] = dict(data.get("preferences") or {})
        for material in materials:
            prefs[material] = prefs.get(material, 0) + 1
        data["preferences"] = prefs
        if intent:
            data["currentIntent"] = intent
            session.set_label("intent", intent)
        if location:
            data["location"] = location
        count = session.counters.messages
        data["messageCount"] = count
        data["lastInteraction"] = session.manager.clock.now() if session.manager else 0.0
        kind = user_type(count, 1 if data.get("currentIntent") else 0)
        data["userType"] = kind
        session.set_label("user_type", kind)
        answer = self.answer(text, intent or data.get("currentIntent"), materials, data)
        self._limit_history(session, replies=1)
        return [Outgoing(text=answer)]

    # -- the answer -----------------------------------------------------------------------------

    def answer(self, text: str, intent: str | None, materials: list[str],
               data: dict[str, Any]) -> str:
        prefs: dict[str, int] = data.get("preferences") or {}
        favourite = max(prefs, key=lambda m: prefs[m]) if prefs else None
        focus = materials or ([favourite] if favourite else [])
        where = {"home": "from your home", "current": "near your current location"}.get(
            str(data.get("location")), "")
        if not intent and _has(text, GREETINGS):
            return ("Hi! I'm JunkJet's assistant ♻️. Do you want to sell recyclables, buy "
                    "recycled material, or learn how recycling works?")
        if intent == "selling":
            if not focus:
                reply = "Great, let's sell! Which material do you have: plastic, paper, " \
                        "cardboard, metal, glass or electronics?"
            else:
                quotes = ", ".join(f"{m} at about ₹{PRICES[m]}/kg" for m in focus)
                reply = f"We buy {quotes}. A JunkJet pickup can collect it {where or 'from you'}."
                reply += " Share your address to book a pickup."
        elif intent == "buying":
            wanted = ", ".join(focus) if focus else "recycled material"
            reply = f"We sell {wanted} in bulk. How many kilos do you need?"
        elif intent == "information":
            topic = focus[0] if focus else "recyclables"
            reply = (f"{topic.capitalize()} is sorted, cleaned and sent to certified recyclers. "
                     "Want to sell some or buy recycled stock?")
        else:
            reply = ("I can help you sell recyclables, buy recycled material, or explain how "
                     "recycling works. What would you like?")
        if favourite and prefs.get(favourite, 0) >= 3:
            reply += f" (You ask about {favourite} a lot: ask about our {favourite} plans!)"
        if int(data.get("messageCount") or 0) > ACTIVE_AFTER_MESSAGES:
            reply += " Tip: you're an active user, so your session stays open a bit longer."
        return reply

    def _limit_history(self, session: Session, replies: int) -> None:
        """Keep the newest `max_history` messages once this update's `replies` are added."""
        newest = session.counters.last_seq + replies
        cut = newest - self.max_history
        if cut > 0:
            session.drop_messages_through(cut)


async def terminal() -> None:  # pragma: no cover - interactive
    from chatstate.adapters.base import BotRuntime

    manager = SessionManager(policy=POLICY)
    runtime = BotRuntime(manager, JunkJetBot(manager), key_for="user", record_history=True)
    loop = asyncio.get_running_loop()
    print("JunkJet (offline). Ctrl-D to quit.")
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        incoming = Incoming.from_text(line.strip(), platform="web", user_id="local",
                                      chat_id="local")
        for reply in (await runtime.process(incoming)).replies:
            print(reply.text)


def history_view(messages: list[Message]) -> list[dict[str, str]]:
    """The seed's conversation history entries (role, content)."""
    return [{"role": m.role, "content": m.text} for m in messages]


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(terminal())
