from __future__ import annotations

import pytest

from chatstate.errors import InvalidKeyError
from chatstate.model import Incoming, Scope, SessionKey, Status, new_record


def test_key_canonical_form_and_parse_round_trip() -> None:
    key = SessionKey.user_in_chat("telegram", -100123, 42)
    assert str(key) == "telegram:user_in_chat:-100123:42"
    assert SessionKey.parse(str(key)) == key
    assert hash(SessionKey.parse(str(key))) == hash(key)
    assert key.scope is Scope.USER_IN_CHAT and key.ids == ("-100123", "42")


@pytest.mark.parametrize(
    ("factory", "text"),
    [
        (lambda: SessionKey.user("discord", "u1"), "discord:user:u1"),
        (lambda: SessionKey.chat("whatsapp", "+5491234"), "whatsapp:chat:+5491234"),
        (lambda: SessionKey.thread("telegram", -1, 7), "telegram:thread:-1:7"),
        (lambda: SessionKey.global_user("ada"), "global:global_user:ada"),
    ],
)
def test_each_scope_has_one_canonical_form(factory, text) -> None:  # type: ignore[no-untyped-def]
    assert str(factory()) == text
    assert SessionKey.parse(text) == factory()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("telegram", "user", ""), "empty"),
        (("telegram", "user", "a:b"), "separator"),
        (("telegram", "user", "a{b"), "separator"),
        (("telegram", "user", "a b"), "separator"),
        (("telegram", "planet", "1"), "unknown scope"),
        (("Telegram!", "user", "1"), "platform"),
        (("telegram", "user_in_chat", "1"), "takes 2"),
        (("telegram", "user", None), "string or an integer"),
    ],
)
def test_bad_keys_are_rejected_with_a_clear_error(args, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidKeyError, match=message):
        SessionKey(*args)


@pytest.mark.parametrize("text", ["", "telegram", "telegram:user", "telegram:user:1:2", 42])
def test_parse_rejects_malformed_strings(text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidKeyError):
        SessionKey.parse(text)


def test_new_record_is_complete() -> None:
    record = new_record(SessionKey.user("cli", 1), now=100.0)
    assert record.status is Status.ACTIVE
    assert record.created_at == record.last_activity == 100.0
    assert record.data == {} and record.counters.messages == 0 and record.version == 0
    assert record.platform == "cli" and record.scope == "user"


def test_incoming_parses_commands() -> None:
    msg = Incoming.from_text("/start@my_bot ref42 extra", user_id="1")
    assert msg.command == "start" and msg.args == ["ref42", "extra"]
    assert Incoming.from_text("hello").command is None
    assert Incoming.from_text("/Help").command == "help"
