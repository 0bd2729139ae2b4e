"""`chatstate sessions list|show|delete|export|import|purge` on any store URL."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

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

from . import transfer
from .cli import CLIError, add_store_option, command
from .errors import InvalidKeyError
from .model import SessionKey, SessionRecord, Status
from .stores.base import SessionFilter, Store
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
                   help="overwrite sessions whose id is already stored (default: skip them)")
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
    async with _opened(args.store) as store:
        return await action(store, args)


@asynccontextmanager
async def _opened(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


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
        for r in page.items:
            table.add_row(r.key, r.id, r.status.value, r.state or "-",
                          str(r.counters.messages), _when(r.last_activity))
        console = Console()
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


async def export_sessions(store: Store, args: argparse.Namespace) -> int:
    out: BinaryIO
    to_stdout = args.output == "-"
    # The CLI runs nothing else on its event loop, so plain file writes block no one.
    out = sys.stdout.buffer if to_stdout else open(args.output, "wb")  # noqa: ASYNC230
    written = 0
    try:
        with _progress() as progress:
            task = progress.add_task("exporting", total=None)
            lines = transfer.export_sessions(
                store, _filter(args), on_total=lambda n: progress.update(task, total=n)
            )
            async for line in lines:
                out.write(line)
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
    raw_lines = await asyncio.to_thread(_read_lines, args.file)
    # Check every line before writing anything, so a bad file changes nothing.
    parsed = [
        transfer.parse_line(line, lineno)
        for lineno, line in enumerate(raw_lines, start=1)
        if line.strip()
    ]
    imported = skipped = 0
    with _progress() as progress:
        task = progress.add_task("importing", total=len(parsed))
        for record, history in parsed:
            if await transfer.import_session(store, record, history, replace=args.replace):
                imported += 1
            else:
                skipped += 1
            progress.advance(task)
    note = f", skipped {skipped} already stored (use --replace)" if skipped else ""
    print(f"imported {imported} session(s){note}", file=sys.stderr)
    return 0


def _read_lines(name: str) -> list[bytes]:
    if name == "-":
        return sys.stdin.buffer.read().splitlines()
    path = Path(name)
    if not path.is_file():
        raise CLIError(f"{name}: no such file")
    return path.read_bytes().splitlines()


async def purge_sessions(store: Store, args: argparse.Namespace) -> int:
    before = parse_when(args.before)
    statuses = [args.status] if args.status else ["closed", "expired"]
    refs: list[tuple[str, str]] = []
    for status in statuses:
        flt = SessionFilter(status=status, platform=args.platform, updated_before=before)
        cursor: str | None = None
        while True:
            page = await store.list(flt, limit=500, cursor=cursor)
            refs.extend((r.key, r.id) for r in page.items)
            cursor = page.next_cursor
            if not cursor or not page.items:
                break
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
