"""Every flow example driven through SessionManager, one update per message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from examples import flows_booking, flows_registration
from examples_spec import BY_NAME, SPECS, ExampleSpec
from flowchat import WEDNESDAY, Chat

from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.flows import FlowRunner
from chatstate.model import Status
from chatstate.stores.url import open_store

ids = [s.name for s in SPECS]


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    m = SessionManager("memory://", clock=FakeClock(WEDNESDAY))
    yield m
    await m.aclose()


async def walk(chat: Chat, spec: ExampleSpec, upto: int) -> None:
    """Start the example and answer its first `upto` steps correctly."""
    await chat.send(spec.command)
    for step, good, _ in spec.path[:upto]:
        assert await chat.step() == step
        await chat.send(good)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_complete_run(spec: ExampleSpec, manager: SessionManager) -> None:
    chat = Chat(spec.build(), manager)
    await walk(chat, spec, len(spec.path))
    record = await chat.record()
    assert record.flow is None
    if spec.end_state == "closed":
        assert record.status is Status.CLOSED
    else:
        assert record.status is Status.ACTIVE and record.state == "idle"
    spec.check(record)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_bad_input_at_each_step(spec: ExampleSpec, manager: SessionManager) -> None:
    for index, (step, good, bad) in enumerate(spec.path):
        chat = Chat(spec.build(), manager)
        await chat.send("/cancel")
        await walk(chat, spec, index)
        await chat.send(bad)
        assert await chat.step() == step, (step, chat.text)
        assert "(attempt 1 of 3)" in chat.text
        assert (await chat.record()).flow.attempts == 1
        for odd in ["", "/frobnicate x y", "/back nope"]:
            await chat.send(odd)
            assert chat.text, odd
            assert await chat.step() == step
        await chat.attach("sticker")
        assert "sticker" in chat.text and await chat.step() == step
        await chat.send("z" * 100_000)
        assert len(chat.text) < 1000 and await chat.step() == step
        await chat.send(good)
        following = spec.path[index + 1][0] if index + 1 < len(spec.path) else None
        assert await chat.step() == following


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_exhausting_retries_at_each_step(spec: ExampleSpec, manager: SessionManager) -> None:
    for index, (_step, _good, bad) in enumerate(spec.path):
        chat = Chat(spec.build(), manager)
        await chat.send("/cancel")
        await walk(chat, spec, index)
        for _ in range(3):
            await chat.send(bad)
        assert "Too many invalid attempts" in chat.text
        record = await chat.record()
        assert record.flow is None and record.state == "idle"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_back_at_each_step(spec: ExampleSpec, manager: SessionManager) -> None:
    for index, (step, _good, _bad) in enumerate(spec.path):
        chat = Chat(spec.build(), manager)
        await chat.send("/cancel")
        await walk(chat, spec, index)
        await chat.send("/back")
        if index == 0:
            assert "nothing to go back to" in chat.text
            assert await chat.step() == step
        else:
            assert await chat.step() == spec.path[index - 1][0]
            assert chat.replies, "the previous question is asked again"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_cancel_from_each_step(spec: ExampleSpec, manager: SessionManager) -> None:
    for index in range(len(spec.path)):
        chat = Chat(spec.build(), manager)
        await chat.send("/cancel")
        await walk(chat, spec, index)
        await chat.send("/cancel")
        assert "Cancelled" in chat.text and chat.replies[0].remove_keyboard
        record = await chat.record()
        assert record.flow is None and record.state == "idle"


async def restart_mid_flow(spec: ExampleSpec, first: SessionManager,
                           reopen: Callable[[], SessionManager]) -> None:
    half = len(spec.path) // 2
    await walk(Chat(spec.build(), first), spec, half)
    await first.aclose()
    second = reopen()  # a new process: new manager, newly built flows, same storage
    chat = Chat(spec.build(), second)
    assert await chat.step() == spec.path[half][0]
    for _step, good, _ in spec.path[half:]:
        await chat.send(good)
    spec.check(await chat.record())
    await second.aclose()


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_restart_mid_flow_on_sqlite(spec: ExampleSpec, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    clock = FakeClock(WEDNESDAY)
    await restart_mid_flow(spec, SessionManager(url, clock=clock),
                           lambda: SessionManager(url, clock=clock))


@pytest.mark.parametrize("spec", SPECS, ids=ids)
async def test_new_manager_and_flows_resume_from_the_stored_record(spec: ExampleSpec) -> None:
    # Until the SQLite store lands this shows the part that is the flows' job: everything a
    # resumed conversation needs is in the stored record, nothing in the flow objects.
    store = open_store("memory://")
    clock = FakeClock(WEDNESDAY)
    await restart_mid_flow(spec, SessionManager(store, clock=clock),
                           lambda: SessionManager(store, clock=clock))


async def test_version_change_mid_conversation_migrates_booking(manager: SessionManager) -> None:
    scheduler = flows_booking.Scheduler()
    spec = BY_NAME["booking"]
    chat = Chat(flows_booking.build_runner(scheduler, version=1), manager)
    await walk(chat, spec, 5)
    assert await chat.step() == "confirm"
    # deploy v2 (adds a phone step; sessions at the confirmation are asked it first)
    chat.runner = flows_booking.build_runner(scheduler, version=2)
    await chat.send("yes")
    assert await chat.step() == "phone"
    record = await chat.record()
    assert record.flow.version == 2 and record.flow.data["time"] == "10:00"
    await chat.send("612 34 56 78")
    assert await chat.step() == "confirm"
    await chat.send("yes")
    record = await chat.record()
    assert record.status is Status.CLOSED and record.data["booking"]["phone"] == "+34612345678"


async def test_version_change_restarts_the_registration_step(manager: SessionManager) -> None:
    chat = Chat(FlowRunner({"register": flows_registration.build_registration(1)}), manager)
    await chat.send("/register")
    await chat.send("Ana Lopez")
    chat.runner = FlowRunner({"register": flows_registration.build_registration(2)})
    await chat.send("ana@example.com")
    assert "updated" in chat.text and await chat.step() == "awaiting_email"
    await chat.send("ana@example.com")
    assert await chat.step() == "awaiting_confirm"


async def test_a_backend_that_raises_keeps_the_booking_usable(manager: SessionManager) -> None:
    scheduler = flows_booking.Scheduler()
    chat = Chat(flows_booking.build_runner(scheduler), manager)
    spec = BY_NAME["booking"]
    await walk(chat, spec, 3)
    scheduler.broken = True
    await chat.send("friday")  # entering "time" asks the scheduler, which fails
    assert "Something went wrong" in chat.text
    record = await chat.record()
    assert record.flow.step == "date" and "date" not in record.flow.data
    assert record.counters.errors == 1
    scheduler.broken = False
    await chat.send("friday")
    assert await chat.step() == "time" and "10:00" in chat.buttons
    await chat.press("10:00")
    await chat.press("✅ Confirm")
    assert (await chat.record()).status is Status.CLOSED


async def test_booking_edit_forgets_dependent_answers(manager: SessionManager) -> None:
    chat = Chat(flows_booking.build_runner(), manager)
    await walk(chat, BY_NAME["booking"], 5)
    await chat.press("✏️ service")
    await chat.press("Colour")  # Colour has its own providers: provider and time are asked again
    assert await chat.step() == "provider"
    await chat.press("Marta")
    assert await chat.step() == "time"
    await chat.press("11:00")
    assert await chat.step() == "confirm"
    assert "Colour" in chat.text and "11:00" in chat.text


async def test_fully_booked_day_goes_back_to_the_date(manager: SessionManager) -> None:
    scheduler = flows_booking.Scheduler()
    for hour in flows_booking.OPENING_HOURS:
        scheduler.booked[("Marta", "2025-03-14", hour)] = {}
    chat = Chat(flows_booking.build_runner(scheduler), manager)
    await walk(chat, BY_NAME["booking"], 3)
    await chat.send("friday")
    assert "No free times" in chat.text and await chat.step() == "date"


async def test_customer_new_account_through_the_signup_subflow(manager: SessionManager) -> None:
    chat = Chat(BY_NAME["customer"].build(), manager)
    await chat.send("/customer")
    await chat.press("New Customer")
    assert (await chat.record()).flow.name == "signup"
    await chat.send("Zoe")
    await chat.send("zoe@example.com")
    assert "Account A2001" in chat.text
    await chat.press("View Orders")
    assert "No orders yet" in chat.text
    assert (await chat.record()).flow is None


async def test_flow_events_and_timeouts_for_the_lifecycle(manager: SessionManager) -> None:
    spec = BY_NAME["order"]
    runner = spec.build()
    chat = Chat(runner, manager)
    await walk(chat, spec, 2)
    timeouts = runner.timeouts_for((await chat.record()).flow)
    assert timeouts is not None and timeouts.idle_timeout == 30 * 60
    assert timeouts.expiry_message and "/order" in timeouts.expiry_message
    assert runner.timeouts_for(None) is None
    for _step, good, _ in spec.path[2:]:
        await chat.send(good)
    counts = manager.events.counts
    assert counts["flow.started"] == 1 and counts["flow.completed"] == 1
    await chat.send("/order")
    await chat.send("/cancel")
    assert counts["flow.started"] == 2 and counts["flow.cancelled"] == 1
