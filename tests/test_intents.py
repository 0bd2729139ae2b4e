"""End-of-conversation intents in English, Spanish and Portuguese, negatives included."""

from __future__ import annotations

import pytest

from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.errors import ConfigurationError
from chatstate.intents import (
    EndIntent,
    EndKind,
    KeywordDetector,
    ReplyKeywords,
    close_if_ended,
    detect_end,
    normalize,
)
from chatstate.model import SessionKey, Status
from chatstate.stores.memory import MemoryStore

detector = KeywordDetector()


@pytest.mark.parametrize(
    ("text", "kind", "language"),
    [
        # English
        ("bye", EndKind.GOODBYE, "en"),
        ("Goodbye!", EndKind.GOODBYE, "en"),
        ("ok, see you later :)", EndKind.GOODBYE, "en"),
        ("that's all, thanks", EndKind.THANKS_BYE, "en"),
        ("Thank you so much for your help, bye!!", EndKind.THANKS_BYE, "en"),
        ("byeee 👋", EndKind.GOODBYE, "en"),
        ("cancel", EndKind.CANCEL, "en"),
        ("/cancel", EndKind.CANCEL, "en"),
        ("Never mind, forget it.", EndKind.CANCEL, "en"),
        ("yes please cancel", EndKind.CANCEL, "en"),
        # Spanish (seed 004)
        ("gracias, hasta luego", EndKind.THANKS_BYE, "es"),
        ("Muchas gracias, adiós", EndKind.THANKS_BYE, "es"),
        ("ADIOOOS", EndKind.GOODBYE, "es"),
        ("¡Nos vemos!", EndKind.GOODBYE, "es"),
        ("eso es todo, gracias", EndKind.THANKS_BYE, "es"),
        ("quiero cancelar", EndKind.CANCEL, "es"),
        ("olvídalo", EndKind.CANCEL, "es"),
        ("bueno, chau", EndKind.GOODBYE, "es"),
        # Portuguese
        ("tchau", EndKind.GOODBYE, "pt"),
        ("Obrigado, até logo!", EndKind.THANKS_BYE, "pt"),
        ("valeu, falou", EndKind.THANKS_BYE, "pt"),
        ("muito obrigada pela ajuda, tchau tchau", EndKind.THANKS_BYE, "pt"),
        ("é isso, obrigado", EndKind.THANKS_BYE, "pt"),
        ("quero cancelar", EndKind.CANCEL, "pt"),
        ("deixa pra lá", EndKind.CANCEL, "pt"),
    ],
)
def test_closing_messages_are_recognised(text: str, kind: EndKind, language: str) -> None:
    intent = detector.detect(text)
    assert intent is not None, text
    assert intent.kind is kind
    assert intent.language == language


@pytest.mark.parametrize(
    "text",
    [
        "no gracias, quiero seguir",
        "no, gracias",  # declining an offer is not a farewell
        "gracias, pero tengo otra pregunta",
        "gracias",  # thanks alone keeps the conversation open
        "no quiero cancelar",
        "don't cancel",
        "do not cancel my order",
        "how do I cancel my subscription?",
        "thanks! one more question",
        "thank you, and what about the price?",
        "I said goodbye to my sister yesterday",
        "by the way",
        "obrigado, mas tenho outra dúvida",
        "não cancela",
        "não quero sair",
        "quiero seguir",
        "hola",
        "",
        "   ",
        "🙂",
    ],
)
def test_negatives_and_other_messages_do_not_close(text: str) -> None:
    assert detector.detect(text) is None, text


def test_normalisation_ignores_case_accents_punctuation_and_stretching() -> None:
    assert normalize("¡¡ADIÓÓÓS, Señor!!") == "adios senor"
    assert normalize("That’s it...") == "thats it"
    assert normalize("Até   logo 👋") == "ate logo"


def test_reasons_and_options() -> None:
    assert detector.detect("bye") == EndIntent(EndKind.GOODBYE, "bye", "en")
    assert EndIntent(EndKind.CANCEL, "cancel").reason == "cancelled"
    assert EndIntent(EndKind.THANKS_BYE, "bye").reason == "goodbye"
    polite = KeywordDetector(thanks_closes=True)
    assert polite.detect("muchas gracias") is not None
    custom = KeywordDetector(("es",), extra={"bye": ["me despido"], "filler": ["che"]})
    intent = custom.detect("che, me despido")
    assert intent is not None and intent.kind is EndKind.GOODBYE
    assert custom.detect("bye bye") is not None  # "bye" is in the Spanish table too
    assert custom.detect("see you later") is None  # English not enabled
    with pytest.raises(ConfigurationError, match="known"):
        KeywordDetector(("fr",))
    with pytest.raises(ConfigurationError, match="category"):
        KeywordDetector(extra={"greeting": ["hello"]})


def test_reply_keywords_match_whole_words() -> None:
    keywords = ReplyKeywords(["credenciales enviadas", "hasta pronto"])
    assert keywords.match("¡Listo! Credenciales ENVIADAS a tu correo.") == "credenciales enviadas"
    assert keywords.match("Te esperamos, hasta pronto.") == "hasta pronto"
    assert keywords.match("¿Quieres que te envíe las credenciales?") is None
    assert keywords.match(None) is None
    with pytest.raises(ConfigurationError):
        ReplyKeywords(["", "  "])


async def test_a_bot_can_plug_in_its_own_nlu() -> None:
    class Nlu:
        async def detect(self, text: str, *, language: str | None = None) -> EndIntent | None:
            return EndIntent(EndKind.CANCEL, "despedida", language) if "ciao" in text else None

    intent = await detect_end("ciao ragazzi", Nlu(), language="it")
    assert intent == EndIntent(EndKind.CANCEL, "despedida", "it")
    assert await detect_end("bye", Nlu()) is None
    assert await detect_end("bye", lambda text: None) is None

    def broken(text: str) -> str:
        return "yes"

    with pytest.raises(ConfigurationError, match="EndIntent"):
        await detect_end("bye", broken)  # type: ignore[arg-type]


async def test_close_if_ended_closes_the_session_with_the_reason() -> None:
    clock = FakeClock()
    manager = SessionManager(MemoryStore(clock=clock), clock=clock)
    key = SessionKey.user("whatsapp", "5491234")
    async with manager.session(key) as s:
        assert await close_if_ended(s, "no gracias, quiero seguir") is None
        assert s.is_active
    async with manager.session(key) as s:
        intent = await close_if_ended(s, "gracias, hasta luego")
        assert intent is not None and intent.kind is EndKind.THANKS_BYE
    record = await manager.get(key)
    assert record is not None and (record.status, record.close_reason) == (
        Status.CLOSED, "goodbye"
    )
    async with manager.session(key) as s:
        assert s.created  # the next message starts a new session
        intent = await close_if_ended(
            s, "ok", reply="Tus credenciales enviadas. ¡Hasta pronto!",
            reply_keywords=["credenciales enviadas"],
        )
        assert intent is not None and intent.kind is EndKind.REPLY
    record = await manager.get(key)
    assert record is not None and record.close_reason == "completed"
