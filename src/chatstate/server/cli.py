"""`chatstate serve` and `chatstate stats`.

Listed in `chatstate.cli.COMMAND_MODULES` as "chatstate.server.cli"; FastAPI and uvicorn are
imported only when a command runs, so the rest of the CLI works without the `server` extra.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from typing import Any

from ..cli import CLIError, add_store_option, command
from ..errors import ConfigurationError

log = logging.getLogger("chatstate.server")


def _need_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"`chatstate serve` needs the server extra ({exc.name} is missing); install it with: "
            "pip install 'chatstate[server]'"
        ) from exc


def configure_serve(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument("--host", default=None, help="address to bind (default: $CHATSTATE_HOST "
                        "or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $CHATSTATE_PORT "
                        "or 8000)")
    parser.add_argument("--no-lifecycle", action="store_true",
                        help="do not run the lifecycle runner in this process (run `chatstate "
                        "worker` elsewhere)")
    parser.add_argument("--bot", default=None, metavar="MODULE:ATTR",
                        help="the chat bot (default: $CHATSTATE_BOT or the demo bot)")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> Any:
    from .settings import Settings

    overrides: dict[str, Any] = {"store_url": args.store}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.no_lifecycle:
        overrides["lifecycle"] = False
    if args.bot:
        overrides["bot"] = args.bot
    if args.log_level:
        overrides["log_level"] = args.log_level
    return Settings.from_env(**overrides)


@command("serve", "serve the HTTP API, dashboard and web chat", configure=configure_serve)
def serve_command(args: argparse.Namespace) -> int:
    """Run the service until SIGINT/SIGTERM, then shut down gracefully: stop accepting, end the
    event streams, let running requests finish (10 s at most), stop the lifecycle runner, close
    the store."""
    _need_server_extra()
    import uvicorn

    from .app import create_app

    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    runtime = app.state.runtime

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Open event streams would otherwise hold the shutdown until the timeout.
            runtime.hub.closing.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=10, proxy_headers=False, server_header=False,
        access_log=settings.log_level == "debug",
    )
    server = Server(config)
    log.info("dashboard and web chat: http://%s:%s/", _url_host(settings.host), settings.port)
    server.run()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def configure_stats(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument("--platform", default=None, help="only sessions of this platform")
    parser.add_argument("--hours", type=float, default=24.0,
                        help="time span of the active-sessions series (default 24)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


@command("stats", "show session analytics (computed by the store)", configure=configure_stats)
async def stats_command(args: argparse.Namespace) -> int:
    """Print the analytics the dashboard shows, as rich tables (or JSON)."""
    from ..crypto import Encryptor, enable_encryption
    from ..stores.url import open_store
    from . import analytics

    if args.hours <= 0:
        raise CLIError("--hours must be positive")
    store = enable_encryption(open_store(args.store), Encryptor.from_env())
    await store.open()
    try:
        import time

        data = await analytics.compute(store, time.time(), platform=args.platform,
                                       hours=args.hours)
    finally:
        await store.close()
    if args.json:
        import json

        print(json.dumps(data, indent=2))
        return 0
    print_stats(data)
    return 0


def print_stats(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    totals = data["totals"]
    overview = Table(title="Sessions", show_header=False)
    overview.add_column("what")
    overview.add_column("value", justify="right")
    for label, value in (
        ("total", totals["sessions"]), ("active", totals["active"]),
        ("closed", totals["closed"]), ("expired", totals["expired"]),
        ("messages", data["messages"]), ("tokens", data["tokens"]),
        ("average length", _duration(data["avg_session_seconds"])),
    ):
        overview.add_row(label, str(value))
    console.print(overview)
    for title, mapping in (
        ("By platform", data["by_platform"]), ("By user type", data["by_user_type"]),
        ("Close reasons", data["close_reasons"]),
        ("Top intents", {i["intent"]: i["sessions"] for i in data["top_intents"]}),
    ):
        if mapping:
            table = Table(title=title)
            table.add_column("name")
            table.add_column("sessions", justify="right")
            for name, count in sorted(mapping.items(), key=lambda kv: -kv[1]):
                table.add_row(str(name), str(count))
            console.print(table)
    if data["funnel"]:
        funnel = Table(title="Flow funnel")
        for column in ("flow", "step", "entered", "completed", "abandoned", "timed_out", "active"):
            funnel.add_column(column, justify="left" if column in ("flow", "step") else "right")
        for row in data["funnel"]:
            funnel.add_row(*(str(row[c]) for c in (
                "flow", "step", "entered", "completed", "abandoned", "timed_out", "active")))
        console.print(funnel)
    series = data["active_series"]
    if series:
        peak = max(p["active"] for p in series)
        last = series[-1]
        when = dt.datetime.fromtimestamp(last["t"]).strftime("%H:%M")
        console.print(f"active sessions: {last['active']:g} at {when}, peak {peak:g} "
                      f"over {len(series)} samples")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
