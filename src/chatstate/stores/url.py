"""Store URLs: memory://, sqlite:///path, redis://, rediss://, redis+cluster://, postgresql://."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigurationError
from .base import Store

DEFAULT_URL = "sqlite:///chatstate.db"

# scheme -> (module, class, extra to install)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("chatstate.stores.memory", "MemoryStore", None),
    "sqlite": ("chatstate.stores.sqlite", "SQLiteStore", None),
    "redis": ("chatstate.stores.redis", "RedisStore", "redis"),
    "rediss": ("chatstate.stores.redis", "RedisStore", "redis"),
    "redis+cluster": ("chatstate.stores.redis", "RedisStore", "redis"),
    "postgresql": ("chatstate.stores.postgres", "PostgresStore", "postgres"),
    "postgres": ("chatstate.stores.postgres", "PostgresStore", "postgres"),
}


def open_store(url: str | None = None, **options: Any) -> Store:
    """Create (not yet connect) the store a URL names. Query parameters become options."""
    url = url or DEFAULT_URL
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store URL {url!r} is not valid; use memory://, sqlite:///path/to/file.db, "
            "redis://host:6379/0 or postgresql://user@host/db"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigurationError(f"unknown store URL scheme {scheme!r}; use one of {known}")
    module_name, class_name, extra = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ConfigurationError(
            f"the {scheme}:// store needs an optional dependency ({exc.name}); "
            f"install it with: pip install 'chatstate[{extra}]'"
        ) from exc
    cls = getattr(module, class_name)
    store: Store = cls.from_url(url, **options)
    return store


def query_options(url: str) -> dict[str, str]:
    """The query-string options of a store URL (e.g. ?synchronous=full)."""
    return dict(parse_qsl(urlsplit(url).query))
