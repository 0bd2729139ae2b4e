"""Seed 004: the WhatsApp trial-credentials bot, on chatstate.

A user asks for a free trial, gives a name and an e-mail address, and receives trial credentials.
Sessions are keyed by phone number and close:

* after 3 minutes without a message (``SESSION_TIMEOUT_MINUTES``), with a notification in
  Spanish sent by the lifecycle runner (timers live in the store: they survive restarts and fire
  once across instances);
* when the credentials have been delivered (the bot's reply contains a closing keyword);
* when the user says goodbye ("gracias, hasta luego") or cancels ("cancelar"), recognised by
  `chatstate.intents`.

Every message moves the deadline. Run it against the Cloud API with

    WHATSAPP_TOKEN=... WHATSAPP_PHONE_NUMBER_ID=... WHATSAPP_APP_SECRET=... \\
    WHATSAPP_VERIFY_TOKEN=... python -m examples.seed004_whatsapp_trial    # serves :8004/webhook

or without any of them to chat in the terminal (the same bot and lifecycle, offline).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from typing import Any

from chatstate.adapters.base import NotificationTexts
from chatstate.engine import SessionManager
from chatstate.flows import validators
from chatstate.intents import KeywordDetector, ReplyKeywords, close_if_ended
from chatstate.lifecycle import Lifecycle
from chatstate.model import Button, Incoming, Outgoing
from chatstate.policy import LifecyclePolicy
from chatstate.session import Session

log = logging.getLogger("examples.seed004")

TIMEOUT_MINUTES = 3.0

TEXTS = {
    "welcome": "¡Hola{name}! 👋 Soy el asistente de pruebas gratuitas. "
               "¿Quieres solicitar una prueba gratuita de 7 días?",
    "ask_name": "¡Genial! ¿Cuál es tu nombre?",
    "ask_email": "Gracias, {name}. ¿A qué correo electrónico enviamos el acceso?",
    "bad_email": "Ese correo no parece válido. Escríbelo de nuevo, por ejemplo ana@ejemplo.com.",
    "no_trial": "De acuerdo. Si cambias de opinión, escribe «prueba». "
                "Para terminar, di «adiós».",
    "yes_no": "Responde «sí» para solicitar la prueba o «no» si no la necesitas.",
    "credentials": "✅ ¡Listo, {name}! Credenciales entregadas:\n"
                   "Usuario: {user}\nContraseña: {password}\n"
                   "Enviamos también los datos a {email}. ¡Disfruta tu prueba!",
    "farewell": "¡Gracias a ti! Hasta pronto. 👋",
    "cancelled": "Proceso cancelado. No guardamos tus datos.",
    # closure notices, sent with the reply that closed the session
    "closed_completed": "🔒 Sesión finalizada: prueba entregada con éxito.",
    "closed_goodbye": "🔒 Sesión finalizada por despedida. Escríbenos cuando quieras.",
    "closed_cancelled": "🔒 Sesión finalizada: solicitud cancelada.",
}

NOTIFICATIONS = NotificationTexts(
    warning=None,  # the seed warns nobody: the session simply times out
    expired="⏰ Tu sesión se cerró por inactividad ({minutes} minutos sin mensajes). "
            "Si necesitas algo más, escríbenos de nuevo.".replace(
                "{minutes}", f"{TIMEOUT_MINUTES:g}"),
    restored="🔄 Reiniciamos el servicio, pero tu solicitud sigue en curso: responde a la "
             "última pregunta o escribe «cancelar».",
    closed={"admin": "🔒 Un operador cerró esta conversación."},
)

# Seed 004 closes on "credentials delivered" and on farewell words in the bot's own reply.
REPLY_KEYWORDS = ReplyKeywords(["credenciales entregadas"])
DETECTOR = KeywordDetector(languages=("es", "en"))
YES = {"si", "sí", "s", "yes", "claro", "dale", "ok", "prueba", "quiero"}
NO = {"no", "n", "nop"}


def policy_from_env(environ: dict[str, str] | None = None) -> LifecyclePolicy:
    """3-minute sliding timeout (``SESSION_TIMEOUT_MINUTES`` overrides), no warning."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("SESSION_TIMEOUT_MINUTES", f"{TIMEOUT_MINUTES:g}")
    return LifecyclePolicy.from_env(env, warn_before=None, max_age=None)


