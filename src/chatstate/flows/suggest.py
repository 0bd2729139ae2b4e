""""Did you mean ...?" for near misses among a known set of options.

Matching is case- and accent-insensitive: "cafe" finds "Café", "BANANA" finds "Banana".
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

MAX_ECHO = 60
"""Longest piece of user text echoed back in a reply (a 100 KB message is never echoed whole)."""


def fold(text: str) -> str:
    """Case-fold and strip accents and surrounding space, for comparing what people type."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` shortened to `limit` characters (with an ellipsis) for echoing back to the user."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def find_exact(text: str, options: Iterable[str]) -> str | None:
    """The option equal to `text` ignoring case and accents, if any."""
    wanted = fold(text)
    for option in options:
        if fold(option) == wanted:
            return option
    return None


def suggest(text: str, options: Iterable[str], *, limit: int = 3, cutoff: float = 0.6) -> list[str]:
    """Options close to `text`, best first: close spellings, then options that start with or
    contain what was typed (so "ban" suggests "Banana")."""
    choices = list(dict.fromkeys(options))
    wanted = fold(text)
    if not wanted or not choices or len(wanted) > 200:
        return []
    by_folded: dict[str, str] = {}
    for option in choices:
        by_folded.setdefault(fold(option), option)
    close = difflib.get_close_matches(wanted, list(by_folded), n=limit, cutoff=cutoff)
    found = [by_folded[f] for f in close]
    if len(found) < limit and len(wanted) >= 2:
        for folded, option in by_folded.items():
            if option not in found and (folded.startswith(wanted) or wanted in folded):
                found.append(option)
                if len(found) == limit:
                    break
    return found


def did_you_mean(text: str, options: Iterable[str], *, limit: int = 3) -> str | None:
    """A ready-made 'Did you mean X or Y?' sentence, or None when nothing is close."""
    found = suggest(text, options, limit=limit)
    if not found:
        return None
    if len(found) == 1:
        return f"Did you mean {found[0]}?"
    return f"Did you mean {', '.join(found[:-1])} or {found[-1]}?"
