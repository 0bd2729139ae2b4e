"""End-of-conversation intents: goodbye, thanks-and-bye and cancel, in English, Spanish and
Portuguese, plus closing keywords in the bot's own reply (seed 004).

    intent = detect_end("¡Gracias, hasta luego!")      # EndIntent(kind="thanks_bye", ...)
    await close_if_ended(session, incoming.text)        # closes with reason "goodbye"

The built-in `KeywordDetector` is deliberately conservative: a message closes the conversation
only when *every* word of it belongs to a closing phrase or to harmless filler ("ok", "muchas",
"por favor", "for your help", ...). "no gracias, quiero seguir", "don't cancel" or "thanks, one
more question" therefore never close: their extra words ("no", "seguir", "question") are not
accounted for. Matching ignores case, accents, punctuation, emoji and stretched letters
("byeee", "adióóós").

Any object with ``detect(text, language=None)`` (sync or async) returning an `EndIntent` or None
can replace it, e.g. a bot's own NLU; so can a plain function of the text.
"""

from __future__ import annotations

import enum
import inspect
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError


class EndKind(enum.StrEnum):
    GOODBYE = "goodbye"
    THANKS_BYE = "thanks_bye"
    CANCEL = "cancel"
    REPLY = "reply"  # the bot's own reply said the conversation is over


_REASONS = {
    EndKind.GOODBYE: "goodbye",
    EndKind.THANKS_BYE: "goodbye",
    EndKind.CANCEL: "cancelled",
    EndKind.REPLY: "completed",
}


@dataclass(frozen=True)
class EndIntent:
    kind: EndKind
    phrase: str  # the closing phrase that was recognised (normalised)
    language: str | None = None  # "en", "es", "pt", or None when unknown

    @property
    def reason(self) -> str:
        """The close reason to record: "goodbye", "cancelled" or "completed"."""
        return _REASONS[self.kind]


@runtime_checkable
class EndDetector(Protocol):
    def detect(
        self, text: str, *, language: str | None = None
    ) -> EndIntent | Awaitable[EndIntent | None] | None: ...


DetectorLike = EndDetector | Callable[[str], EndIntent | Awaitable[EndIntent | None] | None]

# -- normalisation -----------------------------------------------------------------------------

_APOSTROPHES = re.compile(r"['’‘`´]")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")


