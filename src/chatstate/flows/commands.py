"""Escape commands (/cancel, /back, /help, /start, /reset, /skip), their aliases in English,
Spanish and Portuguese, and the built-in reply texts in those languages.

Escapes run before any step's handler, so a step can never swallow "/cancel". A command is
recognised from `Incoming.command` ("/cancelar", "/back@my_bot 2") and, when `plain_words` is on,
from a message that is exactly one alias word ("cancel", "voltar").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from ..model import Incoming
from .suggest import fold


class Escape(enum.StrEnum):
    CANCEL = "cancel"  # leave the flow, say so, remove keyboards
    BACK = "back"  # previous step, from the bounded back stack
    HELP = "help"  # help for the current step
    START = "start"  # main menu (leaves the flow)
    RESET = "reset"  # clear the session's data
    SKIP = "skip"  # skip an optional step


DEFAULT_ALIASES: dict[Escape, tuple[str, ...]] = {
    Escape.CANCEL: ("cancel", "stop", "quit", "exit", "cancelar", "salir", "sair", "parar"),
    Escape.BACK: ("back", "previous", "atras", "volver", "regresar", "voltar", "anterior"),
    Escape.HELP: ("help", "ayuda", "ajuda"),
    Escape.START: ("start", "menu", "inicio", "comenzar", "comecar", "iniciar"),
    Escape.RESET: ("reset", "restart", "reiniciar", "restablecer", "resetar"),
    Escape.SKIP: ("skip", "saltar", "omitir", "pular"),
}

# Words that are also ordinary answers ("menu" could be a product, "anterior" an address part)
# are recognised as escapes only with a slash; the rest also as a bare one-word message.
_SLASH_ONLY = frozenset({"menu", "inicio", "start", "iniciar", "comenzar", "comecar", "anterior",
                         "previous", "restart", "stop", "exit", "quit", "parar", "sair", "salir"})


@dataclass(frozen=True)
class Commands:
    """Which escapes exist and what they are called. Per-flow `Flow.escapes` narrows the set."""

    aliases: Mapping[Escape, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ALIASES)
    )
    plain_words: bool = True

    def __post_init__(self) -> None:
        lookup: dict[str, Escape] = {}
        for escape, names in self.aliases.items():
            for name in names:
                key = fold(name).lstrip("/")
                if key in lookup and lookup[key] is not escape:
                    raise ConfigurationError(
                        f"alias {name!r} is given to both /{lookup[key].value} and /{escape.value}"
                    )
                lookup[key] = Escape(escape)
        object.__setattr__(self, "_lookup", lookup)

    def with_aliases(self, escape: Escape | str, *names: str) -> Commands:
        """A copy with extra aliases for `escape` (e.g. another language)."""
        escape = Escape(escape)
        merged = dict(self.aliases)
        merged[escape] = (*merged.get(escape, ()), *names)
        return Commands(aliases=merged, plain_words=self.plain_words)

    def match(self, incoming: Incoming) -> Escape | None:
        lookup: dict[str, Escape] = self._lookup  # type: ignore[attr-defined]
        if incoming.command:
            return lookup.get(fold(incoming.command))
        if self.plain_words and incoming.text and incoming.payload is None:
            word = fold(incoming.text).strip(" .!¡?¿")
            if word and " " not in word and word not in _SLASH_ONLY:
                return lookup.get(word)
        return None


ALL_ESCAPES: frozenset[Escape] = frozenset(Escape)


def escape_set(names: Iterable[Escape | str] | None) -> frozenset[Escape]:
    if names is None:
        return ALL_ESCAPES
    return frozenset(Escape(n) for n in names)


# ----------------------------------------------------------------------------------- texts
# Built-in replies of the runner. Override any of them with FlowRunner(texts={"en": {...}}).

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "cancelled": "❌ Cancelled: {flow}. Use /start to begin again.",
        "nothing_to_cancel": "There is nothing to cancel.",
        "back_none": "You are at the first step; there is nothing to go back to.",
        "back_bad_arg": "/back takes an optional number of steps, e.g. /back 2.",
        "help_header": "ℹ️ {flow}, step: {step}.",
        "help_commands": "You can use: {commands}.",
        "reset": "🔄 Session reset. All data cleared.",
        "menu": "What would you like to do?",
        "fallback": "I didn't understand that. Here's what I can do:",
        "fallback_in_flow": "I didn't understand that.",
        "unknown_command": "I don't know the command /{command}.",
        "busy_in_flow": "You are in the middle of {flow}. Finish it, or /cancel first.",
        "empty": "I didn't get any text. Please type your answer.",
        "attachment": "I can't use a {kind} here; please type your answer instead.",
        "too_long": "That message is too long ({length} characters); please keep it under {limit}.",
        "stale_button": "That button belongs to an earlier question.",
        "unknown_button": "That button is no longer valid.",
        "old_version": "This form was updated since you started it.",
        "restarted": "This form was updated since you started it, so we start again.",
        "flow_gone": "{flow} is no longer available.",
        "attempt": "(attempt {attempt} of {max})",
        "exhausted": "❌ Too many invalid attempts. {flow} was cancelled. Use /start to try again.",
        "skipped": "Skipped.",
        "not_skippable": "This step can't be skipped.",
        "handoff": "I'm passing you to a person who can help. Please wait.",
        "error": "⚠️ Something went wrong on our side. Your answers are kept; please try again, "
                 "or /cancel.",
        "completed": "✅ Done.",
    },
    "es": {
        "cancelled": "❌ Cancelado: {flow}. Usa /start para empezar de nuevo.",
        "nothing_to_cancel": "No hay nada que cancelar.",
        "back_none": "Estás en el primer paso; no hay nada atrás.",
        "back_bad_arg": "/back acepta un número opcional de pasos, p. ej. /back 2.",
        "help_header": "ℹ️ {flow}, paso: {step}.",
        "help_commands": "Puedes usar: {commands}.",
        "reset": "🔄 Sesión reiniciada. Se borraron todos los datos.",
        "menu": "¿Qué quieres hacer?",
        "fallback": "No entendí eso. Esto es lo que puedo hacer:",
        "fallback_in_flow": "No entendí eso.",
        "unknown_command": "No conozco el comando /{command}.",
        "busy_in_flow": "Estás en medio de {flow}. Termínalo o usa /cancelar primero.",
        "empty": "No recibí texto. Escribe tu respuesta, por favor.",
        "attachment": "No puedo usar un {kind} aquí; escribe tu respuesta, por favor.",
        "too_long": "El mensaje es demasiado largo ({length} caracteres); el límite es {limit}.",
        "stale_button": "Ese botón es de una pregunta anterior.",
        "unknown_button": "Ese botón ya no es válido.",
        "old_version": "Este formulario cambió desde que empezaste.",
        "restarted": "Este formulario cambió desde que empezaste; empezamos de nuevo.",
        "flow_gone": "{flow} ya no está disponible.",
        "attempt": "(intento {attempt} de {max})",
        "exhausted": "❌ Demasiados intentos no válidos. Se canceló {flow}. Usa /start para "
                     "intentarlo de nuevo.",
        "skipped": "Omitido.",
        "not_skippable": "Este paso no se puede omitir.",
        "handoff": "Te paso con una persona que puede ayudarte. Espera, por favor.",
        "error": "⚠️ Algo falló de nuestro lado. Tus respuestas se conservan; inténtalo de nuevo "
                 "o usa /cancelar.",
        "completed": "✅ Listo.",
    },
    "pt": {
        "cancelled": "❌ Cancelado: {flow}. Use /start para começar de novo.",
        "nothing_to_cancel": "Não há nada para cancelar.",
        "back_none": "Você está no primeiro passo; não há nada para voltar.",
        "back_bad_arg": "/back aceita um número opcional de passos, p. ex. /back 2.",
        "help_header": "ℹ️ {flow}, passo: {step}.",
        "help_commands": "Você pode usar: {commands}.",
        "reset": "🔄 Sessão reiniciada. Todos os dados foram apagados.",
        "menu": "O que você quer fazer?",
        "fallback": "Não entendi. Veja o que posso fazer:",
        "fallback_in_flow": "Não entendi.",
        "unknown_command": "Não conheço o comando /{command}.",
        "busy_in_flow": "Você está no meio de {flow}. Termine ou use /cancelar antes.",
        "empty": "Não recebi texto. Por favor, digite sua resposta.",
        "attachment": "Não posso usar um {kind} aqui; por favor, digite sua resposta.",
        "too_long": "A mensagem é longa demais ({length} caracteres); o limite é {limit}.",
        "stale_button": "Esse botão é de uma pergunta anterior.",
        "unknown_button": "Esse botão não é mais válido.",
        "old_version": "Este formulário mudou desde que você começou.",
        "restarted": "Este formulário mudou desde que você começou; vamos recomeçar.",
        "flow_gone": "{flow} não está mais disponível.",
        "attempt": "(tentativa {attempt} de {max})",
        "exhausted": "❌ Tentativas inválidas demais. {flow} foi cancelado. Use /start para "
                     "tentar de novo.",
        "skipped": "Pulado.",
        "not_skippable": "Este passo não pode ser pulado.",
        "handoff": "Vou passar você para uma pessoa que pode ajudar. Aguarde, por favor.",
        "error": "⚠️ Algo deu errado do nosso lado. Suas respostas foram mantidas; tente de novo "
                 "ou use /cancelar.",
        "completed": "✅ Pronto.",
    },
}

ESCAPE_HELP: dict[str, dict[Escape, str]] = {
    "en": {Escape.CANCEL: "/cancel to stop", Escape.BACK: "/back for the previous step",
           Escape.HELP: "/help", Escape.START: "/start for the menu",
           Escape.RESET: "/reset to clear everything", Escape.SKIP: "/skip to skip this step"},
    "es": {Escape.CANCEL: "/cancelar para salir", Escape.BACK: "/atras para el paso anterior",
           Escape.HELP: "/ayuda", Escape.START: "/start para el menú",
           Escape.RESET: "/reiniciar para borrar todo", Escape.SKIP: "/saltar para omitir"},
    "pt": {Escape.CANCEL: "/cancelar para sair", Escape.BACK: "/voltar para o passo anterior",
           Escape.HELP: "/ajuda", Escape.START: "/start para o menu",
           Escape.RESET: "/reiniciar para apagar tudo", Escape.SKIP: "/pular para pular"},
}


def language_of(incoming: Incoming, supported: Iterable[str]) -> str:
    """The supported language closest to the user's ("pt-BR" -> "pt"), English otherwise."""
    wanted = (incoming.language or "en").lower().replace("_", "-").split("-", 1)[0]
    return wanted if wanted in set(supported) else "en"
