from __future__ import annotations

import pytest
from flowchat import Chat

from chatstate.errors import FlowError, TransitionError
from chatstate.flows import FlowContext, FlowRunner, Next, StateMachine, StateMachineFlow
from chatstate.model import SessionKey, new_record
from chatstate.session import Session


def seed_machine() -> StateMachine:
    return StateMachine(
        ["idle", "awaiting_name", "awaiting_email", "awaiting_confirm"],
        {
            "idle": {"/register": "awaiting_name"},
            "awaiting_name": {"text": "awaiting_email", "/cancel": "idle"},
            "awaiting_email": {"email": "awaiting_confirm", "/back": "awaiting_name"},
            "awaiting_confirm": {"yes": "idle", "no": "awaiting_name"},
        },
    )


def test_can_transition_and_next_state() -> None:
    m = seed_machine()
    assert m.can_transition("idle", "/register")
    assert not m.can_transition("idle", "text")
    assert not m.can_transition("nowhere", "text")
    assert m.next_state("awaiting_confirm", "no") == "awaiting_name"
    with pytest.raises(TransitionError, match="accepted events: email, /back"):
        m.next_state("awaiting_email", "yes")
    with pytest.raises(TransitionError, match="unknown state"):
        m.next_state("lost", "yes")
    assert m.allows("awaiting_email", "awaiting_name")
    assert not m.allows("idle", "awaiting_confirm")


def test_undeclared_transition_changes_nothing() -> None:
    m = seed_machine()
    session = Session(new_record("test:user:1"), key=SessionKey.user("test", 1))
    session.state = "awaiting_email"
    assert m.apply(session, "email") == "awaiting_confirm"
    with pytest.raises(TransitionError):
        m.apply(session, "/register")
    assert session.state == "awaiting_confirm"


def test_guards_pick_the_first_passing_target() -> None:
    m = StateMachine(["ask", "adult", "minor"])
    m.add("ask", "age", "adult", guard=lambda d: d.get("age", 0) >= 18)
    m.add("ask", "age", "minor")
    assert m.next_state("ask", "age", {"age": 30}) == "adult"
    assert m.next_state("ask", "age", {"age": 12}) == "minor"
    with pytest.raises(TransitionError):
        StateMachine(["a"]).add("a", "x", "b")
    with pytest.raises(FlowError):
        StateMachine([])


async def test_handler_returning_an_undeclared_state_leaves_the_session_as_it_was() -> None:
    machine = StateMachine(["one", "two", "three", "done"], {"one": {"go": "two"},
                                                            "two": {"go": "done"}},
                           final=["done"])

    async def rogue(ctx: FlowContext) -> Next:
        ctx.data["touched"] = True
        return Next(state="three", data={"x": 1})

    flow = StateMachineFlow("rogue", machine=machine)
    flow.on("one", lambda ctx: Next(event="go", data={"first": ctx.text}), prompt="One?")
    flow.on("two", rogue, prompt="Two?")
    flow.on("three", lambda ctx: None, prompt="Three?")
    chat = Chat(FlowRunner([flow]))
    await chat.send("/rogue")
    await chat.send("hello")
    assert await chat.step() == "two"
    await chat.send("anything")
    assert "Something went wrong" in chat.text
    record = await chat.record()
    assert record.flow.step == "two"
    assert record.flow.data == {"first": "hello"}  # not "touched", not x
    assert record.counters.errors == 1
    assert "TransitionError" in (record.last_error or "")


async def test_handler_per_state_flow_with_plain_state_names() -> None:
    flow = StateMachineFlow("ping")
    flow.on("ask", lambda ctx: "answer" if ctx.text == "ping" else None, prompt="Say ping")
    flow.on("answer", lambda ctx: Next(state="ask", reply="pong"), prompt="Again?")
    chat = Chat(FlowRunner([flow]))
    await chat.send("/ping")
    await chat.send("nope")
    assert chat.replies == []  # the handler chose to stay silently
    await chat.send("ping")
    assert chat.text == "Again?"
    await chat.send("x")
    assert chat.text == "pong\nSay ping"