def normalize(text: str) -> str:
    """Lowercase, without accents, apostrophes, punctuation or emoji; letters repeated three or
    more times collapse to one ("Adióóós!!" -> "adios")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = _APOSTROPHES.sub("", plain)
    plain = _NON_WORD.sub(" ", plain)
    plain = _STRETCHED.sub(r"\1", plain)
    return " ".join(plain.split())


# -- phrase tables -----------------------------------------------------------------------------
# Written as people type them; `normalize` is applied when the tables are built.

BYE = "bye"
THANKS = "thanks"
CANCEL = "cancel"
FILLER = "filler"

PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        BYE: (
            "bye", "bye bye", "goodbye", "good bye", "bye now", "see you", "see ya",
            "see you later", "see you soon", "see you tomorrow", "talk to you later", "ttyl",
            "cya", "farewell", "good night", "goodnight", "have a nice day", "have a good day",
            "have a great day", "take care", "that's all", "that's it", "that is all",
            "that will be all", "i'm done", "i am done", "we're done", "all done",
            "nothing else", "nothing more", "i have to go", "gotta go", "got to go",
        ),
        THANKS: (
            "thanks", "thank you", "thankyou", "thx", "ty", "tysm", "many thanks",
            "much appreciated", "appreciate it", "i appreciate it", "cheers",
        ),
        CANCEL: (
            "cancel", "cancel it", "cancel that", "cancel this", "cancel everything",
            "i want to cancel", "i wanna cancel", "please cancel", "stop", "quit", "exit",
            "abort", "forget it", "never mind", "nevermind", "end", "end chat",
            "end the chat", "end conversation", "end the conversation", "i want to stop",
            "i want to quit", "leave",
        ),
        FILLER: (
            "ok", "okay", "k", "kk", "alright", "all right", "so", "well", "then", "and",
            "yes", "yeah", "yep", "please", "pls", "plz", "very much", "so much", "a lot",
            "a bunch", "again", "for everything", "for all", "for your help", "for the help",
            "for helping", "for helping me", "for your time", "you too", "to you too",
            "great", "perfect", "cool", "nice", "good", "awesome", "bot", "friend", "that",
        ),
    },
    "es": {
        BYE: (
            "adiós", "adios", "chao", "chau", "bye", "hasta luego", "hasta pronto",
            "hasta mañana", "hasta la próxima", "hasta la vista", "nos vemos",
            "nos vemos luego", "nos vemos pronto", "eso es todo", "es todo", "sería todo",
            "seria todo", "nada más", "nada mas", "ya está", "me voy", "que tengas buen día",
            "que tenga buen día", "que tengas un buen día", "que tenga un buen día",
            "feliz día", "cuídate", "cuidese", "ya terminé", "terminamos",
        ),
        THANKS: (
            "gracias", "muchas gracias", "muchísimas gracias", "mil gracias", "te agradezco",
            "le agradezco", "se agradece", "grax", "graciass",
        ),
        CANCEL: (
            "cancelar", "cancela", "cancelalo", "cancélalo", "cancelá", "quiero cancelar",
            "deseo cancelar", "cancelar todo", "salir", "quiero salir", "terminar",
            "finalizar", "parar", "para", "basta", "olvídalo", "olvidalo", "déjalo",
            "dejalo", "no importa", "detener",
        ),
        FILLER: (
            "ok", "okey", "vale", "bueno", "bien", "muy bien", "listo", "perfecto", "genial",
            "excelente", "entonces", "y", "e", "si", "sí", "por favor", "porfa", "pf",
            "muchas", "muchísimas", "mil", "por todo", "por tu ayuda", "por su ayuda",
            "por la ayuda", "por ayudarme", "por tu tiempo", "igualmente", "amigo", "amiga",
            "de nuevo", "otra vez", "señor", "señora", "bot", "todo",
        ),
    },
    "pt": {
        BYE: (
            "tchau", "tchau tchau", "xau", "adeus", "até logo", "até mais", "até breve",
            "até amanhã", "até a próxima", "até depois", "falou", "flw", "fui",
            "é isso", "e isso", "só isso", "era isso", "era só isso", "nada mais",
            "tenha um bom dia", "tenha um ótimo dia", "se cuida", "terminei", "acabou",
        ),
        THANKS: (
            "obrigado", "obrigada", "obg", "brigado", "brigada", "valeu", "vlw",
            "muito obrigado", "muito obrigada", "muitíssimo obrigado", "agradeço",
        ),
        CANCEL: (
            "cancelar", "cancela", "cancele", "quero cancelar", "cancela tudo", "sair",
            "quero sair", "parar", "pare", "para", "encerrar", "finalizar", "desistir",
            "desisto", "esquece", "esquece isso", "deixa pra lá", "deixa para lá",
            "deixa quieto",
        ),
        FILLER: (
            "ok", "okay", "beleza", "blz", "bom", "bem", "tá", "ta", "tá bom", "ta bom",
            "certo", "perfeito", "ótimo", "otimo", "show", "então", "e", "sim", "por favor",
            "pf", "pfv", "muito", "mesmo", "pela ajuda", "por tudo", "por ajudar",
            "pela atenção", "igualmente", "pra você também", "amigo", "amiga", "de novo",
            "bot", "tudo",
        ),
    },
}


class KeywordDetector:
    """The built-in detector: closing phrases plus filler, nothing else, in the configured
    languages. `extra` adds phrases per category ("bye", "thanks", "cancel", "filler").
    With `thanks_closes=True` a bare "thanks" also closes (as thanks_bye)."""

    def __init__(
        self,
        languages: Iterable[str] = ("en", "es", "pt"),
        *,
        extra: Mapping[str, Iterable[str]] | None = None,
        thanks_closes: bool = False,
    ) -> None:
        self.languages = tuple(languages)
        unknown = [lang for lang in self.languages if lang not in PHRASES]
        if unknown:
            raise ConfigurationError(
                f"no built-in phrases for language(s) {unknown}; known: {sorted(PHRASES)} "
                "(add your own with extra={'bye': [...], 'cancel': [...]})"
            )
        self.thanks_closes = thanks_closes
        self._table: dict[tuple[str, ...], tuple[str, str | None]] = {}
        for lang in self.languages:
            for category, table in PHRASES[lang].items():
                self._add(category, table, lang)
        for category, phrases in (extra or {}).items():
            if category not in (BYE, THANKS, CANCEL, FILLER):
                raise ConfigurationError(
                    f"unknown phrase category {category!r}; use bye, thanks, cancel or filler"
                )
            self._add(category, phrases, None)
        self._longest = max((len(p) for p in self._table), default=1)

    def _add(self, category: str, phrases: Iterable[str], lang: str | None) -> None:
        for phrase in phrases:
            words = tuple(normalize(phrase).split())
            if not words:
                continue
            known = self._table.get(words)
            # a closing meaning wins over filler when languages share a word ("para", "e")
            if known is None or known[0] == FILLER:
                self._table[words] = (category, lang)

    def detect(self, text: str, *, language: str | None = None) -> EndIntent | None:
        words = normalize(text or "").split()
        if not words or len(words) > 4 * self._longest:
            return None  # empty, or far too long to be only a farewell
        found: dict[str, tuple[str, str | None]] = {}
        i = 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 0, -1):
                hit = self._table.get(tuple(words[i : i + size]))
                if hit is not None:
                    category, lang = hit
                    if category != FILLER:
                        found.setdefault(category, (" ".join(words[i : i + size]), lang))
                    i += size
                    break
            else:
                return None  # a word that is neither closing nor filler: not a farewell
        if CANCEL in found:
            phrase, lang = found[CANCEL]
            return EndIntent(EndKind.CANCEL, phrase, lang or language)
        if BYE in found:
            phrase, lang = found[BYE]
            kind = EndKind.THANKS_BYE if THANKS in found else EndKind.GOODBYE
            return EndIntent(kind, phrase, lang or language)
        if THANKS in found and self.thanks_closes:
            phrase, lang = found[THANKS]
            return EndIntent(EndKind.THANKS_BYE, phrase, lang or language)
        return None


class ReplyKeywords:
    """Closing keywords in the bot's own reply (seed 004: "credentials delivered", "hasta
    pronto"): matched as whole words, ignoring case, accents and punctuation."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = tuple(k for k in (normalize(w) for w in keywords) if k)
        if not self.keywords:
            raise ConfigurationError("ReplyKeywords needs at least one non-empty keyword")

    def match(self, reply: str | None) -> str | None:
        if not reply:
            return None
        text = f" {normalize(reply)} "
        for keyword in self.keywords:
            if f" {keyword} " in text:
                return keyword
        return None


