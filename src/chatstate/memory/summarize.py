"""Rolling summaries: what to summarise, and the summarisers.

A summariser is any async callable taking a `SummaryRequest` and returning the summary text.
Two are provided: `ExtractiveSummarizer` (built in, offline and deterministic: it keeps the most
informative sentences) and `OpenAICompatibleSummarizer` (any OpenAI-compatible chat endpoint;
base URL and key from the environment; needs httpx, imported only when used).

Summaries stack: a new summary folds the previous one (`SummaryRequest.previous`) together with the
newly covered messages, and replaces it.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, SummaryError
from ..model import Message, Summary
from .history import split_turns
from .tokens import TokenCounter, fit_text


@dataclass(frozen=True)
class SummaryRequest:
    """What a summariser gets: the previous summary (to fold in), the messages it now covers,
    and the token limit for the answer."""

    previous: Summary | None
    messages: Sequence[Message]
    max_tokens: int
    counter: TokenCounter
    session_key: str = ""

    def transcript(self) -> str:
        """The covered messages as plain "role: text" lines (tool calls named)."""
        return "\n".join(_line(m) for m in self.messages)


Summarizer = Callable[[SummaryRequest], Awaitable[str]]


def _line(message: Message) -> str:
    text = message.text.strip()
    if message.tool_calls:
        names = ", ".join(
            str(call.get("function", {}).get("name") or call.get("name") or "tool")
            for call in message.tool_calls
        )
        text = f"{text} [called {names}]".strip()
    who = message.name or message.role
    return f"{who}: {text}"


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class SummaryPlan:
    """Messages `start_seq`..`end_seq` (and the previous summary) are to be folded into one
    new summary; `covered_tokens` is what they cost in a context today."""

    previous: Summary | None
    messages: list[Message]
    start_seq: int
    end_seq: int
    covered_tokens: int
    kept_tokens: int


def plan_summary(
    previous: Summary | None,
    uncovered: Sequence[Message],
    *,
    counter: TokenCounter,
    keep_tokens: int,
    min_messages: int,
) -> SummaryPlan | None:
    """Choose what to summarise from the messages after the summaries (oldest first): keep the
    newest whole turns worth at most `keep_tokens` (always at least the newest turn) and cover
    everything before them. None when there is nothing worth summarising."""
    if len(uncovered) < min_messages:
        return None
    turns = split_turns(uncovered)
    kept_tokens = 0
    keep_from = len(turns)
    for index in range(len(turns) - 1, -1, -1):
        cost = sum(counter.count_message(m) for m in turns[index])
        if keep_from < len(turns) and kept_tokens + cost > keep_tokens:
            break
        kept_tokens += cost
        keep_from = index
    covered = [m for turn in turns[:keep_from] for m in turn]
    if not covered:
        return None
    covered_tokens = sum(counter.count_message(m) for m in covered)
    start = previous.start_seq if previous is not None else covered[0].seq
    if previous is not None:
        covered_tokens += previous.tokens
    return SummaryPlan(
        previous=previous,
        messages=covered,
        start_seq=start,
        end_seq=covered[-1].seq,
        covered_tokens=covered_tokens,
        kept_tokens=kept_tokens,
    )


# ---------------------------------------------------------------------------------------------
# The built-in extractive summariser

_STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have he her him his
    how i if in into is it its just let me my no not of on or our she so than that the their them
    then there these they this to too us was we were what when where which who why will with would
    you your yes ok okay sure please thanks thank hi hello hey also about all any some more very
    i'm it's that's don't can't i'll you're we're""".split()
)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD_RE = re.compile(r"[\w'-]+", re.UNICODE)


@dataclass
class ExtractiveSummarizer:
    """Keeps the sentences that carry the most of the conversation's vocabulary, in their
    original order, within the token limit. Offline and deterministic.

    Sentences of the previous summary compete with the new ones (with a bonus, since they already
    survived a selection), so facts from early in the conversation persist across stacked
    summaries. User sentences get a bonus: what the user asked and told is what a later turn most
    often needs.
    """

    previous_bonus: float = 1.5
    user_bonus: float = 1.3
    header: str = ""
    stopwords: frozenset[str] = field(default_factory=lambda: _STOPWORDS)

    async def __call__(self, request: SummaryRequest) -> str:
        return self.summarize(request)

    def summarize(self, request: SummaryRequest) -> str:
        # (text as written into the summary, text that is scored, bonus), in conversation order
        candidates: list[tuple[str, str, float]] = []
        seen: set[str] = set()

        def offer(written: str, scored: str, bonus: float) -> None:
            marker = scored.casefold()
            if marker not in seen:  # a repeated sentence is kept once
                seen.add(marker)
                candidates.append((written, scored, bonus))

        if request.previous is not None:
            for sentence in _sentences(request.previous.content):
                offer(sentence, _unprefixed(sentence), self.previous_bonus)
        for message in request.messages:
            if message.role == "system":
                continue
            bonus = self.user_bonus if message.role == "user" else 1.0
            who = (message.name or message.role).capitalize()
            if message.tool_calls:
                names = ", ".join(
                    str(call.get("function", {}).get("name") or call.get("name") or "a tool")
                    for call in message.tool_calls
                )
                offer(f"{who} called {names}.", f"called {names}", 0.5)
            for sentence in _sentences(message.text):
                offer(f"{who}: {sentence}", sentence, bonus)
        frequencies = Counter(
            word for _, scored, _ in candidates for word in set(self._words(scored))
        )
        ranked: list[tuple[float, int]] = []
        for index, (_, scored, bonus) in enumerate(candidates):
            words = self._words(scored)
            if not words:
                continue  # greetings, "ok thanks": nothing worth keeping
            score = sum(frequencies[w] for w in set(words)) / math.sqrt(len(words)) * bonus
            if any(ch.isdigit() for ch in scored):
                score *= 1.2  # numbers (dates, amounts, ids) are facts worth keeping
            ranked.append((score, index))
        ranked.sort(key=lambda item: (-item[0], item[1]))
        chosen: list[int] = []
        used = request.counter.count(self.header)
        for _score, index in ranked:
            cost = request.counter.count(candidates[index][0]) + 1
            if used + cost > request.max_tokens:
                continue
            chosen.append(index)
            used += cost
        chosen.sort()
        body = " ".join(candidates[i][0] for i in chosen)
        return f"{self.header}{body}" if body else ""

    def _words(self, sentence: str) -> list[str]:
        return [
            w for w in (m.lower() for m in _WORD_RE.findall(sentence))
            if len(w) > 2 and w not in self.stopwords
        ]


