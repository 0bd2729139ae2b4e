"""(De)serialisation of session records: schema versions, migrations, repair, size limit and
optional encryption of the record's `data` and of message contents.

A store owns one Codec. `decode` never returns a half-valid record: it migrates, repairs what it
can (a bad field falls back to its default) and raises `CorruptRecordError` for the rest, which the
engine turns into a quarantine and a fresh session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import msgspec

from .errors import CorruptRecordError, EncryptionError, InvalidDataError, RecordTooLarge
from .model import SCHEMA_VERSION, Message, SessionRecord, Summary

log = logging.getLogger("chatstate.codec")

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns a raw record dict of schema version N into one of version N+1."""

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
_ENC_FIELD = "$enc"


class Encryptor(Protocol):
    """Symmetric encryption of small payloads (see `chatstate.crypto`)."""

    def encrypt(self, plaintext: bytes) -> str: ...

    def decrypt(self, token: str) -> bytes: ...


# Built-in migrations, keyed by the version they migrate *from*. Version 1 is the first layout.
BUILTIN_MIGRATIONS: dict[int, Migration] = {}


class _PackedMessage(Message, array_like=True):
    """Message read from `Codec.pack_message`'s positional form. New Message fields must be
    appended after the existing ones (tests/test_codec.py pins the order), or stored history
    would be misread."""


PACKED_MESSAGE_FIELDS = msgspec.structs.fields(Message)
_PACKED_DEFAULTS = tuple(
    f.default if f.default is not msgspec.NODEFAULT
    else f.default_factory() if f.default_factory is not msgspec.NODEFAULT else None
    for f in PACKED_MESSAGE_FIELDS
)
_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(_PackedMessage)


