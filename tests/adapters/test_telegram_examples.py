"""The seed 000 booking bot and the seed 002 flows bot, end to end through python-telegram-bot
and the fake Bot API server: a user taps buttons and types answers as on Telegram."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from examples import seed000_booking_bot, seed002_flows_bot
from examples.flows_booking import Scheduler
from fake_telegram import TOKEN, Call, FakeTelegram, callback_update, payloads, text_update
from telegram import Update

from chatstate.adapters.base import BotRuntime, LifecycleNotifier, run_terminal
from chatstate.adapters.telegram import TelegramNotifier
from chatstate.clock import FakeClock
from chatstate.lifecycle import Lifecycle
from chatstate.model import Status
from chatstate.stores.memory import MemoryStore

WEDNESDAY = dt.datetime(2025, 1, 15, 10, 0, tzinfo=dt.UTC).timestamp()
USER = 42


class TelegramUser:
    """Sends what a Telegram user sends and reads what the bot answered."""

    def __init__(self, app: Any, fake: FakeTelegram, user_id: int = USER) -> None:
        self.app = app
        self.fake = fake
        self.user_id = user_id

    async def say(self, text: str) -> list[str]:
        return await self._feed(text_update(text, user_id=self.user_id))

    async def tap(self, label: str) -> list[str]:
        """Press the inline button called `label` on the newest message that has it."""
        for call in reversed(self.fake.sent(self.user_id)):
            data = payloads(call).get(label)
            if data is not None:
                return await self._feed(callback_update(
                    data, user_id=self.user_id, message_id=call.message_id))
        raise AssertionError(f"no button {label!r} was sent; sent: {self.fake.texts()}")

    async def _feed(self, data: dict[str, Any]) -> list[str]:
        before = len(self.fake.sent(self.user_id))
        await self.app.process_update(Update.de_json(data, self.app.bot))
        return [c.text or "" for c in self.fake.sent(self.user_id)[before:]]

    @property
    def last(self) -> Call:
        return self.fake.sent(self.user_id)[-1]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=WEDNESDAY)


async def booking_app(fake: FakeTelegram, clock: FakeClock, scheduler: Scheduler
                      ) -> tuple[Any, Any]:
    manager = seed000_booking_bot.build_manager(MemoryStore(), clock=clock)
    app = seed000_booking_bot.build_application(
        TOKEN, manager, seed000_booking_bot.build_runner(scheduler),
        base_url=f"{fake.base_url}/bot",
    )
    await app.initialize()
    return app, manager


async def test_seed000_booking_end_to_end(fake: FakeTelegram, clock: FakeClock) -> None:
    scheduler = Scheduler()
    app, manager = await booking_app(fake, clock, scheduler)
    user = TelegramUser(app, fake)
    try:
        assert await user.say("/start") == ["Welcome to the appointment scheduler!"]
        assert await user.tap("Book an appointment") == ["What would you like to book?"]
        assert await user.tap("Hair") == ["Which service?"]
        assert await user.tap("Haircut") == ["With whom?"]
        assert await user.tap("Marta") == ["Which day? (e.g. tomorrow, friday, 24/12/2025)"]
        assert await user.say("someday") == [
            'I could not read that date. Try YYYY-MM-DD, DD/MM/YYYY, "today", "tomorrow" or a '
            "weekday name.\n(attempt 1 of 3)"
        ]
        assert await user.say("tomorrow") == ["At what time?"]
        assert await user.tap("10:00") == [
            "Please confirm:\nCategory: Hair\nService: Haircut\nProvider: Marta\n"
            "Date: 2025-01-16\nTime: 10:00"
        ]
        done = await user.tap("✅ Confirm")
        assert done[0] == ("✅ Booked B0001: Haircut with Marta on Thursday 16 January 2025 at "
                           "10:00. See you then!")
        assert len(fake.of("answerCallbackQuery")) == 6
        record = await manager.get(f"telegram:user:{USER}")
        assert record is not None and record.status is Status.CLOSED
        assert record.close_reason == "completed"
        assert record.data["booking"]["provider"] == "Marta"
        assert ("Marta", "2025-01-16", "10:00") in scheduler.booked
    finally:
        await app.shutdown()


async def test_seed000_error_recovery_and_reset(fake: FakeTelegram, clock: FakeClock) -> None:
    scheduler = Scheduler()
    app, manager = await booking_app(fake, clock, scheduler)
    user = TelegramUser(app, fake)
    try:
        await user.say("/book")
        for label in ("Nails", "Pedicure", "Joao"):
            await user.tap(label)
        scheduler.broken = True  # the scheduling backend fails on the time question
        first = await user.say("friday")
        assert first == ["⚠️ Something went wrong on our side. Your answers are kept; please "
                         "try again, or /cancel."]
        second = await user.say("friday")
        assert second == first  # the same apology: the answer was not lost, nothing moved
        third = await user.say("friday")
        assert third == ["Too many errors in a row, so I started over. Send /book to try "
                         "again."]
        assert user.last.markup == {"remove_keyboard": True}
        record = await manager.get(f"telegram:user:{USER}")
        assert record is not None and record.flow is None and record.counters.errors == 3
        assert record.counters.consecutive_errors == 0
        scheduler.broken = False
        assert await user.say("/book") == ["What would you like to book?"]
    finally:
        await app.shutdown()


async def test_seed000_warns_before_the_booking_expires(fake: FakeTelegram, clock: FakeClock
                                                        ) -> None:
    app, manager = await booking_app(fake, clock, Scheduler())
    user = TelegramUser(app, fake)
    try:
        await user.say("/book")
        lifecycle = LifecycleNotifier(TelegramNotifier(app.bot)).attach(Lifecycle(manager))
        clock.advance(13 * 60 + 1)
        assert (await lifecycle.run_once()).warned == 1
        assert "will expire in 2 minute(s)" in (user.last.text or "")
        clock.advance(2 * 60)
        assert (await lifecycle.run_once()).expired == 1
        assert user.last.text == ("Your booking was not finished and has expired. Send /book "
                                  "to start again.")
        lifecycle.detach()
    finally:
        await app.shutdown()


async def test_seed002_flows_end_to_end(fake: FakeTelegram) -> None:
    manager = seed002_flows_bot.build_manager(MemoryStore())
    app = seed002_flows_bot.build_application(
        TOKEN, manager, seed002_flows_bot.build_runner(), base_url=f"{fake.base_url}/bot")
    await app.initialize()
    user = TelegramUser(app, fake)
    try:
        # registration: the seed's FSM, with a bad email retried
        await user.say("/register")
        await user.say("Ana Lopez")
        assert "email" in (await user.say("ana-at-example"))[0].lower()
        await user.say("ana@example.com")
        done = await user.tap("✅ Confirm")
        assert done[0] == "✅ Registered Ana Lopez <ana@example.com>."
        # order: the wizard, with the seed's quantity limit
        assert await user.tap("Order") == ["What product do you want to order?"]
        await user.tap("Banana")
        assert await user.say("500") == ["Maximum 100 items.\n(attempt 1 of 3)"]
        assert await user.say("12") == ["What is your delivery address?"]
        await user.say("Calle Mayor 1, Madrid")
        placed = await user.tap("✅ Confirm")
        assert placed[0] == ("✅ Order placed!\nProduct: Banana\nQuantity: 12\n"
                             "Address: Calle Mayor 1, Madrid")
        # customer: the branching flow, existing account, then the account menu
        await user.say("/customer")
        assert await user.tap("Existing Customer") == ["Please enter your account ID:"]
        assert await user.say("a1001") == ["Account A1001. What would you like to do?"]
        orders = await user.tap("View Orders")
        assert orders[0] == "Your orders:\n#501 Apples x3\n#502 Pears"
        record = await manager.get(f"telegram:user:{USER}")
        assert record is not None and record.flow is None
        assert record.data["profile"] == {"name": "Ana Lopez", "email": "ana@example.com"}
        assert record.data["last_order"]["quantity"] == 12
    finally:
        await app.shutdown()


async def test_examples_run_offline_in_the_terminal(clock: FakeClock) -> None:
    manager = seed000_booking_bot.build_manager(MemoryStore(), clock=clock)
    lines = iter(["/book", "Hair", "Colour", "Marta", "tomorrow", "09:00", "✅ Confirm"])
    out: list[str] = []

    async def read_line() -> str | None:
        await asyncio.sleep(0)
        return next(lines, None)

    runtime = BotRuntime(manager, seed000_booking_bot.build_runner())
    assert await run_terminal(runtime, read_line, out.append) == 7
    assert out[0].startswith("What would you like to book?\n[Hair]  [Nails]  [Massage]")
    assert out[-1].startswith("✅ Booked B0001: Colour with Marta on Thursday 16 January 2025")
