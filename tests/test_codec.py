from __future__ import annotations

import msgspec
import pytest

from chatstate.codec import Codec
from chatstate.errors import CorruptRecordError, InvalidDataError, RecordTooLarge
from chatstate.model import SCHEMA_VERSION, Message, SessionKey, new_record


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_round_trip(fmt: str) -> None:
    codec = Codec(format=fmt)  # type: ignore[arg-type]
    record = new_record(SessionKey.user("cli", 1), now=5.0, data={"a": [1, {"b": None}]})
    record.counters.messages = 3
    assert codec.decode(codec.encode(record)) == record


def test_bad_field_is_repaired_to_its_default() -> None:
    codec = Codec()
    seen: list[tuple[str, list[str]]] = []
    codec.on_repair = lambda key, fields: seen.append((key, fields))
    record = new_record(SessionKey.user("cli", 1), now=5.0, data={"keep": 1})
    doc = msgspec.json.decode(codec.encode(record))
    doc["counters"] = "garbage"
    doc["status"] = "exploded"
    repaired = codec.decode(msgspec.json.encode(doc), "k")
    assert repaired.data == {"keep": 1}
    assert repaired.counters.messages == 0
    assert repaired.status.value == "active"
    assert seen and set(seen[0][1]) == {"counters", "status"}


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1,2]", b'{"data": {}}', b'{"id": "", "key": "k"}'],
)
def test_unrepairable_records_raise_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        Codec().decode(raw, "k")


def test_newer_schema_is_not_guessed_at() -> None:
    raw = msgspec.json.encode({"id": "x", "key": "k", "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(CorruptRecordError, match="newer"):
        Codec().decode(raw, "k")


def test_migrations_run_in_a_chain_on_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatstate.codec as codec_module
    import chatstate.model as model_module

    monkeypatch.setattr(codec_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(model_module, "SCHEMA_VERSION", 3)

    def v1_to_v2(doc: dict) -> dict:  # type: ignore[type-arg]
        doc["data"]["name"] = doc["data"].pop("nm")
        return doc

    def v2_to_v3(doc: dict) -> dict:  # type: ignore[type-arg]
        doc["state"] = "migrated"
        return doc

    codec = Codec(migrations={1: v1_to_v2, 2: v2_to_v3})
    raw = msgspec.json.encode({"id": "x", "key": "k", "schema_version": 1, "data": {"nm": "Ada"}})
    record = codec.decode(raw, "k")
    assert record.data == {"name": "Ada"} and record.state == "migrated"
    assert record.schema_version == 3


def test_non_json_data_is_a_typed_error() -> None:
    record = new_record(SessionKey.user("cli", 1), data={"when": object()})
    with pytest.raises(InvalidDataError, match="JSON"):
        Codec().encode(record)


def test_oversized_record_is_refused() -> None:
    record = new_record(SessionKey.user("cli", 1), data={"blob": "x" * 2000})
    with pytest.raises(RecordTooLarge, match="limit of 1000"):
        Codec(max_record_bytes=1000).encode(record)


class _XorEncryptor:
    def encrypt(self, plaintext: bytes) -> str:
        return bytes(b ^ 0x55 for b in plaintext).hex()

    def decrypt(self, token: str) -> bytes:
        return bytes(b ^ 0x55 for b in bytes.fromhex(token))


def test_encryption_hook_covers_data_and_messages() -> None:
    codec = Codec(encryptor=_XorEncryptor())
    # Upper-case text: it cannot appear by chance in the record's hex id or digits.
    record = new_record(SessionKey.user("cli", 1), data={"card": "VISA-4111"})
    raw = codec.encode(record)
    assert b"VISA" not in raw
    assert codec.decode(raw).data == {"card": "VISA-4111"}
    message = Message(role="user", content="my secret")
    raw_message = codec.encode_message(message)
    assert b"secret" not in raw_message
    assert codec.decode_message(raw_message).content == "my secret"
    packed = codec.pack_message(message)
    assert b"secret" not in packed
    assert codec.decode_message(packed).content == "my secret"


PACKED_SAMPLES = [
    Message(role="user"),
    Message(role="user", content="hello", seq=7, tokens=2, created_at=1_700_000_000.25,
            turn_id="t7"),
    Message(role="assistant", seq=8, tool_calls=[{"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": "{}"}}], usage={"prompt_tokens": 9}),
    Message(role="tool", content=[{"type": "text", "text": "42"}], tool_call_id="c1",
            name="lookup", metadata={"platform_id": 5}),
]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("message", PACKED_SAMPLES)
def test_packed_messages_round_trip_beside_the_other_form(fmt: str, message: Message) -> None:
    codec = Codec(format=fmt)  # type: ignore[arg-type]
    packed = codec.pack_message(message)
    decoded = codec.decode_message(packed)
    assert decoded == message and type(decoded) is Message
    # A message read back from the packed form still encodes as an object for APIs.
    assert msgspec.json.decode(msgspec.json.encode(decoded))["role"] == message.role
    # History written before the packed form existed still reads.
    assert codec.decode_message(codec.encode_message(message)) == message
    assert len(packed) < len(codec.encode_message(message))


def test_packed_message_field_order_is_frozen() -> None:
    # Stored packed history is positional: Message may only grow fields at the end.
    names = [f.name for f in msgspec.structs.fields(Message)]
    assert names[:11] == [
        "role", "content", "seq", "name", "tool_call_id", "tool_calls", "turn_id", "metadata",
        "created_at", "tokens", "usage",
    ]


def test_unstorable_packed_message_is_a_typed_error() -> None:
    with pytest.raises(InvalidDataError):
        Codec().pack_message(Message(role="user", metadata={"x": object()}))