def _unprefixed(sentence: str) -> str:
    """A summary sentence without its "Who: " prefix."""
    head, sep, rest = sentence.partition(": ")
    return rest if sep and len(head) <= 32 and " " not in head else sentence


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s and s.strip()]


# ---------------------------------------------------------------------------------------------
# Any OpenAI-compatible chat endpoint

DEFAULT_PROMPT = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Rewrite the previous summary (if any) together with the new messages into one concise "
    "summary in the third person. Keep names, facts, numbers, decisions, open questions and the "
    "user's preferences; drop greetings and small talk. Answer with the summary only, at most "
    "{max_tokens} tokens."
)


class OpenAICompatibleSummarizer:
    """Summarises through any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, Azure
    OpenAI's compatible route, vLLM, Ollama, llama.cpp server, LiteLLM...).

    Configuration, first found wins: the arguments, then ``CHATSTATE_LLM_BASE_URL`` /
    ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), ``CHATSTATE_LLM_API_KEY`` /
    ``OPENAI_API_KEY`` and ``CHATSTATE_SUMMARY_MODEL`` (default ``gpt-4o-mini``).
    `last_usage` holds the usage the endpoint reported for the latest call.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        temperature: float = 0.0,
        prompt: str = DEFAULT_PROMPT,
        transport: Any = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        env = os.environ
        self.base_url = (
            base_url or env.get("CHATSTATE_LLM_BASE_URL") or env.get("OPENAI_BASE_URL")
            or "https://api.openai.com/v1"
        ).rstrip("/")
        self.api_key = api_key or env.get("CHATSTATE_LLM_API_KEY") or env.get("OPENAI_API_KEY")
        if self.api_key is None and self.base_url.startswith("https://api.openai.com"):
            raise ConfigurationError(
                "the OpenAI summariser needs an API key: set OPENAI_API_KEY (or "
                "CHATSTATE_LLM_API_KEY), or point CHATSTATE_LLM_BASE_URL at a local endpoint"
            )
        self.model = model or env.get("CHATSTATE_SUMMARY_MODEL") or "gpt-4o-mini"
        self.timeout = timeout
        self.temperature = temperature
        self.prompt = prompt
        self.transport = transport  # an httpx transport, for tests and custom networking
        self.extra_body = dict(extra_body or {})
        self.last_usage: dict[str, Any] | None = None
        self._client: Any = None

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:
                raise ConfigurationError(
                    "the OpenAI-compatible summariser needs httpx; install it with: "
                    "pip install 'chatstate[server]' (or pip install httpx)"
                ) from exc
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=headers, timeout=self.timeout,
                transport=self.transport,
            )
        return self._client

    async def __call__(self, request: SummaryRequest) -> str:
        user = []
        if request.previous is not None:
            user.append(f"Previous summary:\n{request.previous.content}\n")
        user.append(f"New messages:\n{request.transcript()}")
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt.format(max_tokens=request.max_tokens)},
                {"role": "user", "content": "\n".join(user)},
            ],
            "max_tokens": request.max_tokens,
            "temperature": self.temperature,
            **self.extra_body,
        }
        client = self._http()
        try:
            response = await client.post("/chat/completions", json=body)
        except Exception as exc:  # httpx.HTTPError and transport failures
            raise SummaryError(f"summary endpoint {self.base_url} failed: {exc!r}") from exc
        if response.status_code >= 400:
            raise SummaryError(
                f"summary endpoint {self.base_url} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise SummaryError(
                f"summary endpoint {self.base_url} returned an unexpected body: {exc!r}"
            ) from exc
        self.last_usage = payload.get("usage") if isinstance(payload, dict) else None
        return content if isinstance(content, str) else ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def bound_summary(counter: TokenCounter, text: str, max_tokens: int) -> str:
    """The summary text trimmed to `max_tokens` at a sentence or word boundary."""
    return fit_text(counter, text.strip(), max_tokens)
