"""Encryption at rest for session data and history (AES-256-GCM from `cryptography`).

    encryptor = Encryptor.from_env()            # CHATSTATE_ENCRYPTION_KEY(S), or None
    store = open_store(url); enable_encryption(store, encryptor)

What is encrypted: the record's `data`, the content of history messages and summaries (see
`codec.Codec`). Keys, status, timestamps, labels and counters stay readable so that the store can
index, list and aggregate without the key.

Keys are 32 random bytes written as URL-safe base64 (``chatstate keygen`` / `generate_key()`).
Rotation: list the new key first and the old ones after it,
``CHATSTATE_ENCRYPTION_KEYS=new,old``. New writes use the first key; every token names the key
that sealed it (an 8-hex-digit fingerprint), so old data stays readable until it is rewritten.
A token sealed with a key that is not configured, or one that fails authentication, raises
`EncryptionError` naming the fingerprint: never garbage.

Why AES-GCM rather than Fernet: it is authenticated like Fernet, about half the size of a Fernet
token for small payloads (no HMAC block, 12-byte nonce) and faster, and the key-fingerprint prefix
gives rotation without trying every key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .errors import ConfigurationError, EncryptionError

if TYPE_CHECKING:
    from .stores.base import Store

ENV_KEY = "CHATSTATE_ENCRYPTION_KEY"
ENV_KEYS = "CHATSTATE_ENCRYPTION_KEYS"
_PREFIX = "g1"  # format marker: "g1.<fingerprint>.<base64url(nonce + ciphertext + tag)>"
_NONCE_BYTES = 12


def generate_key() -> str:
    """A new random AES-256 key in the form the environment variables take."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def fingerprint(key: bytes) -> str:
    """A short public name for a key (never enough to recover it)."""
    return hashlib.sha256(b"chatstate-key-id:" + key).hexdigest()[:8]


def _decode_key(text: str, position: int) -> bytes:
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (16, 24, 32):
        # The key itself is never echoed: error messages end up in logs.
        raise ConfigurationError(
            f"encryption key #{position + 1} is not 16, 24 or 32 bytes of URL-safe base64 "
            f"(got {len(cleaned)} characters); generate one with `chatstate keygen` or "
            "python -c 'from chatstate.crypto import generate_key; print(generate_key())'"
        )
    return raw


class Encryptor:
    """Implements `codec.Encryptor`: `encrypt(bytes) -> str` and `decrypt(str) -> bytes`."""

    def __init__(self, keys: Iterable[str | bytes]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - cryptography is in the extras
            raise ConfigurationError(
                "encryption needs the cryptography package; install it with: "
                "pip install 'chatstate[crypto]'"
            ) from exc
        raw_keys = [
            k if isinstance(k, bytes) else _decode_key(k, i) for i, k in enumerate(keys)
        ]
        if not raw_keys:
            raise ConfigurationError(
                f"no encryption key given; set {ENV_KEY} (or {ENV_KEYS}=new,old to rotate)"
            )
        for i, k in enumerate(raw_keys):
            if len(k) not in (16, 24, 32):
                raise ConfigurationError(f"encryption key #{i + 1} must be 16, 24 or 32 bytes")
        self._ciphers = {fingerprint(k): AESGCM(k) for k in raw_keys}
        self.primary = fingerprint(raw_keys[0])
        self.fingerprints = [fingerprint(k) for k in raw_keys]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Encryptor | None:
        """Keys from CHATSTATE_ENCRYPTION_KEYS (comma separated, newest first) and/or
        CHATSTATE_ENCRYPTION_KEY (the newest). None when neither is set."""
        env = os.environ if environ is None else environ
        keys: list[str] = []
        single = env.get(ENV_KEY, "").strip()
        if single:
            keys.append(single)
        for part in env.get(ENV_KEYS, "").split(","):
            if part.strip() and part.strip() not in keys:
                keys.append(part.strip())
        return cls(keys) if keys else None

    def encrypt(self, plaintext: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.primary].encrypt(nonce, plaintext, self.primary.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_PREFIX}.{self.primary}.{body}"

    def decrypt(self, token: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        parts = token.split(".", 2) if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise EncryptionError(
                "stored value is not a chatstate encryption token (it may have been written by "
                "another tool or truncated)"
            )
        _, key_id, body = parts
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            configured = ", ".join(self.fingerprints)
            raise EncryptionError(
                f"data was encrypted with key {key_id}, which is not configured (configured: "
                f"{configured}); add the old key after the new one: {ENV_KEYS}=new,old"
            )
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise EncryptionError(f"encrypted value (key {key_id}) is not valid base64") from None
        if len(blob) <= _NONCE_BYTES:
            raise EncryptionError(f"encrypted value (key {key_id}) is truncated")
        try:
            return cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise EncryptionError(
                f"encrypted value failed authentication with key {key_id}: it was modified or "
                "the key with this fingerprint is a different key"
            ) from None

    def __repr__(self) -> str:  # never shows key material
        return f"<Encryptor primary={self.primary} keys={len(self.fingerprints)}>"


def enable_encryption(store: Store, encryptor: Encryptor | None) -> Store:
    """Make `store` encrypt data and history with `encryptor` (None leaves it as it is)."""
    if encryptor is not None:
        store.codec.encryptor = encryptor
    return store
