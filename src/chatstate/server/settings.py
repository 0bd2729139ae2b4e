"""Service settings, read from `CHATSTATE_*` environment variables (or given in code)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from ..stores.url import DEFAULT_URL

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    name = host.strip().lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _keys(raw: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean; use true or false")


@dataclass(frozen=True)
class Settings:
    """Everything `create_app` needs. `Settings.from_env()` reads the environment.

    Keys are secrets: `repr()` shows how many there are, never their values.
    """

    store_url: str = DEFAULT_URL
    host: str = "127.0.0.1"
    port: int = 8000
    read_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    chat_key: str | None = field(default=None, repr=False)  # None: the chat is public
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    max_body_bytes: int = 64 * 1024
    chat_rate_per_minute: float = 30.0  # per user (or per client address when anonymous)
    chat_burst: int = 10
    max_message_chars: int = 4000
    lifecycle: bool = True  # run the lifecycle runner in-process
    bot: str | None = None  # "module:attribute"; None = the demo bot
    chat_platform: str = "web"
    cookie_name: str = "chatstate_uid"
    cookie_secure: bool = False
    sample_seconds: float = 60.0  # how often the active-session count is sampled
    series_bucket_seconds: int = 300  # width of one point of the active-sessions series
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        enc: list[str] = []
        if env.get("CHATSTATE_ENCRYPTION_KEY", "").strip():
            enc.append(env["CHATSTATE_ENCRYPTION_KEY"].strip())
        enc.extend(k for k in _keys(env.get("CHATSTATE_ENCRYPTION_KEYS")) if k not in enc)
        values: dict[str, object] = {
            "store_url": env.get("CHATSTATE_STORE_URL", "").strip() or DEFAULT_URL,
            "host": env.get("CHATSTATE_HOST", "").strip() or "127.0.0.1",
            "port": _int(env, "CHATSTATE_PORT", 8000, minimum=0),
            "read_keys": _keys(env.get("CHATSTATE_API_KEYS_READ")),
            "admin_keys": _keys(env.get("CHATSTATE_API_KEYS_ADMIN")),
            "chat_key": env.get("CHATSTATE_CHAT_KEY", "").strip() or None,
            "cors_origins": _keys(env.get("CHATSTATE_CORS_ORIGINS")),
            "max_body_bytes": _int(env, "CHATSTATE_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            "chat_rate_per_minute": _float(env, "CHATSTATE_CHAT_RATE_PER_MINUTE", 30.0),
            "chat_burst": _int(env, "CHATSTATE_CHAT_BURST", 10, minimum=1),
            "lifecycle": _bool(env, "CHATSTATE_LIFECYCLE", True),
            "bot": env.get("CHATSTATE_BOT", "").strip() or None,
            "cookie_secure": _bool(env, "CHATSTATE_COOKIE_SECURE", False),
            "sample_seconds": _float(env, "CHATSTATE_SAMPLE_SECONDS", 60.0, minimum=1.0),
            "encryption_keys": tuple(enc),
            "log_level": env.get("CHATSTATE_LOG_LEVEL", "").strip().lower() or "info",
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def keys_configured(self) -> bool:
        return bool(self.read_keys or self.admin_keys)

    @property
    def open_local(self) -> bool:
        """No API keys and bound to loopback: the API and dashboard are open to this machine
        only (requests must name a loopback host, which defeats DNS rebinding)."""
        return not self.keys_configured and is_loopback(self.host)

    def check(self) -> None:
        """Refuse settings that would expose sessions to the network without a key."""
        if not self.keys_configured and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to serve on {self.host} without API keys: anyone on the network "
                "could read and change sessions. Set CHATSTATE_API_KEYS_ADMIN (and optionally "
                "CHATSTATE_API_KEYS_READ) to comma-separated secrets, or bind to 127.0.0.1"
            )
        overlap = set(self.read_keys) & set(self.admin_keys)
        if overlap:
            raise ConfigurationError(
                "a key is listed both in CHATSTATE_API_KEYS_READ and CHATSTATE_API_KEYS_ADMIN; "
                "an admin key can already read, list it only as admin"
            )
        for key in (*self.read_keys, *self.admin_keys, *(k for k in [self.chat_key] if k)):
            if len(key) < 16:
                raise ConfigurationError(
                    "API keys must be at least 16 characters (generate one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
