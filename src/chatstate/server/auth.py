"""API keys and roles.

Roles: `read` (look at sessions, analytics, metrics), `admin` (also change and delete them) and
`chat` (talk to the bot: the chat key, or anyone when no chat key is set). An admin key passes every
check. A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; never in the URL,
where it would end up in access logs.

With no read/admin keys configured the service only starts on a loopback address, and then lets
requests through without a key as long as they name a loopback host (``Host: 127.0.0.1:8000``):
a web page elsewhere cannot reach it by DNS rebinding, and a cross-site form cannot post to it
(`Origin` must be loopback too on changes). Keys are compared as SHA-256 digests in constant time
and never logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .problems import Problem
from .settings import Settings, is_loopback

log = logging.getLogger("chatstate.server.auth")


class Role(enum.StrEnum):
    PUBLIC = "public"
    CHAT = "chat"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    role: Role  # the strongest role the request proved
    key_id: str | None  # first 8 hex digits of the key's digest (safe to log); None: no key


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False, description="an API key (read or admin) or the chat key")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, other header")


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys: list[tuple[bytes, Role]] = [
            (_digest(k), Role.ADMIN) for k in settings.admin_keys
        ]
        self._keys += [(_digest(k), Role.READ) for k in settings.read_keys]
        if settings.chat_key:
            self._keys.append((_digest(settings.chat_key), Role.CHAT))
        self.open_local = settings.open_local

    def identify(self, key: str | None) -> Principal | None:
        """The role a key grants, or None for an unknown key."""
        if not key:
            return None
        digest = _digest(key)
        found: Role | None = None
        for known, role in self._keys:  # check them all: timing does not reveal which matched
            if hmac.compare_digest(known, digest) and found is None:
                found = role
        return None if found is None else Principal(found, digest.hex()[:8])

    def check_local(self, request: Request) -> None:
        """Open-local mode: the request must come for a loopback host (and origin)."""
        try:
            host = urlsplit("//" + (request.headers.get("host") or "")).hostname or ""
        except ValueError:
            host = ""
        if not is_loopback(host):
            raise Problem(
                403,
                "this server has no API keys and accepts requests for localhost only; open it "
                "as http://127.0.0.1:<port>/ or configure CHATSTATE_API_KEYS_ADMIN",
            )
        origin = request.headers.get("origin")
        if origin and request.method not in _SAFE_METHODS:
            origin_host = urlsplit(origin).hostname or ""
            if not is_loopback(origin_host):
                raise Problem(403, f"cross-site request from {origin} refused")

    async def key_of(self, request: Request) -> str | None:
        """The key `request` sends, read by the same security schemes as the dependency."""
        bearer = await _bearer(request)
        if bearer is not None:
            return bearer.credentials
        header_key: str | None = await _header(request)
        return header_key

    def admits(self, key: str | None, role: Role) -> bool:
        """True when the dependency for `role` lets a request with `key` through on the key
        alone (False for a refusal and for the open-local mode's host check: a caller taking
        a shortcut leaves those to the dependency)."""
        principal = self.identify(key)
        if principal is not None:
            return _allows(principal.role, role)
        if key:
            return False
        return role is Role.PUBLIC or (role is Role.CHAT and not self.settings.chat_key)

    def dependency(self, role: Role) -> Callable[..., Awaitable[Principal]]:
        """A FastAPI dependency that lets the request through only with `role` (or better)."""
        settings = self.settings

        async def require(
            request: Request,
            bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
            header_key: str | None = Depends(_header),
        ) -> Principal:
            key = bearer.credentials if bearer is not None else header_key
            principal = self.identify(key)
            if key and principal is None:
                raise Problem(
                    401, "the API key is not valid; check the key you configured "
                    "(CHATSTATE_API_KEYS_READ / CHATSTATE_API_KEYS_ADMIN / CHATSTATE_CHAT_KEY)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if principal is not None:
                if _allows(principal.role, role):
                    return principal
                raise Problem(
                    403,
                    f"this key has the {principal.role.value} role; {request.method} "
                    f"{request.url.path} needs the {role.value} role",
                )
            # No key at all.
            if role is Role.PUBLIC or (role is Role.CHAT and not settings.chat_key):
                return Principal(Role.PUBLIC, None)
            if self.open_local:
                self.check_local(request)
                return Principal(Role.ADMIN, None)
            raise Problem(
                401,
                f"{request.method} {request.url.path} needs a key with the {role.value} role; "
                "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

        require.__name__ = f"require_{role.value}"
        return require


def _allows(have: Role, need: Role) -> bool:
    if need is Role.PUBLIC or have is Role.ADMIN:
        return True
    if need is Role.CHAT:
        return have is Role.CHAT
    if need is Role.READ:
        return have is Role.READ
    return False
