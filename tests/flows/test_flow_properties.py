"""Random message sequences against every flow example, through SessionManager.

Whatever is sent: nothing raises out of the engine, the session is always idle or at a step its
flow declares, and one /cancel always brings it back to idle.
"""

from __future__ import annotations

import asyncio

from examples_spec import SPECS, ExampleSpec
from flowchat import WEDNESDAY, Chat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstate.clock import FakeClock
from chatstate.engine import SessionManager
from chatstate.flows import make_payload
from chatstate.model import Attachment, Incoming, Status

ESCAPES = ["/cancel", "/back", "/back 2", "/back x", "/help", "/start", "/reset", "/skip",
           "cancelar", "voltar", "/ayuda", "/start book", "/nope arg"]


def messages(spec: ExampleSpec) -> st.SearchStrategy[tuple[str, object]]:
    answers = [a for _, good, bad in spec.path for a in (good, bad)] + spec.extra_words
    return st.one_of(
        st.tuples(st.just("text"), st.sampled_from([spec.command, *answers, *ESCAPES])),
        st.tuples(st.just("text"), st.text(max_size=30)),
        st.tuples(st.just("press"), st.integers(0, 12)),  # a button of the last replies
        st.tuples(st.just("payload"), st.sampled_from([
            "garbage", "menu/order", "menu/nothing", make_payload("book", 0, "date", "x"),
            make_payload(spec.path[-1][0], 1, spec.path[0][0], "yes"),
        ])),
        st.tuples(st.just("other"), st.sampled_from(["empty", "sticker", "huge"])),
    )


async def send(chat: Chat, kind: str, value: object) -> None:
    if kind == "text":
        await chat.send(str(value))
    elif kind == "press":
        payloads = [b.payload for o in chat.replies for row in o.buttons for b in row if b.payload]
        if payloads:
            await chat.send_incoming(Incoming.button(payloads[int(value) % len(payloads)]))  # type: ignore[call-overload]
        else:
            await chat.send("?")
    elif kind == "payload":
        await chat.send_incoming(Incoming.button(str(value)))
    elif value == "empty":
        await chat.send_incoming(Incoming(text=""))
    elif value == "sticker":
        await chat.send_incoming(Incoming(attachments=[Attachment(kind="sticker")]))
    else:
        await chat.send("q" * 100_000)


async def run_sequence(spec: ExampleSpec, sequence: list[tuple[str, object]]) -> None:
    manager = SessionManager("memory://", clock=FakeClock(WEDNESDAY))
    chat = Chat(spec.build(), manager)
    try:
        for kind, value in sequence:
            await send(chat, kind, value)
            assert chat.replies, f"no reply to {kind} {str(value)[:40]!r}"
            record = await chat.record()
            if record.status is not Status.ACTIVE:
                continue  # a completed booking closes the session; the next update opens one
            async with manager.session(chat.key, message=False) as session:
                assert chat.runner.is_declared(session), (record.state, record.flow)
        await chat.send("/cancel")
        record = await chat.record()
        assert record.flow is None and record.state == "idle"
        assert record.counters.errors == 0, record.last_error
    finally:
        await manager.aclose()


def make_property_test(spec: ExampleSpec):  # type: ignore[no-untyped-def]
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(sequence=st.lists(messages(spec), min_size=1, max_size=14))
    def test(sequence: list[tuple[str, object]]) -> None:
        asyncio.run(run_sequence(spec, sequence))

    test.__name__ = f"test_random_messages_{spec.name}"
    return test


for _spec in SPECS:
    globals()[f"test_random_messages_{_spec.name}"] = make_property_test(_spec)
