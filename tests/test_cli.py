"""The `chatstate` command line: the demo bot, `sessions ...`, and bad input (exit 2, one line)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends import (
    POSTGRES_URL,
    REDIS_URL,
    drop_postgres_schema,
    require_postgres,
    require_service,
)
from chatstate import FakeClock, Incoming, LifecyclePolicy, Message, SessionKey, SessionManager
from chatstate.cli import COMMANDS, EXIT_BAD_INPUT, main
from chatstate.demo import DemoBot, demo_manager, flow_examples
from chatstate.stores import open_store

# -- the demo bot -----------------------------------------------------------------------------


async def test_demo_bot_remembers_name_counts_and_forgets_on_reset() -> None:
    manager = demo_manager("memory://", clock=FakeClock())
    bot = DemoBot(manager)

    async def say(text: str) -> str:
        replies = await bot.reply(Incoming.from_text(text, platform="web", user_id="u1"))
        assert len(replies) == 1
        return replies[0].text

    async with manager:
        greeting = await bot.greet(Incoming(platform="web", user_id="u1"))
        assert "What's your name?" in greeting[0].text
        assert "Nice to meet you, Ada" in await say("Ada")
        assert (await bot.greet(Incoming(platform="web", user_id="u1")))[0].text == (
            "Welcome back, Ada!")
        assert "message number 1" in await say("one")
        assert "message number 2" in await say("two")
        before = await manager.get(SessionKey.user("web", "u1"))
        assert before is not None and before.data["name"] == "Ada"
        assert "name:          Ada" in await say("/whoami")

        assert "forgot" in await say("/reset")
        after = await manager.get(SessionKey.user("web", "u1"))
        assert after is not None and after.id != before.id and after.data["name"] is None
        assert "Nice to meet you, Bob" in await say("Bob")
        # Another user has a session of their own.
        other = await bot.reply(Incoming.from_text("hello", platform="web", user_id="u2"))
        assert "What's your name?" in other[0].text


def run_demo(db: Path, *lines: str, user: str = "ada") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "chatstate", "demo", "--store", f"sqlite:///{db}", "--user", user],
        input="".join(f"{line}\n" for line in lines), capture_output=True, text=True, timeout=120,
        cwd=db.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("bot> ")]


def test_demo_remembers_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    first = run_demo(db, "Ada", "hello")
    assert first == [
        "bot> Hello! I am the chatstate demo bot. What's your name?",
        "bot> Nice to meet you, Ada! Say anything; /whoami shows your session.",
        "bot> Ada, that is message number 1 you sent me. You said: hello",
    ]
    # A new process on the same file: it still knows Ada and goes on counting.
    second = run_demo(db, "again", "/whoami", "/quit", "never read")
    assert second[0] == "bot> Welcome back, Ada!"
    assert second[1] == "bot> Ada, that is message number 2 you sent me. You said: again"
    assert second[2].startswith("bot> key:           cli:user:ada")
    assert "never read" not in "\n".join(second)
    # /reset forgets; the next run starts over.
    run_demo(db, "/reset")
    third = run_demo(db, "Zoe")
    assert third[-1].startswith("bot> Nice to meet you, Zoe!")


def test_demo_runs_a_flow_example(tmp_path: Path) -> None:
    if "order" not in flow_examples():
        pytest.fail("examples/registry.py should offer the 'order' flow example")
    done = subprocess.run(
        [sys.executable, "-m", "chatstate", "demo", "order", "--store", "memory://"],
        input="Order\nbanana\n3\n12 Long Street, Town\n✅ Confirm\n", capture_output=True,
        text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "[Apple]  [Banana]  [Orange]" in done.stdout  # buttons are shown as options
    assert "Order placed!" in done.stdout and "Quantity: 3" in done.stdout


# -- sessions ---------------------------------------------------------------------------------


def populate(url: str) -> dict[str, str]:
    """Three telegram sessions and one discord session; one telegram session closed long ago.
    Returns key -> session id."""

    async def go() -> dict[str, str]:
        clock = FakeClock(start=1_600_000_000.0)  # September 2020
        # No deadlines: a store's own expiry backstop (Redis) must not remove these old
        # sessions before the test looks at them.
        policy = LifecyclePolicy(idle_timeout=None, max_age=None, retention=None)
        ids: dict[str, str] = {}
        async with SessionManager(url, clock=clock, policy=policy) as manager:
            for i, platform in enumerate(["telegram", "telegram", "telegram", "discord"]):
                key = SessionKey.user(platform, i)
                async with manager.session(key) as s:
                    s.data["n"] = i
                    s.append(Message(role="user", content=f"hello {i}"),
                             Message(role="assistant", content=f"hi {i}"))
                    if i == 0:
                        s.close("completed")
                ids[str(key)] = s.id
                clock.advance(60)
        return ids

    return asyncio.run(go())


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes URLs of fresh stores of one kind: `store_url("a")`, `store_url("b")`, ..."""
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / name}.db"
        return
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"clitest{uuid.uuid4().hex[:10]}"
    yield lambda name: f"{REDIS_URL}?prefix={prefix}{name}"
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def db_url(store_url: Callable[[str], str]) -> str:
    return store_url("cli")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_filters_and_pages(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = populate(db_url)
    code, out, _ = run_cli(capsys, "sessions", "list", "--store", db_url, "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert {r["id"] for r in listed} == set(ids.values())
    assert listed[0]["key"] == "discord:user:3"  # newest activity first

    code, out, _ = run_cli(capsys, "sessions", "list", "--store", db_url, "--json",
                           "--platform", "telegram", "--status", "active")
    assert sorted(json.loads(line)["key"] for line in out.splitlines()) == [
        "telegram:user:1", "telegram:user:2"]

    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(4):
        code, out, err = run_cli(capsys, "sessions", "list", "--store", db_url, "--json",
                                 "--limit", "3", *cursor)
        seen += [json.loads(line)["id"] for line in out.splitlines()]
        if "--cursor" not in err:
            break
        cursor = ["--cursor", err.split("--cursor", 1)[1].strip()]
    assert sorted(seen) == sorted(ids.values())

    code, out, _ = run_cli(capsys, "sessions", "list", "--store", db_url)
    assert code == 0 and "telegram:user:1" in out  # the table


def test_show_and_delete(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = populate(db_url)
    code, out, _ = run_cli(capsys, "sessions", "show", "telegram:user:1", "--store", db_url)
    assert code == 0
    shown = json.loads(out)
    assert shown["record"]["id"] == ids["telegram:user:1"]
    assert shown["record"]["data"] == {"n": 1}
    assert [m["content"] for m in shown["messages"]] == ["hello 1", "hi 1"]
    assert shown["message_count"] == 2

    code, out, _ = run_cli(capsys, "sessions", "show", ids["discord:user:3"], "--store", db_url)
    assert code == 0 and json.loads(out)["record"]["key"] == "discord:user:3"

    code, out, _ = run_cli(capsys, "sessions", "delete", "telegram:user:1", "--store", db_url)
    assert code == 0 and ids["telegram:user:1"] in out
    code, _, err = run_cli(capsys, "sessions", "show", "telegram:user:1", "--store", db_url)
    assert code == EXIT_BAD_INPUT and err.startswith("chatstate: error: no session")
    code, _, _ = run_cli(capsys, "sessions", "delete", ids["discord:user:3"], "--store", db_url)
    assert code == 0
    remaining = asyncio.run(_list_ids(db_url))
    assert remaining == {ids["telegram:user:0"], ids["telegram:user:2"]}


async def _list_ids(url: str) -> set[str]:
    async with open_store(url) as store:
        page = await store.list(limit=100)
        return {r.id for r in page.items}


def test_export_import_round_trip(
    db_url: str, store_url: Callable[[str], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = populate(db_url)
    dump = tmp_path / "dump.jsonl"
    code, _, err = run_cli(capsys, "sessions", "export", "--store", db_url, "-o", str(dump))
    assert code == 0 and "exported 4 session(s)" in err
    kinds = [json.loads(line)["type"] for line in dump.read_text().splitlines()]
    assert kinds.count("session") == 4 and kinds.count("message") == 8

    target = store_url("target")
    code, _, err = run_cli(capsys, "sessions", "import", str(dump), "--store", target)
    assert code == 0 and "imported 4 session(s)" in err

    async def compare() -> None:
        async with open_store(db_url) as source, open_store(target) as copy:
            for session_id in ids.values():
                a, b = await source.load_by_id(session_id), await copy.load_by_id(session_id)
                assert a is not None and b is not None
                assert (a.key, a.status, a.data, a.counters) == (b.key, b.status, b.data,
                                                                 b.counters)
                assert await source.read_tail(a.ref, 10) == await copy.read_tail(b.ref, 10)
            current = await copy.load("telegram:user:2")
            assert current is not None and current.id == ids["telegram:user:2"]

    asyncio.run(compare())

    # Importing again refuses (changing nothing); --replace writes it again without doubling
    # the history.
    code, _, err = run_cli(capsys, "sessions", "import", str(dump), "--store", target)
    assert code == EXIT_BAD_INPUT and "already has a session" in err and "--replace" in err
    code, _, err = run_cli(capsys, "sessions", "import", str(dump), "--store", target,
                           "--replace")
    assert code == 0 and "imported 4 session(s)" in err

    async def history_once() -> None:
        async with open_store(target) as copy:
            record = await copy.load("telegram:user:1")
            assert record is not None
            assert await copy.count_messages(record.ref) == 2

    asyncio.run(history_once())


def test_export_filters_to_stdout(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    populate(db_url)
    code, out, _ = run_cli(capsys, "sessions", "export", "--store", db_url, "--platform",
                           "discord")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["record"]["key"] for line in lines if line["type"] == "session"] == [
        "discord:user:3"]
    assert [line["message"]["content"] for line in lines if line["type"] == "message"] == [
        "hello 3", "hi 3"]


def test_import_of_a_bad_file_changes_nothing(
    db_url: str, store_url: Callable[[str], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    populate(db_url)
    dump = tmp_path / "dump.jsonl"
    assert run_cli(capsys, "sessions", "export", "--store", db_url, "-o", str(dump))[0] == 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text(dump.read_text() + "{not json\n")
    target = store_url("target")
    code, _, err = run_cli(capsys, "sessions", "import", str(broken), "--store", target)
    assert code == EXIT_BAD_INPUT
    assert err.startswith("chatstate: error: line ") and len(err.splitlines()) == 1
    assert asyncio.run(_list_ids(target)) == set()

    code, _, err = run_cli(capsys, "sessions", "import", str(tmp_path / "missing.jsonl"),
                           "--store", target)
    assert code == EXIT_BAD_INPUT and "no such file" in err


def test_purge_finished_sessions_before_a_date(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = populate(db_url)
    code, out, _ = run_cli(capsys, "sessions", "purge", "--store", db_url, "--before",
                           "2021-01-01", "--dry-run")
    assert code == 0 and "would purge 1 session(s)" in out
    assert len(asyncio.run(_list_ids(db_url))) == 4
    # Nothing finished before 2020.
    code, out, _ = run_cli(capsys, "sessions", "purge", "--store", db_url, "--before",
                           "2019-06-01")
    assert code == 0 and "purged 0 session(s)" in out
    code, out, _ = run_cli(capsys, "sessions", "purge", "--store", db_url, "--before", "30d")
    assert code == 0 and "purged 1 session(s)" in out
    assert ids["telegram:user:0"] not in asyncio.run(_list_ids(db_url))
    assert len(asyncio.run(_list_ids(db_url))) == 3  # active sessions are never purged


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sessions", "list", "--store", "nosuch://x"], "unknown store URL scheme"),
        (["sessions", "list", "--store", "not a url"], "is not valid"),
        (["sessions", "show", "telegram:galaxy:1"], "unknown scope"),
        (["sessions", "show", "no-such-id"], "no session with id"),
        (["sessions", "delete", "telegram:user:404"], "no session with key"),
        (["sessions", "purge", "--before", "someday"], "cannot read the time"),
        (["sessions", "list", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--store" not in argv:
        argv = [*argv, "--store", db_url]
    code, _, err = run_cli(capsys, *argv)
    assert code == EXIT_BAD_INPUT
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_errors_never_show_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "CHATSTATE_STORE_URL": "bogus://nowhere"}
    done = subprocess.run([sys.executable, "-m", "chatstate", "sessions", "list"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip()] and "unknown store URL scheme 'bogus'" in done.stderr


def test_db_upgrade_creates_then_finds_the_postgres_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_postgres()
    schema = f"cli_upgrade_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}?schema={schema}"
    try:
        code, out, _ = run_cli(capsys, "db", "upgrade", "--store", url)
        assert code == 0 and out.startswith("applied schema migration(s) 1")
        code, out, _ = run_cli(capsys, "db", "upgrade", "--store", url)
        assert code == 0 and "already current" in out
    finally:
        asyncio.run(drop_postgres_schema(schema))


def test_flows_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "flows", "diagram", "order")
    assert code == 0 and out.startswith("stateDiagram-v2") and "quantity" in out
    code, _, err = run_cli(capsys, "flows", "diagram", "nosuchflow")
    assert code == EXIT_BAD_INPUT and "neither module:attribute nor a flow example" in err
    code, _, err = run_cli(capsys, "flows", "diagram", "nosuchmodule:flow")
    assert code == EXIT_BAD_INPUT and "cannot import" in err


def test_registry_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "sessions", "db", "flows"):
        assert name in COMMANDS and name in out