DEFAULT_DETECTOR = KeywordDetector()


async def detect_end(
    text: str | None, detector: DetectorLike | None = None, *, language: str | None = None
) -> EndIntent | None:
    """Run `detector` (default: the built-in one), sync or async, on `text`."""
    if not text:
        return None
    chosen: Any = DEFAULT_DETECTOR if detector is None else detector
    if isinstance(chosen, EndDetector):
        result = chosen.detect(text, language=language)
    elif callable(chosen):
        result = chosen(text)
    else:
        raise ConfigurationError(
            f"{chosen!r} is not a detector: give an object with detect(text) or a function"
        )
    if inspect.isawaitable(result):
        result = await result
    if result is not None and not isinstance(result, EndIntent):
        raise ConfigurationError(
            f"detector {chosen!r} returned {result!r}; it must return an EndIntent or None"
        )
    return result


async def close_if_ended(
    session: Any,
    text: str | None,
    *,
    detector: DetectorLike | None = None,
    reply: str | None = None,
    reply_keywords: ReplyKeywords | Iterable[str] | None = None,
    language: str | None = None,
) -> EndIntent | None:
    """Close `session` (when the update commits) if the user's `text` ends the conversation or
    the bot's `reply` contains one of `reply_keywords`. Returns what was recognised."""
    intent = await detect_end(text, detector, language=language)
    if intent is None and reply_keywords is not None:
        keywords = (
            reply_keywords if isinstance(reply_keywords, ReplyKeywords)
            else ReplyKeywords(reply_keywords)
        )
        keyword = keywords.match(reply)
        if keyword is not None:
            intent = EndIntent(EndKind.REPLY, keyword, language)
    if intent is not None:
        session.close(intent.reason)
    return intent
