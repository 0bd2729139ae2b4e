"""Encryption at rest: data and history sealed on every store, key rotation, clear errors."""

from __future__ import annotations

import pytest

from chatstate.crypto import Encryptor, enable_encryption, generate_key
from chatstate.engine import SessionManager
from chatstate.errors import ConfigurationError, EncryptionError
from chatstate.model import Message, SessionRef
from chatstate.stores.base import Store

NEW = generate_key()
OLD = generate_key()


def test_round_trip_and_tokens_name_their_key() -> None:
    enc = Encryptor([NEW])
    token = enc.encrypt(b"secret payload")
    assert token.startswith(f"g1.{enc.primary}.") and b"secret" not in token.encode()
    assert enc.decrypt(token) == b"secret payload"
    assert enc.encrypt(b"x") != enc.encrypt(b"x")  # fresh nonce every time
    assert NEW not in repr(enc)


def test_wrong_missing_and_tampered_keys_are_clear_errors() -> None:
    token = Encryptor([OLD]).encrypt(b"data")
    with pytest.raises(EncryptionError, match="CHATSTATE_ENCRYPTION_KEYS=new,old"):
        Encryptor([NEW]).decrypt(token)
    body = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(EncryptionError, match="failed authentication"):
        Encryptor([OLD]).decrypt(body)
    with pytest.raises(EncryptionError, match="not a chatstate encryption token"):
        Encryptor([OLD]).decrypt("plain text")


def test_keys_from_the_environment() -> None:
    assert Encryptor.from_env({}) is None
    rotated = Encryptor.from_env({"CHATSTATE_ENCRYPTION_KEYS": f"{NEW},{OLD}"})
    assert rotated is not None and rotated.fingerprints[0] == Encryptor([NEW]).primary
    assert rotated.decrypt(Encryptor([OLD]).encrypt(b"old")) == b"old"
    with pytest.raises(ConfigurationError, match="not 16, 24 or 32 bytes") as err:
        Encryptor.from_env({"CHATSTATE_ENCRYPTION_KEY": "too-short"})
    assert "too-short" not in str(err.value)  # a bad key is never echoed


async def test_sessions_are_encrypted_at_rest_on_every_store(store: Store) -> None:
    enable_encryption(store, Encryptor([OLD]))
    manager = SessionManager(store)
    async with manager.session("web:user:enc") as s:
        s.data["card"] = "4111-1111"
        s.append(Message(role="user", content="my password is hunter2"))

    # Rotation: the new key first, the old one still listed, reads old data and writes new.
    store.codec.encryptor = Encryptor([NEW, OLD])
    record = await store.load("web:user:enc")
    assert record is not None and record.data["card"] == "4111-1111"
    ref = SessionRef(record.key, record.id)
    assert (await store.read_tail(ref, 10))[0].content == "my password is hunter2"
    async with manager.session("web:user:enc") as s:
        s.data["more"] = 1

    # Only the new key: the record (rewritten) reads; the old message names the missing key.
    store.codec.encryptor = Encryptor([NEW])
    assert (await store.load("web:user:enc")).data["more"] == 1  # type: ignore[union-attr]
    with pytest.raises(EncryptionError, match=Encryptor([OLD]).primary):
        await store.read_tail(ref, 10)

    # No key at all: the stored data is sealed, so reading it is an error that says what to
    # set, never the ciphertext passed off as data.
    store.codec.encryptor = None
    with pytest.raises(EncryptionError, match="CHATSTATE_ENCRYPTION_KEY"):
        await store.load("web:user:enc")
    store.codec.encryptor = Encryptor([NEW, OLD])
