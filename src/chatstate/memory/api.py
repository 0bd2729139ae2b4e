"""`Memory`: LLM conversation memory over a `SessionManager`, on any store.

    memory = Memory(manager, config=MemoryConfig(token_limit=4000))
    async with manager.session(key) as s:
        await memory.add(s, "user", text)
        context = await memory.build_context(s, 4000, system=PROMPT, reserve_for_output=500)
        reply = await call_model(context.to_messages())
        await memory.add(s, "assistant", reply.text, usage=reply.usage, model="gpt-4o")

Messages are staged on the open `Session` and committed atomically with the record by the
engine; reads go to the store (tail and range reads only), except that a context starts from
the messages the previous one read and those this process committed since, kept decoded in a
small cache (`tail_cache`). Rolling summaries run after the update that crossed the threshold,
in the background, taking the session's lock only for the two short steps that plan and commit
them (never while the summariser runs), and at most one at a time per session, also across
processes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ChatstateError, InvalidMessageError, SummaryError
from ..events import Event
from ..model import Message, SessionKey, SessionRecord, SessionRef, Status, Summary
from ..session import Session
from ..stores.base import SessionFilter
from . import ledger
from .context import Context, assemble, summary_cost
from .history import (
    MEMORY_KEY,
    ForkLink,
    HistoryReader,
    MemoryState,
    SummaryClaim,
    forks_of,
    get_state,
    put_state,
)
from .stats import GlobalMemoryStats, SessionMemoryStats, global_stats, session_stats
from .summarize import (
    ExtractiveSummarizer,
    Summarizer,
    SummaryPlan,
    SummaryRequest,
    bound_summary,
    plan_summary,
)
from .tail_cache import TailCache, same_message
from .tokens import TokenCounter

if TYPE_CHECKING:
    from ..engine import SessionManager

log = logging.getLogger("chatstate.memory")

ROLES = ("system", "user", "assistant", "tool")

# Events emitted on the manager's bus.
MEMORY_SUMMARIZED = "memory.summarized"
MEMORY_SUMMARY_FAILED = "memory.summary_failed"
MEMORY_ARCHIVED = "memory.archived"

_CONTEXT_TOKENS = "_chatstate_context_tokens"  # Session.temp: estimate of the last context
_TAIL_HOOK = "_chatstate_tail_hook"  # Session.temp: the tail cache's on_commit is registered

Target = Session | SessionRecord | SessionKey | str
Archive = Callable[[SessionRecord, list[Message]], Awaitable[None]]


@dataclass(frozen=True)
class MemoryConfig:
    """Defaults from seed 001: summarise at 70% of a 4,000-token limit, keep the newest 30%,
    summaries of at most 500 tokens, never before 10 messages."""

    token_limit: int = 4000
    summarize_at: float = 0.7
    keep_recent: float = 0.3
    summary_max_tokens: int = 500
    min_messages: int = 10
    auto_summarize: bool = True
    summary_timeout: float = 120.0  # a summariser taking longer fails (and its claim expires)
    max_messages: int | None = None  # cap on stored history; only summarised messages go
    model: str | None = None  # the model contexts are built for (per-model token correction)
    # Sessions whose newest messages this process keeps decoded between turns (0: none), so
    # a context reads only what was committed since the last one (see `tail_cache`).
    context_cache: int = 256

    def __post_init__(self) -> None:
        if self.token_limit <= 0:
            raise ChatstateError("MemoryConfig.token_limit must be positive")
        if not 0 < self.summarize_at <= 1 or not 0 <= self.keep_recent < self.summarize_at:
            raise ChatstateError(
                "MemoryConfig needs 0 < keep_recent < summarize_at <= 1 (e.g. 0.3 and 0.7)"
            )
        if self.summary_max_tokens <= 0 or self.min_messages < 1:
            raise ChatstateError("summary_max_tokens and min_messages must be positive")
        if self.context_cache < 0:
            raise ChatstateError("MemoryConfig.context_cache must be 0 (off) or more")
        if self.max_messages is not None and self.max_messages < 1:
            raise ChatstateError("max_messages must be at least 1 (or None for no cap)")

    @property
    def threshold_tokens(self) -> int:
        return int(self.token_limit * self.summarize_at)

    @property
    def keep_tokens(self) -> int:
        return int(self.token_limit * self.keep_recent)


class Memory:
    def __init__(
        self,
        manager: SessionManager,
        *,
        counter: TokenCounter | None = None,
        config: MemoryConfig | None = None,
        summarizer: Summarizer | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.manager = manager
        self.config = config or MemoryConfig()
        self.counter = counter or TokenCounter(model=self.config.model)
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer()
        self.archive = archive
        self.reader = HistoryReader(manager.store)
        self._tails = TailCache(self.config.context_cache)
        self._running: set[str] = set()  # keys being summarised by this process
        self._tasks: dict[str, asyncio.Task[Summary | None]] = {}

    # -- writing ------------------------------------------------------------------------------

    async def add(
        self,
        session: Session,
        role: str,
        content: str | list[dict[str, Any]] = "",
        *,
        name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        turn_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        usage: Mapping[str, Any] | None = None,
        model: str | None = None,
        latency_ms: float | None = None,
        error: bool = False,
    ) -> Message:
        """Stage one message (committed with the update). Counts its tokens, links it to the
        turn in progress, keeps the ledger (tool calls, a tool result's `error`, the model call's
        `usage`), and schedules a summary once the threshold is crossed."""
        if role not in ROLES:
            raise InvalidMessageError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if role == "tool" and not tool_call_id:
            raise InvalidMessageError(
                "a tool result needs the id of the call it answers: pass tool_call_id=..."
            )
        if tool_calls is not None and role != "assistant":
            raise InvalidMessageError("only assistant messages carry tool_calls")
        message = Message(
            role=role, content=content, name=name, tool_call_id=tool_call_id,
            tool_calls=tool_calls, turn_id=turn_id, metadata=dict(metadata or {}),
        )
        if error:
            message.metadata["error"] = True
        self.stage(session, message)
        if usage is not None or model is not None:
            self.record_model_call(
                session, usage or {}, model=model, latency_ms=latency_ms, message=message
            )
        self._maybe_schedule(session)
        return message

    def stage(self, session: Session, *messages: Message) -> list[Message]:
        """Stage prebuilt messages (counting tokens, assigning turns, keeping the ledger)."""
        record = session.record
        state = self._state(record)
        for message in messages:
            if message.role not in ROLES:
                raise InvalidMessageError(f"unknown role {message.role!r}")
            if message.tokens <= 0:
                message.tokens = self.counter.content_tokens(message)
            session.append(message)
            if self._tails.max_sessions > 0 and _TAIL_HOOK not in session.temp:
                session.temp[_TAIL_HOOK] = True
                session.on_commit(lambda: self._remember_committed(session))
            if message.turn_id is None:
                if message.role == "user" or state.turn is None:
                    state.turn = str(message.seq)
                message.turn_id = state.turn
            else:
                state.turn = message.turn_id
            state.live_tokens += self.counter.count_message(message)
            state.live_messages += 1
            if message.tool_calls:
                record.counters.tool_calls += len(message.tool_calls)
            if message.role == "tool" and message.metadata.get("error"):
                record.usage.tool_errors += 1
        put_state(record, state)
        return list(messages)

    def record_model_call(
        self, session: Session, usage: Mapping[str, Any], *, model: str | None = None,
        latency_ms: float | None = None, message: Message | None = None,
    ) -> ledger.CallUsage:
        """Record a model call (totals, and the per-turn record on `message`, by default the
        newest staged assistant message). When this update built a context, the reported input
        tokens correct the counter's estimate for the model."""
        call = ledger.normalise_usage(
            usage, model=model or self.config.model, latency_ms=latency_ms
        )
        estimated = session.temp.get(_CONTEXT_TOKENS)
        model_name = call.model
        if isinstance(estimated, int) and call.input_tokens and model_name:
            call = msgspec.structs.replace(call, estimated_input_tokens=estimated)
            self.counter.observe(model_name, estimated, call.input_tokens)
        return ledger.record_model_call(session, call, message=message)

    def record_tool_call(self, session: Session, *, error: bool = False, count: int = 1) -> None:
        ledger.record_tool_call(session, error=error, count=count)

    def _state(self, record: SessionRecord) -> MemoryState:
        state = get_state(record)
        if state is None:
            # Unknown totals (history written without Memory, or data reset): the next
            # summarisation pass recounts from the store.
            state = MemoryState(live_tokens=-1 if record.counters.last_seq else 0)
        return state

    # -- reading ------------------------------------------------------------------------------

    async def record_of(self, target: Target) -> SessionRecord:
        if isinstance(target, Session):
            return target.record
        if isinstance(target, SessionRecord):
            return target
        record = await self.manager.get(target)
        if record is None:
            raise LookupError(f"no session stored for {target}")
        return record

    async def messages(
        self, target: Target, limit: int = 50, *, before_seq: int | None = None
    ) -> list[Message]:
        """The newest `limit` messages (before `before_seq`), oldest first; includes messages
        staged in an open session."""
        record = await self.record_of(target)
        staged = _staged(target)
        if before_seq is not None:
            staged = [m for m in staged if m.seq < before_seq]
        own = staged[-limit:] if limit > 0 else []
        rest = limit - len(own)
        floor = _staged_floor(target)
        older: list[Message] = []
        if rest > 0:
            before = before_seq
            if staged:
                before = min(staged[0].seq, before_seq or staged[0].seq)
            older = await self.reader.read_tail(record, rest, before_seq=before)
            older = [m for m in older if m.seq > floor]
        return older + own

    async def read_range(self, target: Target, start_seq: int, end_seq: int) -> list[Message]:
        record = await self.record_of(target)
        floor = _staged_floor(target)
        stored = await self.reader.read_range(record, max(start_seq, floor + 1), end_seq)
        staged = [m for m in _staged(target) if start_seq <= m.seq <= end_seq]
        return stored + staged

    async def summaries(self, target: Target) -> list[Summary]:
        record = await self.record_of(target)
        if isinstance(target, Session) and target.history.drop_summaries:
            stored: list[Summary] = []
        else:
            stored = await self.reader.summaries(record)
        if isinstance(target, Session):
            stored = stored + list(target.history.summaries)
        return stored

    async def count(self, target: Target) -> int:
        record = await self.record_of(target)
        return await self.reader.count(record) + len(_staged(target))

    async def search(self, target: Target, query: str, limit: int = 20) -> list[Message]:
        """Messages whose text contains every word of `query`, newest first (full-text search
        where the store has it, a scan otherwise)."""
        record = await self.record_of(target)
        return await self.reader.search(record, query, limit)

    async def build_context(
        self,
        target: Target,
        budget_tokens: int,
        *,
        system: str | None = None,
        reserve_for_output: int = 0,
        allow_partial_turn: bool = False,
        model: str | None = None,
    ) -> Context:
        """System prompt + summaries + newest whole turns within `budget_tokens` (minus
        `reserve_for_output`). Reads history newest first and stops when the budget is full.
        Raises `ContextOverflow` when the system prompt or the newest turn alone do not fit
        (unless `allow_partial_turn`)."""
        record = await self.record_of(target)
        state = get_state(record)
        summaries = await self.summaries(target)
        covered = max((s.end_seq for s in summaries), default=0)
        ratio = self.counter.correction(model or self.config.model)
        forked = state is not None and bool(state.forks)
        source = self._newest_first(target, record, covered, budget_tokens, forked)
        pending = state.live_messages if state is not None and state.live_tokens >= 0 else None
        # Budget in raw counted tokens: if the provider bills 10% more than we count, fit 10%
        # less (the correction learnt from reported usage).
        effective = int(budget_tokens / ratio) if ratio > 1.0 else budget_tokens
        context = await assemble(
            source,
            counter=self.counter,
            budget_tokens=effective,
            system=system,
            summaries=summaries,
            reserve_for_output=reserve_for_output,
            allow_partial_turn=allow_partial_turn,
            pending_messages=pending,
        )
        context.budget_tokens = budget_tokens
        if isinstance(target, Session):
            target.temp[_CONTEXT_TOKENS] = context.tokens
        return context

    async def _newest_first(
        self, target: Target, record: SessionRecord, covered: int, budget: int, forked: bool
    ) -> AsyncGenerator[Sequence[Message], None]:
        """Pages of the messages after `covered`, newest first: this update's staged ones,
        then the stored ones (from the tail cache where it can serve them)."""
        floor = max(covered, _staged_floor(target))
        staged = _staged(target)
        newest = [m for m in reversed(staged) if m.seq > floor]
        if newest:
            yield newest
        # Staged messages are newer than anything stored.
        stored_top = staged[0].seq - 1 if staged else record.counters.last_seq
        if stored_top <= floor:
            return
        # First page sized for the budget (~25 tokens a message), doubling after that.
        page = max(8, min(256, budget // 25))
        if self._tails.max_sessions <= 0 or forked:
            stored = self.reader.pages_backwards(
                record, page=page, stop_at=floor, before=stored_top + 1
            )
            try:
                async for chunk in stored:
                    yield chunk
            finally:
                await stored.aclose()
            return
        cached = self._cached_pages(record, stored_top, floor, page)
        try:
            async for page_of in cached:
                yield page_of
        finally:
            await cached.aclose()

    async def _cached_pages(
        self, record: SessionRecord, stored_top: int, floor: int, page: int
    ) -> AsyncGenerator[Sequence[Message], None]:
        """Stored messages newest first: the cached tail brought up to date with one range
        read, then older pages from the store (which join the cache as they are read). The
        cache keeps the pages the context read, so it follows the budget, not the
        conversation."""
        tails = self._tails
        known, low = await self._fresh_tail(record, stored_top)
        used = 0  # messages handed out, newest first
        try:
            end = len(known)
            while end > 0:
                chunk = known[max(0, end - page):end][::-1]
                end -= len(chunk)
                if chunk[-1].seq <= floor:
                    chunk = [m for m in chunk if m.seq > floor]
                    used += len(chunk)
                    yield chunk
                    return
                used += len(chunk)
                yield chunk
            if low <= floor + 1:
                return
            older = self.reader.pages_backwards(record, page=page, stop_at=floor, before=low)
            try:
                async for chunk in older:
                    if chunk:
                        known = [*reversed(chunk), *known]
                        tails.put(record.id, known, known[0].seq)
                    used += len(chunk)
                    yield chunk
            finally:
                await older.aclose()
        finally:
            if used and len(known) > used:
                keep = known[-used:]
                tails.put(record.id, keep, keep[0].seq)

    def _remember_committed(self, session: Session) -> None:
        """After a commit: this update's messages join the cached tail (when they continue
        it), so the next context needs no read for them."""
        record = session.record
        committed = session.history.append
        if not committed:
            return
        entry = self._tails.get(record.id)
        if entry is None or entry.high != committed[0].seq - 1:
            return  # nothing cached, or not contiguous: the next context reads the store
        dropped = record.counters.dropped_through
        messages = [*entry.messages, *committed]
        if dropped >= entry.low:  # this update dropped some: they leave the cache too
            messages = [m for m in messages if m.seq > dropped]
        if messages:
            self._tails.put(record.id, messages, max(entry.low, dropped + 1))
        else:
            self._tails.discard(record.id)

    async def _fresh_tail(
        self, record: SessionRecord, stored_top: int
    ) -> tuple[Sequence[Message], int]:
        """The cached tail of `record` (every stored message from seq `low` up, oldest
        first), checked against the record and extended by the messages committed since it was
        filled; ([], stored_top + 1) when nothing usable is cached."""
        tails = self._tails
        nothing: tuple[Sequence[Message], int] = ((), stored_top + 1)
        entry = tails.get(record.id)
        if entry is None:
            return nothing
        if stored_top < entry.high:  # history went back (replaced): nothing cached holds
            tails.discard(record.id)
            return nothing
        low = entry.low
        dropped = record.counters.dropped_through
        if dropped < low and stored_top == entry.high:
            return entry.messages, low  # the common case: nothing to copy or store again
        messages = list(entry.messages)
        if dropped >= low:
            messages = [m for m in messages if m.seq > dropped]
            low = dropped + 1
        if not messages:
            tails.discard(record.id)
            return nothing
        high = messages[-1].seq
        if stored_top > high:
            # Re-read the newest cached message too: it must still be the same one.
            fresh = await self.manager.store.read_range(record.ref, high, stored_top)
            if not fresh or not same_message(fresh[0], messages[-1]):
                tails.discard(record.id)
                return nothing
            messages.extend(fresh[1:])
        tails.put(record.id, messages, low)
        return messages, low

    # -- summaries ----------------------------------------------------------------------------

    def needs_summary(self, record: SessionRecord) -> bool:
        """True when the unsummarised history has crossed the threshold (or is uncounted)."""
        state = self._state(record)
        if state.live_tokens < 0:
            return True
        if state.live_messages < self.config.min_messages:
            return False
        return state.live_tokens + state.summary_tokens >= self.config.threshold_tokens

    def _maybe_schedule(self, session: Session) -> None:
        if not self.config.auto_summarize or not self.needs_summary(session.record):
            return
        key = str(session.key)
        if key in self._tasks or key in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._background(key))
        self._tasks[key] = task

    async def _background(self, key: str) -> Summary | None:
        try:
            return await self.summarize(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background summarisation of %s failed", key)
            return None
        finally:
            self._tasks.pop(key, None)

    async def wait_idle(self) -> None:
        """Wait for the background summaries started by this Memory."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        closer = getattr(self.summarizer, "aclose", None)
        if closer is not None:
            await closer()

    async def summarize(self, key: SessionKey | str, *, force: bool = False) -> Summary | None:
        """Summarise the session at `key` if it crossed the threshold (or `force`). Returns the
        committed summary, or None when nothing was due, another run is in progress, or the
        summariser failed (then `memory.summary_failed` is emitted and history is untouched)."""
        ks = str(SessionKey.coerce(key))
        if ks in self._running:
            return None
        self._running.add(ks)
        try:
            return await self._summarize(ks, force)
        finally:
            self._running.discard(ks)

    async def _summarize(self, ks: str, force: bool) -> Summary | None:
        manager = self.manager
        config = self.config
        token = uuid.uuid4().hex
        # Step 1, under the lock: recount, plan, and claim.
        try:
            async with manager.session(ks, message=False, create=False) as s:
                plan = await self._plan(s, force, token)
                session_id = s.id
        except LookupError:
            return None
        if plan is None:
            return None
        # Step 2, without the lock: the summariser may take seconds; appends go on meanwhile.
        previous = plan.previous
        request = SummaryRequest(
            previous=previous, messages=plan.messages, max_tokens=config.summary_max_tokens,
            counter=self.counter, session_key=ks,
        )
        text: str | None = None
        reason = ""
        try:
            raw = await asyncio.wait_for(self.summarizer(request), config.summary_timeout)
            if not isinstance(raw, str):
                raise SummaryError(f"the summariser returned {type(raw).__name__}, not text")
            text = bound_summary(self.counter, raw, config.summary_max_tokens)
            if not text:
                reason = "empty summary"
                text = None
        except asyncio.CancelledError:
            await self._release_claim(ks, token)
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("summariser failed for %s: %s; history left untouched", ks, reason)
        summary: Summary | None = None
        if text is not None:
            summary = Summary(
                start_seq=plan.start_seq, end_seq=plan.end_seq, content=text,
                tokens=self.counter.count(text), created_at=manager.clock.now(),
                metadata={"messages": len(plan.messages), "covered_tokens": plan.covered_tokens,
                          "stacked": previous is not None},
            )
            cost = summary_cost(self.counter, [summary])
            if cost >= plan.covered_tokens:
                reason = f"summary ({cost} tokens) is not shorter than what it covers " \
                         f"({plan.covered_tokens})"
                summary = None
        # Step 3, under the lock: commit if our claim still holds.
        committed = await self._commit_summary(ks, token, plan, summary)
        if summary is not None and committed:
            await manager.events.emit(Event(
                name=MEMORY_SUMMARIZED, key=ks, session_id=session_id, at=manager.clock.now(),
                data={"start_seq": summary.start_seq, "end_seq": summary.end_seq,
                      "tokens": summary.tokens, "covered_tokens": plan.covered_tokens},
            ))
            return summary
        if not reason:
            reason = "claim lost (the history changed or another run took over)"
        await manager.events.emit(Event(
            name=MEMORY_SUMMARY_FAILED, key=ks, session_id=session_id, at=manager.clock.now(),
            data={"reason": reason, "end_seq": plan.end_seq},
        ))
        return None

    async def _plan(self, s: Session, force: bool, token: str) -> SummaryPlan | None:
        record = s.record
        state = self._state(record)
        now = self.manager.clock.now()
        if state.claim is not None and state.claim.until > now:
            return None  # another process is summarising this session
        if not force and not self.needs_summary(record):
            return None
        summaries = await self.reader.summaries(record)
        previous = _fold(summaries)
        floor = previous.end_seq if previous is not None else 0
        uncovered: list[Message] = []
        async for message in self.reader.iter_backwards(record, page=256, stop_at=floor):
            uncovered.append(message)
        uncovered.reverse()
        # Recount (fixes totals that drifted or were lost with a data reset).
        state.live_messages = len(uncovered)
        state.live_tokens = sum(self.counter.count_message(m) for m in uncovered)
        state.summary_end = floor
        state.summary_tokens = summary_cost(self.counter, [previous]) if previous else 0
        plan = None
        if force or self.needs_summary_state(state):
            plan = plan_summary(
                previous, uncovered, counter=self.counter, keep_tokens=self.config.keep_tokens,
                min_messages=1 if force else self.config.min_messages,
            )
        if plan is not None:
            state.claim = SummaryClaim(token=token, until=now + self.config.summary_timeout + 30)
        put_state(record, state)
        return plan

    def needs_summary_state(self, state: MemoryState) -> bool:
        if state.live_messages < self.config.min_messages:
            return False
        return state.live_tokens + state.summary_tokens >= self.config.threshold_tokens

    async def _release_claim(self, ks: str, token: str) -> None:
        try:
            await self._commit_summary(ks, token, None, None)
        except Exception:
            log.warning("could not release the summary claim of %s", ks, exc_info=True)

    async def _commit_summary(
        self, ks: str, token: str, plan: SummaryPlan | None, summary: Summary | None
    ) -> bool:
        try:
            async with self.manager.session(ks, message=False, create=False) as s:
                record = s.record
                state = self._state(record)
                if state.claim is None or state.claim.token != token:
                    return False
                state.claim = None
                if summary is None or plan is None:
                    put_state(record, state)
                    return False
                if state.summary_end != (plan.previous.end_seq if plan.previous else 0):
                    put_state(record, state)
                    return False
                s.drop_summaries()
                s.add_summary(summary)
                covered_cost = plan.covered_tokens - (plan.previous.tokens if plan.previous else 0)
                state.live_tokens = max(0, state.live_tokens - covered_cost)
                state.live_messages = max(0, state.live_messages - len(plan.messages))
                state.summary_end = summary.end_seq
                state.summary_tokens = summary_cost(self.counter, [summary])
                put_state(record, state)
                await self._apply_cap(s, summary)
                return True
        except LookupError:
            return False
        return False  # not reached: the block returns

    async def _apply_cap(self, s: Session, summary: Summary) -> None:
        """Drop (after archiving) the oldest summarised messages beyond `max_messages`."""
        cap = self.config.max_messages
        if cap is None:
            return
        record = s.record
        stored = await self.manager.store.count_messages(record.ref)
        excess = stored - cap
        if excess <= 0:
            return
        through = min(summary.end_seq, record.counters.last_seq - cap)
        if through <= 0:
            return
        if self.archive is not None:
            old = await self.manager.store.read_range(record.ref, 1, through)
            try:
                await self.archive(record, old)
            except Exception:
                # Keep the messages: dropping what could not be archived would lose them.
                log.exception("archiving history of %s failed; nothing dropped", record.key)
                return
            await self.manager.events.emit(Event(
                name=MEMORY_ARCHIVED, key=record.key, session_id=record.id,
                at=self.manager.clock.now(), data={"through_seq": through, "messages": len(old)},
            ))
        s.drop_messages_through(through)

    # -- operations ---------------------------------------------------------------------------

    async def clear_messages(self, session: Session, *, keep_summaries: bool = True) -> None:
        """Forget the conversation's messages (seed 001's /reset), keeping the summaries unless
        `keep_summaries=False`. A fork also lets go of its parent's prefix."""
        record = session.record
        staged = session.history.append
        committed_last = (staged[0].seq - 1) if staged else record.counters.last_seq
        if committed_last > 0:
            session.drop_messages_through(committed_last)
        staged.clear()
        state = self._state(record)
        state.forks = []
        state.claim = None  # a summary in flight would describe deleted messages
        state.live_tokens = 0
        state.live_messages = 0
        state.turn = None
        if not keep_summaries:
            session.drop_summaries()
            session.history.summaries.clear()
            state.summary_tokens = 0
            state.summary_end = 0
        else:
            state.summary_end = max(state.summary_end, committed_last)
        put_state(record, state)

    async def fork(
        self,
        source: Target,
        new_key: SessionKey | str,
        *,
        at_seq: int | None = None,
        copy_data: bool = True,
    ) -> SessionRecord:
        """Start the session `new_key` as a branch of `source`: it shares the source's history
        up to `at_seq` (default: all of it) without copying a message, gets copies of the
        summaries within that prefix, and (with `copy_data`) a copy of its data and state.

        The branch reads its prefix from the parent: deleting the parent, or dropping its
        messages, shortens the branch's history too.
        """
        parent = await self.record_of(source)
        if isinstance(source, Session) and source.history.append:
            raise ChatstateError(
                "fork a session after its update committed (it has staged messages)"
            )
        last = parent.counters.last_seq
        seq = last if at_seq is None else at_seq
        if not 0 <= seq <= last:
            raise ChatstateError(f"at_seq must be between 0 and {last}, got {seq}")
        # The ancestors' segments up to `seq` (the last one cut at `seq`), then the parent's own.
        ancestry = forks_of(parent)
        own_after = ancestry[-1].seq if ancestry else 0
        forks: list[ForkLink] = []
        for link in ancestry:
            if link.after >= seq:
                break
            if link.seq > seq:
                cut = await self._count_range(SessionRef(link.key, link.id), link.after, seq)
                link = msgspec.structs.replace(link, seq=seq, count=cut)
            forks.append(link)
        if seq > own_after:
            if seq == last:
                count = await self.manager.store.count_messages(parent.ref)
            else:
                count = await self._count_range(parent.ref, own_after, seq)
            forks.append(
                ForkLink(key=parent.key, id=parent.id, seq=seq, after=own_after, count=count)
            )
        summaries = [s for s in await self.reader.summaries(parent) if s.end_seq <= seq]
        existing = await self.manager.get(new_key)
        if existing is not None and existing.status is Status.ACTIVE:
            raise ChatstateError(
                f"cannot fork into {new_key}: it already has an active session; clear it first"
            )
        async with self.manager.session(new_key, message=False) as child:
            if copy_data:
                child.record.data = msgspec.json.decode(msgspec.json.encode(parent.data))
                child.record.state = parent.state
            child.record.data.pop(MEMORY_KEY, None)
            state = MemoryState(forks=forks, live_tokens=-1)  # recounted when first needed
            previous = _fold(summaries)
            if previous is not None:
                child.add_summary(msgspec.structs.replace(previous))
                state.summary_end = previous.end_seq
                state.summary_tokens = summary_cost(self.counter, [previous])
            child.record.counters.last_seq = seq
            put_state(child.record, state)
            child.record.labels["forked_from"] = parent.id
            record = child.record
        return record

    async def _count_range(self, ref: SessionRef, after: int, upto: int) -> int:
        """Messages stored with after < seq <= upto (range reads of 1000)."""
        total = 0
        low = after + 1
        while low <= upto:
            high = min(upto, low + 999)
            total += len(await self.manager.store.read_range(ref, low, high))
            low = high + 1
        return total

    # -- statistics ---------------------------------------------------------------------------

    async def stats(self, target: Target) -> SessionMemoryStats:
        record = await self.record_of(target)
        return await session_stats(self.reader, record)

    async def global_stats(self, filter: SessionFilter | None = None) -> GlobalMemoryStats:
        return await global_stats(self.manager.store, filter)


def _fold(summaries: Sequence[Summary]) -> Summary | None:
    """The summary standing for everything summarised: the newest one, widened to the oldest
    start (several exist only if written by something else than the stacking summariser)."""
    if not summaries:
        return None
    newest = max(summaries, key=lambda s: s.end_seq)
    if len(summaries) == 1:
        return newest
    start = min(s.start_seq for s in summaries)
    content = "\n".join(s.content for s in sorted(summaries, key=lambda s: s.end_seq))
    tokens = sum(s.tokens for s in summaries)
    return msgspec.structs.replace(newest, start_seq=start, content=content, tokens=tokens)


def _staged(target: Target) -> list[Message]:
    return list(target.history.append) if isinstance(target, Session) else []


def _staged_floor(target: Target) -> int:
    """Messages at or below this seq are being dropped by the open update."""
    if isinstance(target, Session):
        return target.history.drop_messages_through or 0
    return 0