def credentials_for(phone: str, email: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{phone}:{email}".encode()).hexdigest()
    return f"prueba_{phone[-4:]}", digest[:10]


def _words(text: str) -> set[str]:
    return {w.strip("¡!¿?.,") for w in text.lower().split()}


class TrialBot:
    """The conversation: offer -> name -> e-mail -> credentials. States live in the session."""

    async def handle(self, session: Session, incoming: Incoming) -> list[Outgoing]:
        text = (incoming.text or incoming.payload or "").strip()
        ended = await close_if_ended(session, text, detector=DETECTOR, language="es")
        if ended is not None:
            closing = "cancelled" if ended.reason == "cancelled" else "farewell"
            return [Outgoing(text=TEXTS[closing]),
                    Outgoing(text=TEXTS[f"closed_{ended.reason}"])]
        replies = self.step(session, incoming, text)
        reply_text = "\n".join(r.text for r in replies)
        intent = await close_if_ended(session, None, reply=reply_text,
                                      reply_keywords=REPLY_KEYWORDS)
        if intent is not None:
            replies.append(Outgoing(text=TEXTS["closed_completed"]))
        return replies

    def step(self, session: Session, incoming: Incoming, text: str) -> list[Outgoing]:
        state = session.state
        if state is None:
            session.state = "offer"
            name = f", {incoming.user_name}" if incoming.user_name else ""
            return [self.offer(TEXTS["welcome"].format(name=name))]
        if state == "offer":
            words = _words(text) | ({incoming.payload} if incoming.payload else set())
            if words & YES:
                session.state = "name"
                return [Outgoing(text=TEXTS["ask_name"])]
            if words & NO:
                session.state = "declined"
                return [Outgoing(text=TEXTS["no_trial"])]
            return [self.offer(TEXTS["yes_no"])]
        if state == "declined":
            if _words(text) & YES:
                session.state = "name"
                return [Outgoing(text=TEXTS["ask_name"])]
            return [Outgoing(text=TEXTS["no_trial"])]
        if state == "name":
            session.data["name"] = text[:60] or "amigo"
            session.state = "email"
            return [Outgoing(text=TEXTS["ask_email"].format(name=session.data["name"]))]
        if state == "email":
            check = validators.email()(text, validators.ValidationContext(language="es"))
            if not check.ok:
                return [Outgoing(text=TEXTS["bad_email"])]
            email = str(check.value)
            user, password = credentials_for(incoming.user_id, email)
            session.data.update(email=email, trial_user=user)
            session.state = "delivered"
            return [Outgoing(text=TEXTS["credentials"].format(
                name=session.data.get("name", ""), user=user, password=password, email=email,
            ))]
        return [Outgoing(text=TEXTS["no_trial"])]

    @staticmethod
    def offer(text: str) -> Outgoing:
        return Outgoing(text=text, buttons=[[Button(text="Sí, quiero", payload="si"),
                                             Button(text="No, gracias", payload="no")]])


def build_manager(store: Any = None, **kw: Any) -> SessionManager:
    return SessionManager(store, policy=kw.pop("policy", None) or policy_from_env(), **kw)


def build_whatsapp(manager: SessionManager, sender: Any, *, app_secret: str,
                   verify_token: str) -> tuple[Any, Lifecycle]:
    """The WhatsApp adapter and the lifecycle runner that sends the Spanish notifications."""
    from chatstate.adapters.whatsapp import WhatsAppAdapter

    adapter = WhatsAppAdapter(manager, TrialBot(), sender=sender, app_secret=app_secret,
                              verify_token=verify_token)
    lifecycle = Lifecycle(manager, **adapter.lifecycle_notifier(NOTIFICATIONS).hooks())
    return adapter, lifecycle


async def serve(port: int = 8004) -> None:  # pragma: no cover - needs Meta credentials
    import uvicorn

    from chatstate.adapters.whatsapp import DEFAULT_GRAPH_URL, WhatsAppSender

    manager = build_manager(os.environ.get("CHATSTATE_STORE", "sqlite:///seed004.db"))
    sender = WhatsAppSender(os.environ["WHATSAPP_TOKEN"], os.environ["WHATSAPP_PHONE_NUMBER_ID"],
                            base_url=os.environ.get("WHATSAPP_GRAPH_URL", DEFAULT_GRAPH_URL))
    adapter, lifecycle = build_whatsapp(
        manager, sender, app_secret=os.environ["WHATSAPP_APP_SECRET"],
        verify_token=os.environ["WHATSAPP_VERIFY_TOKEN"],
    )
    config = uvicorn.Config(adapter.asgi_app("/webhook"), host="0.0.0.0", port=port)
    async with lifecycle:
        await uvicorn.Server(config).serve()
    await sender.aclose()


async def terminal() -> None:
    """Chat offline: the same bot, sessions and timeouts, printed to the terminal."""
    from chatstate.adapters.base import BotRuntime, ChatRef

    class Printer:
        async def send(self, chat: ChatRef, outgoing: Outgoing) -> None:
            print(f"\n[bot → {chat.chat_id}] {outgoing.text}")

    from chatstate.adapters.base import LifecycleNotifier

    manager = build_manager()
    runtime = BotRuntime(manager, TrialBot(), key_for="user")
    lifecycle = Lifecycle(manager, **LifecycleNotifier(Printer(), NOTIFICATIONS).hooks())
    print(f"Seed 004 (offline). Sessions close after {TIMEOUT_MINUTES:g} min of silence. "
          "Ctrl-D to quit.")
    loop = asyncio.get_running_loop()
    async with lifecycle:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            incoming = Incoming.from_text(line.strip(), platform="whatsapp",
                                          user_id="5491100000000", chat_id="5491100000000")
            for reply in (await runtime.process(incoming)).replies:
                buttons = "  ".join(f"[{b.text}]" for row in reply.buttons for b in row)
                print(reply.text + (f"\n{buttons}" if buttons else ""))


def main() -> None:  # pragma: no cover - interactive
    logging.basicConfig(level=logging.INFO)
    if os.environ.get("WHATSAPP_TOKEN"):
        asyncio.run(serve(int(os.environ.get("PORT", "8004"))))
    else:
        asyncio.run(terminal())


if __name__ == "__main__":  # pragma: no cover
    main()
