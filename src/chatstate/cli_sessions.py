"""`chatstate sessions list|show|delete|export|import|purge` on any store URL."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .cli import CLIError, add_store_option, command
from .errors import InvalidKeyError
from .memory import transfer
from .model import SessionKey, SessionRecord, Status
from .stores.base import SessionFilter, Store
from .stores.memory import MemoryStore
from .stores.url import open_store

STATUSES = [s.value for s in Status]


# -- argument parsing -------------------------------------------------------------------------


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=STATUSES, help="only sessions with this status")
    parser.add_argument("--platform", help="only sessions of this platform (e.g. telegram)")
    parser.add_argument("--scope", help="only sessions of this scope (e.g. user_in_chat)")


def _filter(args: argparse.Namespace, **extra: Any) -> SessionFilter:
    return SessionFilter(
        status=getattr(args, "status", None),
        platform=getattr(args, "platform", None),
        scope=getattr(args, "scope", None),
        **extra,
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="list sessions, newest activity first")
    add_store_option(p)
    _add_filters(p)
    p.add_argument("--limit", type=int, default=20, help="sessions per page (default 20)")
    p.add_argument("--cursor", help="the cursor printed after the previous page")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.set_defaults(_action=list_sessions)

    p = actions.add_parser("show", help="print one session (and its newest messages) as JSON")
    add_store_option(p)
    p.add_argument("session", metavar="KEY_OR_ID", help="a key (telegram:user:42) or an id")
    p.add_argument("--history", type=int, default=10, metavar="N",
                   help="include the newest N messages (default 10, 0 for none)")
    p.set_defaults(_action=show_session)

    p = actions.add_parser("delete", help="delete one session with its history")
    add_store_option(p)
    p.add_argument("session", metavar="KEY_OR_ID", help="a key (telegram:user:42) or an id")
    p.set_defaults(_action=delete_session)

    p = actions.add_parser("export", help="write sessions with their history as JSON Lines")
    add_store_option(p)
    _add_filters(p)
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.set_defaults(_action=export_sessions)

    p = actions.add_parser("import", help="read sessions written by `sessions export`")
    add_store_option(p)
    p.add_argument("file", help="a JSON Lines file ('-' for stdin)")
    p.add_argument("--replace", action="store_true",
                   help="overwrite the stored sessions of the keys the file holds (default: "
                   "refuse, changing nothing)")
    p.set_defaults(_action=import_sessions)

    p = actions.add_parser("purge", help="delete closed and expired sessions older than a date")
    add_store_option(p)
    p.add_argument("--before", required=True, metavar="WHEN",
                   help="last activity before this: an ISO date/time (local time), a Unix "
                   "timestamp, or an age such as 30d, 12h, 45m")
    p.add_argument("--status", choices=["closed", "expired"],
                   help="only this status (default: closed and expired)")
    p.add_argument("--platform", help="only sessions of this platform")
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    p.set_defaults(_action=purge_sessions)


@command("sessions", "inspect and manage stored sessions", configure=_configure)
async def sessions(args: argparse.Namespace) -> int:
    action: Callable[[Store, argparse.Namespace], Awaitable[int]] = args._action
    async with open_store(args.store) as store:
        return await action(store, args)


# -- helpers ----------------------------------------------------------------------------------

_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """An ISO date/time (local time unless it names a zone), a Unix timestamp, or an age
    ("30d": thirty days before now) as a Unix timestamp."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _AGE_RE.match(text.lower())
    if match:
        return now - float(match.group(1)) * _AGE_UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(
            f"cannot read the time {text!r}; use an ISO date such as 2024-05-01, a Unix "
            "timestamp, or an age such as 30d, 12h, 45m"
        ) from None
    return when.timestamp()


async def _find(store: Store, text: str) -> SessionRecord:
    """The session a KEY_OR_ID argument names (a key means its current session)."""
    if ":" in text:
        try:
            key = str(SessionKey.parse(text))
        except InvalidKeyError as exc:
            raise CLIError(str(exc)) from None
        record = await store.load(key)
        if record is None:
            raise CLIError(f"no session with key {key!r} in this store")
        return record
    record = await store.load_by_id(text)
    if record is None:
        raise CLIError(f"no session with id {text!r} in this store")
    return record


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


# -- actions ----------------------------------------------------------------------------------