class Codec:
    def __init__(
        self,
        *,
        format: Literal["json", "msgpack"] = "json",
        migrations: Mapping[int, Migration] | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        encryptor: Encryptor | None = None,
    ) -> None:
        self.format = format
        self.migrations = {**BUILTIN_MIGRATIONS, **(migrations or {})}
        self.max_record_bytes = max_record_bytes
        self.encryptor = encryptor
        # Called with (key, reset field names) when decode repairs a record (the engine emits
        # a `session.repaired` event from it).
        self.on_repair: Callable[[str, list[str]], None] | None = None
        if format == "json":
            self._enc: Any = msgspec.json.Encoder()
            self._dec: Any = msgspec.json.Decoder(SessionRecord)
            self._raw_dec: Any = msgspec.json.Decoder()
            self._msg_dec: Any = msgspec.json.Decoder(Message)
            self._sum_dec: Any = msgspec.json.Decoder(Summary)
        elif format == "msgpack":
            self._enc = msgspec.msgpack.Encoder()
            self._dec = msgspec.msgpack.Decoder(SessionRecord)
            self._raw_dec = msgspec.msgpack.Decoder()
            self._msg_dec = msgspec.msgpack.Decoder(Message)
            self._sum_dec = msgspec.msgpack.Decoder(Summary)
        else:
            raise ValueError(f"unknown codec format {format!r}; use 'json' or 'msgpack'")

    # -- records ---------------------------------------------------------------------------

    def encode(self, record: SessionRecord) -> bytes:
        if self.encryptor is not None and record.data:
            record = msgspec.structs.replace(record, data=self._seal(record.data))
        try:
            raw: bytes = self._enc.encode(record)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidDataError(
                f"session {record.key!r} holds data that cannot be stored as JSON ({exc}); "
                "store only str, int, float, bool, None, lists and dicts with string keys"
            ) from exc
        if len(raw) > self.max_record_bytes:
            raise RecordTooLarge(record.key, len(raw), self.max_record_bytes)
        return raw

    def decode(self, raw: bytes, key: str = "?") -> SessionRecord:
        try:
            record: SessionRecord = self._dec.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            record = self._decode_slow(raw, key)
        else:
            if record.schema_version != SCHEMA_VERSION or not record.id or not record.key:
                record = self._decode_slow(raw, key)
        if self.encryptor is not None:
            record.data = self._open(record.data, key)
        elif len(record.data) == 1 and isinstance(record.data.get(_ENC_FIELD), str):
            raise EncryptionError(
                f"session {key!r} is encrypted but no key is configured; set "
                "CHATSTATE_ENCRYPTION_KEY (or CHATSTATE_ENCRYPTION_KEYS=new,old)"
            )
        return record

    def _decode_slow(self, raw: bytes, key: str) -> SessionRecord:
        """Migrate and repair a record the fast typed decode refused."""
        try:
            doc = self._raw_dec.decode(raw)
        except msgspec.DecodeError as exc:
            raise CorruptRecordError(key, raw, f"not valid {self.format}: {exc}") from None
        if not isinstance(doc, dict):
            raise CorruptRecordError(key, raw, f"expected an object, found {type(doc).__name__}")
        version = doc.get("schema_version", 1)
        if not isinstance(version, int) or version < 1:
            version = 1
        if version > SCHEMA_VERSION:
            raise CorruptRecordError(
                key, raw,
                f"written by a newer chatstate (schema {version} > {SCHEMA_VERSION}); upgrade",
            )
        while version < SCHEMA_VERSION:
            step = self.migrations.get(version)
            if step is None:
                raise CorruptRecordError(key, raw, f"no migration from schema {version}")
            try:
                doc = step(doc)
            except Exception as exc:
                raise CorruptRecordError(key, raw, f"migration {version} failed: {exc}") from None
            version += 1
            doc["schema_version"] = version
        return self._repair(doc, key, raw)

    def _repair(self, doc: dict[str, Any], key: str, raw: bytes) -> SessionRecord:
        for required in ("id", "key"):
            if not isinstance(doc.get(required), str) or not doc.get(required):
                raise CorruptRecordError(key, raw, f"field {required!r} is missing or invalid")
        repaired: list[str] = []
        fields = {f.name: f for f in msgspec.structs.fields(SessionRecord)}
        for name in list(doc):
            if name not in fields:
                continue
            try:
                msgspec.convert({"id": "x", "key": "x", name: doc[name]}, SessionRecord)
            except msgspec.ValidationError:
                del doc[name]
                repaired.append(name)
        try:
            record = msgspec.convert(doc, SessionRecord)
        except msgspec.ValidationError as exc:  # pragma: no cover - every field was checked
            raise CorruptRecordError(key, raw, str(exc)) from None
        record.schema_version = SCHEMA_VERSION
        if repaired:
            log.warning("repaired session %s: reset fields %s to defaults", key, repaired)
            if self.on_repair is not None:
                self.on_repair(key, repaired)
        return record

    # -- history ---------------------------------------------------------------------------

    def encode_message(self, message: Message) -> bytes:
        if self.encryptor is not None and message.content:
            sealed = self.encryptor.encrypt(self._enc.encode(message.content))
            message = msgspec.structs.replace(message, content=[{_ENC_FIELD: sealed}])
        try:
            out: bytes = self._enc.encode(message)
            return out
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidDataError(f"message cannot be stored as JSON: {exc}") from exc

    def pack_message(self, message: Message) -> bytes:
        """The compact binary form of a message for stores that keep history as bytes: a
        msgpack array of Message's fields in declaration order, trailing defaults left out
        (no field names, so a short message costs a few bytes over its text).
        `decode_message` reads both this and `encode_message`'s form."""
        if self.encryptor is not None and message.content:
            sealed = self.encryptor.encrypt(self._enc.encode(message.content))
            message = msgspec.structs.replace(message, content=[{_ENC_FIELD: sealed}])
        m = message
        row = [m.role, m.content, m.seq, m.name, m.tool_call_id, m.tool_calls, m.turn_id,
               m.metadata, m.created_at, m.tokens, m.usage]
        while len(row) > 1 and row[-1] == _PACKED_DEFAULTS[len(row) - 1]:
            row.pop()
        try:
            return _PACK.encode(row)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidDataError(f"message cannot be stored: {exc}") from exc

    def decode_message(self, raw: bytes) -> Message:
        message: Message
        if raw and 0x90 <= raw[0] <= 0x9F:  # a msgpack array: pack_message's form
            packed: Any = _UNPACK.decode(raw)
            packed.__class__ = Message  # same layout; a plain Message encodes as an object
            message = packed
        else:
            message = self._msg_dec.decode(raw)
        content = message.content
        if (
            isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict)
            and _ENC_FIELD in content[0]
        ):
            if self.encryptor is None:
                raise EncryptionError(
                    "history is encrypted but no key is configured; set CHATSTATE_ENCRYPTION_KEY"
                )
            message.content = self._raw_dec.decode(self.encryptor.decrypt(content[0][_ENC_FIELD]))
        return message

    def encode_summary(self, summary: Summary) -> bytes:
        if self.encryptor is not None:
            summary = msgspec.structs.replace(
                summary, content=_ENC_FIELD + self.encryptor.encrypt(summary.content.encode())
            )
        out: bytes = self._enc.encode(summary)
        return out

    def decode_summary(self, raw: bytes) -> Summary:
        summary: Summary = self._sum_dec.decode(raw)
        if summary.content.startswith(_ENC_FIELD):
            if self.encryptor is None:
                raise EncryptionError(
                    "summaries are encrypted but no key is configured; set CHATSTATE_ENCRYPTION_KEY"
                )
            summary.content = self.encryptor.decrypt(summary.content[len(_ENC_FIELD):]).decode()
        return summary

    # -- plain values ----------------------------------------------------------------------

    def dumps(self, value: Any) -> bytes:
        out: bytes = self._enc.encode(value)
        return out

    def loads(self, raw: bytes) -> Any:
        return self._raw_dec.decode(raw)

    # -- encryption of `data` --------------------------------------------------------------

    def _seal(self, data: dict[str, Any]) -> dict[str, Any]:
        assert self.encryptor is not None
        return {_ENC_FIELD: self.encryptor.encrypt(msgspec.json.encode(data))}

    def _open(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        assert self.encryptor is not None
        token = data.get(_ENC_FIELD) if len(data) == 1 else None
        if not isinstance(token, str):
            return data  # written before encryption was turned on
        opened = msgspec.json.decode(self.encryptor.decrypt(token))
        if not isinstance(opened, dict):
            raise CorruptRecordError(key, b"", "decrypted data is not an object")
        return opened
