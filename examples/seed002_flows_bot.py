"""Seed 002: the registration FSM, the order wizard and the branching customer flow as one
Telegram bot, on chatstate and python-telegram-bot.

    TELEGRAM_BOT_TOKEN=... python -m examples.seed002_flows_bot        # on Telegram
    python -m examples.seed002_flows_bot --terminal                  # offline, in the terminal

/register, /order and /customer start the flows (or the main menu's buttons); /cancel, /back,
/help, /start and /reset work from every step; buttons are inline keyboards whose
callback_data names the flow, version and step, so a press on an old message is recognised.
The session expires after 30 minutes of silence (the order flow warns 5 minutes before), and a
restart tells users who were inside a flow that their session was restored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from examples.flows_customer import AccountDirectory, build_customer
from examples.flows_order import build_order
from examples.flows_registration import build_registration

from chatstate.adapters.base import BotRuntime, run_terminal
from chatstate.clock import Clock
from chatstate.engine import SessionManager
from chatstate.flows import FlowRunner
from chatstate.lifecycle import Lifecycle
from chatstate.policy import LifecyclePolicy
from chatstate.stores.base import Store


def build_runner(directory: AccountDirectory | None = None) -> FlowRunner:
    return FlowRunner(
        {
            "register": build_registration(),
            "order": build_order(),
            "customer": build_customer(directory or AccountDirectory()),
        },
        main_menu="Welcome! What would you like to do?",
    )


def build_manager(store: Store | str | None = None, *, clock: Clock | None = None
                  ) -> SessionManager:
    policy = LifecyclePolicy(idle_timeout=30 * 60, max_age=None).with_flows(
        *build_runner().flows.values()
    )
    return SessionManager(store or os.environ.get("CHATSTATE_STORE", "memory://"),
                          policy=policy, keep_on_reset=("profile",), clock=clock)


def build_application(token: str, manager: SessionManager, runner: FlowRunner, *,
                      base_url: str | None = None) -> Any:
    from telegram.ext import ApplicationBuilder

    from chatstate.adapters.telegram import TelegramAdapter

    builder = ApplicationBuilder().token(token).concurrent_updates(True)
    if base_url:
        builder = builder.base_url(base_url)
    lifecycles: list[Lifecycle] = []

    async def start_lifecycle(app: Any) -> None:
        lifecycle = Lifecycle(manager, **adapter.lifecycle_notifier(app.bot).hooks())
        await lifecycle.start()  # also restores sessions interrupted by a restart
        lifecycles.append(lifecycle)

    async def stop_lifecycle(app: Any) -> None:
        for lifecycle in lifecycles:
            await lifecycle.stop()
        await manager.aclose()

    app = builder.post_init(start_lifecycle).post_shutdown(stop_lifecycle).build()
    adapter = TelegramAdapter(manager, runner, scope="user")
    adapter.install(app)
    return app


async def terminal(manager: SessionManager, runner: FlowRunner) -> None:
    loop = asyncio.get_running_loop()

    async def read_line() -> str | None:
        return (await loop.run_in_executor(None, sys.stdin.readline)) or None

    def write(text: str) -> None:
        sys.stdout.write(text + "\n\n")
        sys.stdout.flush()

    write("Offline flows bot: /register, /order, /customer; /cancel, /back, /help; Ctrl-D quits.")
    async with manager:
        await run_terminal(BotRuntime(manager, runner), read_line, write)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    manager, runner = build_manager(), build_runner()
    token = os.environ.get("TELEGRAM_BOT_TOKEN")
    if "--terminal" in sys.argv or not token:
        asyncio.run(terminal(manager, runner))
        return
    build_application(token, manager, runner).run_polling()


if __name__ == "__main__":
    main()
