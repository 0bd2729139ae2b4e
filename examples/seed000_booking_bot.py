"""Seed 000: the appointment-booking Telegram bot, on chatstate and python-telegram-bot.

    TELEGRAM_BOT_TOKEN=... python -m examples.seed000_booking_bot           # on Telegram
    python -m examples.seed000_booking_bot --terminal                     # offline, in the terminal
    CHATSTATE_STORE=redis://localhost:6379/0 TELEGRAM_BOT_TOKEN=... python -m ...   # durable

What the seed's report fixed by hand, chatstate does: one session per user with a standard
default structure (`DEFAULTS`), the booking wizard (category, service, provider, date, time,
confirm: examples/flows_booking.py) whose later answers depend on earlier ones, validation with
retries, errors recorded in the session and an automatic reset after three in a row (the engine's
consecutive-error reset), a warning before the booking expires and a 24-hour session lifetime
with cleanup by the lifecycle runner, and updates of one user handled in order even with
``concurrent_updates``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from examples.flows_booking import Scheduler, build_booking

from chatstate.adapters.base import BotRuntime, RuntimeTexts, run_terminal
from chatstate.clock import Clock
from chatstate.engine import SessionManager
from chatstate.flows import FlowRunner
from chatstate.lifecycle import Lifecycle
from chatstate.policy import LifecyclePolicy
from chatstate.stores.base import Store

DEFAULTS = {"bookings_made": 0}
TEXTS = RuntimeTexts(
    reset_after_errors="Too many errors in a row, so I started over. Send /book to try again.",
)


def build_runner(scheduler: Scheduler | None = None) -> FlowRunner:
    booking = build_booking(scheduler or Scheduler())
    return FlowRunner({"book": booking}, main_menu="Welcome to the appointment scheduler!")


def build_manager(store: Store | str | None = None, *, clock: Clock | None = None
                  ) -> SessionManager:
    runner_flows = build_runner().flows.values()
    policy = LifecyclePolicy(idle_timeout=24 * 3600, max_age=None).with_flows(*runner_flows)
    return SessionManager(
        store or os.environ.get("CHATSTATE_STORE", "memory://"), policy=policy, defaults=DEFAULTS,
        max_consecutive_errors=3, clock=clock,
    )


def build_application(token: str, manager: SessionManager, runner: FlowRunner, *,
                      base_url: str | None = None) -> Any:
    """The PTB Application: the adapter for messages and buttons, the lifecycle runner for
    warnings and expiries (started and stopped with the application)."""
    from telegram.ext import ApplicationBuilder

    from chatstate.adapters.telegram import TelegramAdapter

    builder = ApplicationBuilder().token(token).concurrent_updates(True)
    if base_url:
        builder = builder.base_url(base_url)
    lifecycles: list[Lifecycle] = []

    async def start_lifecycle(app: Any) -> None:
        notifier = adapter.lifecycle_notifier(app.bot)
        lifecycle = Lifecycle(manager, **notifier.hooks())
        await lifecycle.start()
        lifecycles.append(lifecycle)

    async def stop_lifecycle(app: Any) -> None:
        for lifecycle in lifecycles:
            await lifecycle.stop()
        await manager.aclose()

    app = builder.post_init(start_lifecycle).post_shutdown(stop_lifecycle).build()
    adapter = TelegramAdapter(manager, runner, scope="user", texts=TEXTS)
    adapter.install(app)
    return app


async def terminal(manager: SessionManager, runner: FlowRunner) -> None:
    loop = asyncio.get_running_loop()

    async def read_line() -> str | None:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        return line or None

    def write(text: str) -> None:
        sys.stdout.write(text + "\n\n")
        sys.stdout.flush()

    write("Offline booking bot: type /book (or /start, /help, /cancel); Ctrl-D quits.")
    async with manager:
        await run_terminal(BotRuntime(manager, runner, texts=TEXTS), read_line, write)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    manager, runner = build_manager(), build_runner()
    token = os.environ.get("TELEGRAM_BOT_TOKEN")
    if "--terminal" in sys.argv or not token:
        if not token and "--terminal" not in sys.argv:
            logging.info("TELEGRAM_BOT_TOKEN is not set: running in the terminal instead")
        asyncio.run(terminal(manager, runner))
        return
    build_application(token, manager, runner).run_polling()


if __name__ == "__main__":
    main()
