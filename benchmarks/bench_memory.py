"""Agent memory workload: `python -m benchmarks.bench_memory [--quick] [--only ...]`.

Conversations of user/assistant turns, some with a tool call and its result. Per turn, each
system does what an agent does before and after a model call:

* chatstate (memory, sqlite, redis, postgres): open the session, stage the user message, build
  a 4,000-token context (summaries + newest whole turns; the process's tail cache serves the
  messages it read for the previous turn, so a turn reads only what was committed since),
  stage the tool call/result and the answer, commit (history rows appended atomically with the
  record). The "(store only)" rows do the same turn without the context, i.e. the storage cost
  alone. A context grows with the conversation until it fills its budget (~100 messages
  here), so its share of the turn is larger at turn 500 than at turn 10.
* LangGraph (InMemorySaver, SqliteSaver, PostgresSaver): one `invoke` of a minimal graph whose
  node appends the turn's messages to `MessagesState` (the checkpointer loads and re-saves the
  conversation state).
* OpenAI Agents SDK `SQLiteSession`: `get_items()` (what the Runner feeds the model) then
  `add_items(...)` for the turn.

Figures: per-turn cost around turn 10, turn 100 (runs of 200 turns or more) and the last turn
(mean over turns 6-15, 96-105 and the last 10, over all conversations, turns interleaved across
conversations), bytes stored per conversation at the end against the raw size of the messages,
and (chatstate) the time to build a 4,000-token context from a 100,000-message history (cold:
read from the store, no cache).

Every configuration prints one JSON line on stdout; the table goes to stderr. `--quick` runs a
tiny workload in a second or two (for the smoke test; its numbers mean nothing). Systems whose
server or package is missing are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("CHATSTATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "CHATSTATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
CONTEXT_BUDGET = 4000

WORDS = (
    "order refund flight hotel weather Berlin Lisbon booking invoice account password delivery "
    "tomorrow tonight price ticket seat window aisle receipt address change cancel status "
    "package tracking number support agent manager schedule meeting calendar reminder"
).split()


# -- workload -----------------------------------------------------------------------------------


@dataclass
class Turn:
    user: str
    tool_name: str | None
    tool_args: str
    tool_result: str
    answer: str

    def raw_bytes(self) -> int:
        """Size of the turn's messages as plain JSON (role + content + tool fields)."""
        items: list[dict[str, Any]] = [{"role": "user", "content": self.user}]
        if self.tool_name:
            items.append({"role": "assistant", "tool_calls": [{"id": "call", "type": "function",
                          "function": {"name": self.tool_name, "arguments": self.tool_args}}]})
            items.append({"role": "tool", "tool_call_id": "call", "content": self.tool_result})
        items.append({"role": "assistant", "content": self.answer})
        return sum(len(json.dumps(i, separators=(",", ":")).encode()) for i in items)


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def make_turns(count: int, seed: int) -> list[Turn]:
    rng = random.Random(seed)
    turns = []
    for _ in range(count):
        tool = rng.random() < 0.3
        turns.append(Turn(
            user=_sentence(rng, 6, 24),
            tool_name=rng.choice(["search", "get_weather", "lookup_order"]) if tool else None,
            tool_args=json.dumps({"q": rng.choice(WORDS)}),
            tool_result=json.dumps({"result": _sentence(rng, 5, 30)}),
            answer=" ".join(_sentence(rng, 6, 20) for _ in range(rng.randint(1, 3))),
        ))
    return turns


# -- systems ------------------------------------------------------------------------------------


class Skip(Exception):
    pass