async def list_sessions(store: Store, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CLIError("--limit must be at least 1")
    page = await store.list(_filter(args), limit=args.limit, cursor=args.cursor)
    if args.json:
        out = sys.stdout.buffer
        for record in page.items:
            out.write(msgspec.json.encode(record) + b"\n")
        out.flush()
    else:
        table = Table("key", "id", "status", "state", "messages", "last activity")
        for column in table.columns[:2]:
            column.no_wrap = True  # keys and ids are copied from here: never split them
        for r in page.items:
            table.add_row(r.key, r.id, r.status.value, r.state or "-",
                          str(r.counters.messages), _when(r.last_activity))
        console = Console()
        if not console.is_terminal:
            console.width = 200  # a pipe or file has no width: do not fold the table
        console.print(table)
        if not page.items:
            console.print("no sessions match")
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


async def show_session(store: Store, args: argparse.Namespace) -> int:
    record = await _find(store, args.session)
    shown: dict[str, Any] = {"record": record}
    if args.history > 0:
        shown["messages"] = await store.read_tail(record.ref, args.history)
        shown["message_count"] = await store.count_messages(record.ref)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode() + "\n")
    return 0


async def delete_session(store: Store, args: argparse.Namespace) -> int:
    record = await _find(store, args.session)
    if not await store.delete(record.key, record.id):
        raise CLIError(f"session {args.session!r} was already gone")
    print(f"deleted session {record.id} ({record.key})")
    return 0


async def matching(store: Store, filter: SessionFilter | None) -> AsyncIterator[SessionRecord]:
    """Every record matching `filter`, a page at a time."""
    cursor: str | None = None
    while True:
        page = await store.list(filter, limit=500, cursor=cursor)
        for record in page.items:
            yield record
        cursor = page.next_cursor
        if not cursor or not page.items:
            return


async def session_ids(store: Store, filter: SessionFilter | None) -> list[str]:
    """Ids of the matching sessions, oldest activity first: importing a file in this order
    leaves the newest session of every key as its current one. Holds ids, not records."""
    refs = sorted([(r.last_activity, r.id) async for r in matching(store, filter)])
    return [session_id for _, session_id in refs]


async def export_sessions(store: Store, args: argparse.Namespace) -> int:
    ids = await session_ids(store, _filter(args))
    to_stdout = args.output == "-"
    # The CLI runs nothing else on its event loop, so plain file writes block no one.
    out = sys.stdout if to_stdout else open(args.output, "w", encoding="utf-8")  # noqa: ASYNC230
    written = 0
    try:
        with _progress() as progress:
            task = progress.add_task("exporting", total=len(ids))
            for session_id in ids:
                try:
                    async for line in transfer.export_session(store, session_id):
                        out.write(line + "\n")
                except LookupError:
                    continue  # deleted while we were exporting
                written += 1
                progress.advance(task)
    finally:
        if to_stdout:
            out.flush()
        else:
            out.close()
    where = "stdout" if to_stdout else args.output
    print(f"exported {written} session(s) to {where}", file=sys.stderr)
    return 0


async def import_sessions(store: Store, args: argparse.Namespace) -> int:
    lines = await asyncio.to_thread(_read_lines, args.file)
    # Check the whole file before writing anything, so a bad file changes nothing: import it
    # into a scratch memory store first (this also yields every session it holds).
    async with MemoryStore(max_sessions=max(len(lines), 1)) as scratch:
        refs = await transfer.import_sessions(scratch, lines)
    if not args.replace:
        for ref in refs:
            current = await store.load(ref.key)
            taken = current is not None and current.status is Status.ACTIVE
            if taken or await store.load_by_id(ref.id) is not None:
                raise CLIError(
                    f"{ref.key} already has a session in this store; pass --replace to "
                    "overwrite the sessions the file holds"
                )
    with _progress() as progress:
        task = progress.add_task("importing", total=len(lines))

        def counted() -> Iterator[str]:
            for line in lines:
                yield line
                progress.advance(task)

        imported = await transfer.import_sessions(store, counted(), replace=args.replace)
    print(f"imported {len(imported)} session(s)", file=sys.stderr)
    return 0


def _read_lines(name: str) -> list[str]:
    if name == "-":
        return sys.stdin.read().splitlines()
    path = Path(name)
    if not path.is_file():
        raise CLIError(f"{name}: no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CLIError(f"{name}: not a text file; expected JSON Lines from "
                       "`chatstate sessions export`") from None


async def purge_sessions(store: Store, args: argparse.Namespace) -> int:
    before = parse_when(args.before)
    statuses = [args.status] if args.status else ["closed", "expired"]
    # Collected before deleting, so that deletions cannot disturb the listing's cursor.
    refs: list[tuple[str, str]] = []
    for status in statuses:
        flt = SessionFilter(status=status, platform=args.platform, updated_before=before)
        refs += [(r.key, r.id) async for r in matching(store, flt)]
    if args.dry_run:
        print(f"would purge {len(refs)} session(s) last active before {_when(before)}")
        return 0
    purged = 0
    with _progress() as progress:
        task = progress.add_task("purging", total=len(refs))
        for key, session_id in refs:
            if await store.delete(key, session_id):
                purged += 1
            progress.advance(task)
    print(f"purged {purged} session(s) last active before {_when(before)}")
    return 0