@dataclass
class System:
    name: str
    backend: str
    turn: Callable[[int, int, Turn], Awaitable[None]]  # (conversation, index, turn)
    stored_bytes: Callable[[], Awaitable[int | None]]
    close: Callable[[], Awaitable[None]]
    context_time: Callable[[int], Awaitable[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _service_up(url: str, default_port: int) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=1.0):
            return True
    except OSError:
        return False


async def chatstate_system(backend: str, workdir: Path, *, with_context: bool = True) -> System:
    from chatstate import SessionKey, SessionManager
    from chatstate.memory import Memory, MemoryConfig
    from chatstate.model import HistoryChanges, Message, new_record
    from chatstate.stores.base import Store

    cleanup: list[Callable[[], Awaitable[None]]] = []
    store: Store
    if backend == "memory":
        from chatstate.stores.memory import MemoryStore

        store = MemoryStore(max_sessions=1_000_000)
    elif backend == "sqlite":
        try:
            from chatstate.stores.sqlite import SQLiteStore
        except ImportError as exc:
            raise Skip(f"no SQLiteStore yet ({exc})") from None
        path = workdir / "chatstate.db"
        store = SQLiteStore.from_url(f"sqlite:///{path}")
    elif backend == "redis":
        if not _service_up(REDIS_URL, 6379):
            raise Skip("Redis is not reachable")
        from chatstate.stores.redis import RedisStore

        prefix = f"bench{uuid.uuid4().hex[:8]}"
        store = RedisStore.from_url(REDIS_URL, prefix=prefix)
    elif backend == "postgres":
        if not _service_up(POSTGRES_URL, 5432):
            raise Skip("PostgreSQL is not reachable")
        from chatstate.stores.postgres import PostgresStore

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        store = PostgresStore.from_url(POSTGRES_URL, schema=schema)

        async def drop_schema() -> None:
            import asyncpg

            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        cleanup.append(drop_schema)
    else:  # pragma: no cover
        raise ValueError(backend)
    await store.open()
    manager = SessionManager(store)
    # Summaries off: the workload measures history and context, not a summariser.
    memory = Memory(manager, config=MemoryConfig(auto_summarize=False))

    async def turn(conversation: int, index: int, t: Turn) -> None:
        async with manager.session(SessionKey.user("bench", conversation)) as s:
            await memory.add(s, "user", t.user)
            if with_context:
                await memory.build_context(s, CONTEXT_BUDGET, system="You are an agent.",
                                           reserve_for_output=500)
            if t.tool_name:
                call_id = f"call_{index}"
                await memory.add(s, "assistant", tool_calls=[{
                    "id": call_id, "type": "function",
                    "function": {"name": t.tool_name, "arguments": t.tool_args}}])
                await memory.add(s, "tool", t.tool_result, tool_call_id=call_id)
            await memory.add(s, "assistant", t.answer, model="gpt-4o",
                             usage={"prompt_tokens": 900, "completion_tokens": 60})

    async def stored_bytes() -> int | None:
        return await _chatstate_bytes(backend, store, workdir)

    async def context_time(messages: int) -> float:
        """Median time of a 4,000-token context from one session of `messages` messages."""
        key = SessionKey.user("bench-context", 1)
        record = new_record(key)
        expected = 0
        turns = make_turns(messages // 2 + 1, seed=99)
        seq = 0
        chunk: list[Message] = []
        for t in turns:
            for role, text in (("user", t.user), ("assistant", t.answer)):
                seq += 1
                message = Message(role=role, content=text, seq=seq, turn_id=str(seq),
                                  tokens=memory.counter.count(text))
                chunk.append(message)
                if len(chunk) == 500 or seq == messages:
                    record.counters.last_seq = seq
                    record.version = expected + 1
                    await store.commit(record, expected=expected,
                                       history=HistoryChanges(append=chunk))
                    expected = record.version
                    chunk = []
                if seq == messages:
                    break
            if seq == messages:
                break
        stored = await store.load(str(key))
        assert stored is not None
        # Cold: every context read from the store (no tail cache kept from the last one).
        cold = Memory(manager, config=MemoryConfig(auto_summarize=False, context_cache=0))
        await cold.build_context(stored, CONTEXT_BUDGET)  # warm the code paths
        times = []
        for _ in range(30):
            start = time.perf_counter()
            await cold.build_context(stored, CONTEXT_BUDGET)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    async def close() -> None:
        await memory.aclose()
        await manager.aclose()
        for step in cleanup:
            await step()

    if backend == "redis":
        cleanup.insert(0, lambda: _drop_redis_prefix(prefix))
    name = f"chatstate {backend}" + ("" if with_context else " (store only)")
    return System(name, backend, turn, stored_bytes, close,
                  context_time if with_context else None)


def _files_size(workdir: Path, pattern: str) -> int:
    """Bytes of a database file and its WAL / journal."""
    return sum(p.stat().st_size for p in workdir.glob(pattern))


async def _drop_redis_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        async for name in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.unlink(name)
    finally:
        await client.aclose()


async def _chatstate_bytes(backend: str, store: Any, workdir: Path) -> int | None:
    if backend == "memory":
        total = 0
        for name in ("_records", "_history", "_summaries"):
            value = getattr(store, name, None)
            if isinstance(value, dict):
                for item in value.values():
                    if isinstance(item, bytes | bytearray):
                        total += len(item)
                    elif hasattr(item, "raws"):
                        total += sum(len(r) for r in item.raws) + 8 * len(item.raws)
                    elif isinstance(item, list):
                        total += sum(len(x[-1]) for x in item if isinstance(x, tuple))
        return total or None
    if backend == "sqlite":
        # At rest: closing checkpoints the write-ahead log into the database file and removes
        # it (while open, the log file keeps up to journal_size_limit bytes of old frames
        # whatever the data). The store reopens by itself if used again.
        await store.close()
        return _files_size(workdir, "chatstate.db*")
    if backend == "redis":
        client = store._client
        total = 0
        async for name in client.scan_iter(match=f"{store.prefix}*", count=1000):
            total += int(await client.memory_usage(name) or 0)
        return total
    if backend == "postgres":
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            value = await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')", store.schema)
            return int(value)
        finally:
            await conn.close()
    return None


async def langgraph_system(backend: str, workdir: Path) -> System:
    try:
        from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
        from langgraph.graph import START, MessagesState, StateGraph
    except ImportError as exc:
        raise Skip(f"langgraph is not installed ({exc}); pip install 'chatstate[bench]'") from None
    cleanup: list[Callable[[], Any]] = []
    if backend == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        saver: Any = InMemorySaver()
    elif backend == "sqlite":
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(workdir / "langgraph.db", check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        saver = SqliteSaver(conn)
        cleanup.append(conn.close)
    elif backend == "postgres":
        if not _service_up(POSTGRES_URL, 5432):
            raise Skip("PostgreSQL is not reachable")
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver

        schema = f"bench_lg_{uuid.uuid4().hex[:8]}"
        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
        admin.execute(f'CREATE SCHEMA "{schema}"')
        from psycopg.rows import dict_row

        pg = psycopg.connect(POSTGRES_URL, autocommit=True, prepare_threshold=0,
                             options=f"-c search_path={schema}", row_factory=dict_row)
        saver = PostgresSaver(pg)
        saver.setup()

        def drop() -> None:
            pg.close()
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.close()

        cleanup.append(drop)
    else:  # pragma: no cover
        raise ValueError(backend)

    current: dict[str, Any] = {}  # the turn being replayed (what a model call would produce)

    def agent(state: MessagesState) -> dict[str, Any]:
        t: Turn = current["turn"]
        index: int = current["index"]
        out: list[Any] = []
        if t.tool_name:
            call_id = f"call_{index}"
            out.append(AIMessage(content="", tool_calls=[
                {"id": call_id, "name": t.tool_name, "args": json.loads(t.tool_args)}]))
            out.append(ToolMessage(content=t.tool_result, tool_call_id=call_id))
        out.append(AIMessage(content=t.answer))
        return {"messages": out}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    graph = builder.compile(checkpointer=saver)

    async def turn(conversation: int, index: int, t: Turn) -> None:
        current["turn"], current["index"] = t, index
        graph.invoke(
            {"messages": [HumanMessage(content=t.user)]},
            {"configurable": {"thread_id": f"c{conversation}"}},
        )

    async def stored_bytes() -> int | None:
        if backend == "memory":
            import pickle

            state = (saver.storage, saver.writes, getattr(saver, "blobs", {}))
            return len(pickle.dumps(_plain(state)))
        if backend == "sqlite":
            return _files_size(workdir, "langgraph.db*")
        import psycopg

        with psycopg.connect(POSTGRES_URL) as c:
            row = c.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')", (schema,)).fetchone()
            return int(row[0]) if row else None

    async def close() -> None:
        for step in cleanup:
            step()

    names = {"memory": "InMemorySaver", "sqlite": "SqliteSaver", "postgres": "PostgresSaver"}
    return System(f"langgraph {names[backend]}", backend, turn, stored_bytes, close)


def _plain(value: Any) -> Any:
    """defaultdicts (with unpicklable factories) as plain dicts, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


async def agents_sdk_system(workdir: Path) -> System:
    try:
        from agents import SQLiteSession
    except ImportError as exc:
        raise Skip(f"openai-agents is not installed ({exc})") from None
    path = workdir / "agents.db"
    sessions: dict[int, Any] = {}

    def session(conversation: int) -> Any:
        if conversation not in sessions:
            sessions[conversation] = SQLiteSession(f"c{conversation}", path)
        return sessions[conversation]

    async def turn(conversation: int, index: int, t: Turn) -> None:
        s = session(conversation)
        await s.get_items()
        items: list[Any] = [{"role": "user", "content": t.user}]
        if t.tool_name:
            call_id = f"call_{index}"
            items.append({"type": "function_call", "call_id": call_id, "name": t.tool_name,
                          "arguments": t.tool_args})
            items.append({"type": "function_call_output", "call_id": call_id,
                          "output": t.tool_result})
        items.append({"role": "assistant", "content": t.answer})
        await s.add_items(items)

    async def stored_bytes() -> int | None:
        return _files_size(workdir, "agents.db*")

    async def close() -> None:
        for s in sessions.values():
            s.close()

    return System("agents-sdk SQLiteSession", "sqlite", turn, stored_bytes, close)


# -- running ------------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    backend: str
    conversations: int
    turns: int
    turn10_ms: float | None = None
    turn100_ms: float | None = None  # once a context fills its budget (runs of 200+ turns)
    last_ms: float | None = None
    bytes_per_conversation: float | None = None
    raw_bytes_per_conversation: float | None = None
    context_ms: float | None = None
    context_messages: int | None = None
    skipped: str | None = None

    def line(self) -> str:
        return json.dumps({"bench": "memory", **self.__dict__}, sort_keys=True)


async def run_system(
    make: Callable[[Path], Awaitable[System]], conversations: int, turns: int,
    context_messages: int, workloads: list[list[Turn]], name: str, backend: str,
) -> Result:
    result = Result(system=name, backend=backend, conversations=conversations, turns=turns)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        try:
            system = await make(Path(tmp))
        except Skip as why:
            result.skipped = str(why)
            return result
        try:
            per_turn: list[list[float]] = [[] for _ in range(turns)]
            for index in range(turns):
                for conversation in range(conversations):
                    t = workloads[conversation][index]
                    start = time.perf_counter()
                    await system.turn(conversation, index, t)
                    per_turn[index].append(time.perf_counter() - start)
            early = [x for row in per_turn[5:15] for x in row] or per_turn[0]
            late = [x for row in per_turn[-10:] for x in row]
            result.turn10_ms = statistics.fmean(early) * 1000
            if turns >= 200:
                result.turn100_ms = statistics.fmean(
                    x for row in per_turn[95:105] for x in row) * 1000
            result.last_ms = statistics.fmean(late) * 1000
            stored = await system.stored_bytes()
            if stored is not None:
                result.bytes_per_conversation = stored / conversations
            result.raw_bytes_per_conversation = statistics.fmean(
                sum(t.raw_bytes() for t in workloads[c][:turns]) for c in range(conversations))
            if system.context_time is not None and context_messages:
                result.context_ms = await system.context_time(context_messages) * 1000
                result.context_messages = context_messages
        finally:
            await system.close()
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: list[Result]) -> None:
    out = sys.stderr
    header = (f"{'system':28} {'turn 10 ms':>11} {'turn 100':>9} {'last ms':>9} {'growth':>7} "
              f"{'bytes/conv':>11} {'x raw':>6} {'ctx ms':>8}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        if r.skipped:
            print(f"{r.system:28} skipped: {r.skipped}", file=out)
            continue
        growth = r.last_ms / r.turn10_ms if r.turn10_ms and r.last_ms else None
        ratio = (r.bytes_per_conversation / r.raw_bytes_per_conversation
                 if r.bytes_per_conversation and r.raw_bytes_per_conversation else None)
        print(f"{r.system:28} {_fmt(r.turn10_ms):>11} {_fmt(r.turn100_ms):>9} "
              f"{_fmt(r.last_ms):>9} {_fmt(growth, 2):>7} "
              f"{_fmt(r.bytes_per_conversation, 0):>11} {_fmt(ratio, 2):>6} "
              f"{_fmt(r.context_ms):>8}", file=out)
    # chatstate's throughput at the last turn against the peers on the same backend.
    ours = {r.backend: r for r in results
            if r.system.startswith("chatstate") and r.last_ms and "store only" not in r.system}
    for r in results:
        if r.system.startswith("chatstate") or not r.last_ms:
            continue
        mine = ours.get(r.backend)
        if mine is not None and mine.last_ms:
            print(f"at the last turn chatstate {mine.backend} is {r.last_ms / mine.last_ms:.1f}x "
                  f"the throughput of {r.system}", file=out)


SYSTEMS = ("chatstate", "langgraph", "agents")


async def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny workload (smoke test)")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--peer-conversations", type=int, default=None,
                        help="conversations for the peers (default: the same)")
    parser.add_argument("--context-messages", type=int, default=100_000)
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="comma-separated: chatstate,langgraph,agents")
    parser.add_argument("--backends", default="memory,sqlite,redis,postgres")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.turns, args.context_messages = 2, 16, 400
        args.peer_conversations = 1
    peers = args.peer_conversations or args.conversations
    only = set(args.only.split(","))
    backends = [b for b in args.backends.split(",") if b]
    workloads = [make_turns(args.turns, seed=c) for c in range(max(args.conversations, peers))]
    plan: list[tuple[str, str, Callable[[Path], Awaitable[System]], int]] = []
    if "chatstate" in only:
        for b in backends:
            plan.append((f"chatstate {b}", b, functools.partial(chatstate_system, b),
                         args.conversations))
            # The same turn without building a context: the storage cost alone.
            plan.append((f"chatstate {b} (store only)", b,
                         functools.partial(chatstate_system, b, with_context=False),
                         args.conversations))
    if "langgraph" in only:
        names = {"memory": "InMemorySaver", "sqlite": "SqliteSaver", "postgres": "PostgresSaver"}
        for b in backends:
            if b in names:
                plan.append((f"langgraph {names[b]}", b, functools.partial(langgraph_system, b),
                             peers))
    if "agents" in only and "sqlite" in backends:
        plan.append(("agents-sdk SQLiteSession", "sqlite", agents_sdk_system, peers))
    results = []
    for name, backend, make, conversations in plan:
        context = args.context_messages if name.startswith("chatstate") else 0
        result = await run_system(make, conversations, args.turns, context, workloads, name,
                                  backend)
        print(result.line(), flush=True)
        results.append(result)
    print_table(results)
    return results


if __name__ == "__main__":
    asyncio.run(main())
