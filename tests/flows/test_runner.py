"""The runner's mechanics on small purpose-built flows, on a bare Session."""

from __future__ import annotations

from typing import Any

import pytest
from flowchat import Chat

from chatstate.errors import FlowError
from chatstate.flows import (
    IDLE,
    Commands,
    End,
    Escape,
    FlowResult,
    FlowRunner,
    FlowTimeouts,
    GraphFlow,
    Input,
    OnExhausted,
    Step,
    SubFlow,
    VersionChange,
    Wizard,
    diagram_command,
    make_payload,
    validators,
)
from chatstate.model import FlowPosition, Incoming


def survey(version: int = 1, **settings: Any) -> Wizard:
    steps = [
        Step("name", "Your name?", validate=validators.length(2, 40)),
        Step("age", "Your age?", validate=validators.integer(1, 120), max_attempts=2),
        Step("nickname", "A nickname?", optional=True),
        Step("colour", "Favourite colour?", choices=["Red", "Green", "Blue"]),
    ]
    if version >= 2:
        steps.insert(1, Step("city", "Your city?"))
    return Wizard("survey", steps, version=version, **settings)


async def test_wizard_complete_run_and_result_hook() -> None:
    results: list[FlowResult] = []
    runner = FlowRunner({"survey": survey(store_as="profile")}, on_result=lambda s, r:
                        results.append(r))
    chat = Chat(runner)
    await chat.send("/survey")
    assert chat.text == "Your name?"
    await chat.send("Ana")
    await chat.send("33")
    await chat.send("/skip")
    await chat.press("Green")
    assert chat.session.state == IDLE and chat.session.flow is None
    assert chat.session.data["profile"] == {"name": "Ana", "age": 33, "nickname": None,
                                            "colour": "Green"}
    assert [r.status for r in results] == ["completed"]
    assert "Done" in chat.text


async def test_attempts_are_counted_reset_on_success_and_exhaust_with_cancel() -> None:
    chat = Chat(FlowRunner([survey()]))
    await chat.send("/survey")
    await chat.send("A")
    assert "(attempt 1 of 3)" in chat.text
    await chat.send("B")
    assert "(attempt 2 of 3)" in chat.text
    await chat.send("Ana")
    assert chat.session.flow.attempts == 0
    await chat.send("old")  # age: max_attempts=2
    assert "(attempt 1 of 2)" in chat.text
    await chat.send("older")
    assert "Too many invalid attempts" in chat.text
    assert chat.replies[-1].remove_keyboard
    assert chat.session.flow is None and chat.session.state == IDLE


async def test_on_exhausted_skip_and_handoff() -> None:
    handoffs: list[FlowResult] = []
    flow = Wizard("w", [
        Step("a", "A?", validate=validators.integer(), optional=True, max_attempts=1,
             on_exhausted="skip"),
        Step("b", "B?", validate=validators.integer(), max_attempts=2, on_exhausted="handoff"),
    ])
    chat = Chat(FlowRunner([flow], on_handoff=lambda s, r: handoffs.append(r)))
    await chat.send("/w")
    await chat.send("x")
    assert "Skipped" in chat.text and "B?" in chat.text
    assert chat.session.flow.data == {"a": None}
    await chat.send("x")
    await chat.send("y")
    assert "passing you to a person" in chat.text
    assert handoffs and handoffs[0].status == "handoff"
    assert chat.session.labels["handoff"] == "w"
    assert chat.session.flow is None


async def test_escape_aliases_in_three_languages_and_per_flow_escapes() -> None:
    runner = FlowRunner([survey()])
    for word in ["/cancel", "/cancelar", "cancelar", "Cancel!", "/sair", "/CANCEL@my_bot now"]:
        chat = Chat(runner)
        await chat.send("/survey")
        await chat.send(word)
        assert chat.session.flow is None, word
        assert chat.replies[0].remove_keyboard
    chat = Chat(runner)
    await chat.send("/survey")
    await chat.send("Ana")
    await chat.send("voltar")
    assert chat.session.flow.step == "name"
    await chat.send("/ayuda")
    assert "You can use" in chat.text and "Your name?" in chat.text

    strict = Wizard("strict", [Step("a", "A?"), Step("b", "B?")], escapes=["cancel"])
    chat = Chat(FlowRunner([strict]))
    await chat.send("/strict")
    await chat.send("first")
    await chat.send("/back")
    assert "I don't know the command /back" in chat.text
    assert "/back for the previous step" not in chat.text
    assert chat.session.flow.step == "b"
    await chat.send("back")  # a bare word is an ordinary answer in this flow
    assert chat.session.flow is None


async def test_replies_follow_the_users_language() -> None:
    chat = Chat(FlowRunner([survey()]))
    await chat.send("/survey", language="es-MX")
    await chat.send("A", language="es-MX")
    assert "(intento 1 de 3)" in chat.text
    await chat.send("/cancelar", language="es")
    assert chat.text.startswith("❌ Cancelado")
    await chat.send("/survey", language="pt-BR")
    await chat.send("/ajuda", language="pt-BR")
    assert "Você pode usar" in chat.text
    custom = Commands().with_aliases(Escape.CANCEL, "annuler")
    chat = Chat(FlowRunner([survey()], commands=custom))
    await chat.send("/survey")
    await chat.send("/annuler")
    assert chat.session.flow is None


async def test_back_is_bounded_and_takes_a_count() -> None:
    flow = Wizard("long", [Step(f"s{i}", f"Q{i}?") for i in range(8)], max_back=3)
    chat = Chat(FlowRunner([flow]))
    await chat.send("/long")
    for i in range(6):
        await chat.send(f"a{i}")
    assert chat.session.flow.stack == ["s3", "s4", "s5"]
    await chat.send("/back 2")
    assert chat.session.flow.step == "s4"
    await chat.send("/back many")
    assert "/back takes an optional number" in chat.text
    await chat.send("/back 99")
    assert chat.session.flow.step == "s3"
    await chat.send("/back")
    assert "nothing to go back to" in chat.text
    assert chat.session.flow.step == "s3"


async def test_start_reset_help_and_fallback_when_idle() -> None:
    runner = FlowRunner([survey()], main_menu="Menu!")
    chat = Chat(runner)
    await chat.send("hello")
    assert "I didn't understand that" in chat.text and "/survey" in chat.text
    assert chat.buttons == ["Survey"]
    await chat.press("Survey")
    assert chat.text == "Your name?"
    await chat.send("/start")
    assert chat.text == "Menu!" and chat.session.flow is None
    await chat.send("/start survey")  # deep link
    assert chat.session.flow.step == "name"
    chat.session.data["keep"] = 1
    await chat.send("/reset")
    assert chat.session.flow is None and chat.session.data == {}
    await chat.send("/cancel")
    assert "nothing to cancel" in chat.text
    await chat.send("/back")
    assert "Here's what I can do" in chat.text
    await chat.send("/nonsense arg1 arg2")
    assert "I don't know the command /nonsense" in chat.text
    await chat.send("survey")
    assert chat.session.flow is not None


async def test_bad_input_gets_a_helpful_reply_and_leaves_the_step() -> None:
    chat = Chat(FlowRunner([survey()], max_text_length=4096))
    await chat.send("/survey")
    await chat.send("")
    assert "didn't get any text" in chat.text
    await chat.send("   ")
    assert "didn't get any text" in chat.text
    await chat.attach("sticker")
    assert "can't use a sticker" in chat.text
    huge = "x" * 100_000
    await chat.send(huge)
    assert "too long" in chat.text and len(chat.text) < 300
    await chat.send_incoming(Incoming.button("garbage"))
    assert "no longer valid" in chat.text
    await chat.send("/survey")
    assert "in the middle of Survey" in chat.text
    assert chat.session.flow.step == "name" and chat.session.flow.attempts == 0
    await chat.send("Ana")
    await chat.send("44")
    await chat.send("/skip")
    # a long answer is clipped when echoed back in a suggestion
    await chat.send("Gree" + "n" * 3000)
    assert len(chat.text) < 400


async def test_stale_and_old_version_buttons_are_recognised() -> None:
    chat = Chat(FlowRunner([survey()]))
    await chat.send("/survey")
    for payload in [make_payload("survey", 1, "colour", "Red"),  # not the current step
                    make_payload("survey", 0, "name", "Red")]:  # an older deploy
        await chat.send_incoming(Incoming.button(payload))
        assert "earlier question" in chat.text and "Your name?" in chat.text
    assert chat.session.flow.step == "name"
    await chat.send_incoming(Incoming.button("menu/survey"))
    assert "in the middle of" in chat.text


async def test_version_change_restart_step_restart_and_migrate() -> None:
    chat = Chat(FlowRunner([survey(1)]))
    await chat.send("/survey")
    await chat.send("Ana")  # now at "age" on v1
    # deploy v2 (adds "city" after "name"): restart the current step, keep answers
    chat.runner = FlowRunner([survey(2)])
    await chat.send("40")
    assert "updated" in chat.text and "Your age?" in chat.text
    assert chat.session.flow.version == 2 and chat.session.flow.data == {"name": "Ana"}
    await chat.send("40")
    assert chat.session.flow.step == "nickname"

    chat = Chat(FlowRunner([survey(1)]))
    await chat.send("/survey")
    await chat.send("Ana")
    chat.runner = FlowRunner([survey(2, on_version_change=VersionChange.RESTART)])
    await chat.send("40")
    assert "start again" in chat.text and chat.session.flow.step == "name"
    assert chat.session.flow.data == {}

    def migrate(pos: FlowPosition, old: int) -> FlowPosition:
        pos.data["city"] = "unknown"
        return pos

    chat = Chat(FlowRunner([survey(1)]))
    await chat.send("/survey")
    await chat.send("Ana")
    chat.runner = FlowRunner([survey(2, on_version_change="migrate", migrate=migrate)])
    await chat.send("40")  # handled at once after migrating
    assert chat.session.flow.step == "nickname"
    assert chat.session.flow.data == {"name": "Ana", "city": "unknown", "age": 40}

    def broken(pos: FlowPosition, old: int) -> FlowPosition:
        raise KeyError("boom")

    chat = Chat(FlowRunner([survey(1)]))
    await chat.send("/survey")
    await chat.send("Ana")
    chat.runner = FlowRunner([survey(2, on_version_change="migrate", migrate=broken)])
    await chat.send("40")  # a failing migration falls back to asking the step again
    assert "Your age?" in chat.text and chat.session.flow.version == 2

    with pytest.raises(FlowError, match="migrate="):
        survey(2, on_version_change="migrate")


async def test_a_removed_flow_or_step_never_strands_the_session() -> None:
    chat = Chat(FlowRunner([survey()]))
    await chat.send("/survey")
    chat.runner = FlowRunner([Wizard("other", [Step("x", "X?")])])
    await chat.send("Ana")
    assert "no longer available" in chat.text and chat.session.flow is None
    assert chat.runner.is_declared(chat.session)

    chat = Chat(FlowRunner([survey()]))
    await chat.send("/survey")
    chat.session.flow.step = "renamed_step"
    await chat.send("Ana")
    assert chat.session.flow.step == "name" and "Your name?" in chat.text


async def test_a_step_that_raises_keeps_the_session_usable() -> None:
    calls = {"n": 0}

    def flaky(text: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database down")
        return True

    flow = Wizard("f", [Step("a", "A?"), Step("b", "B?", validate=flaky), Step("c", "C?")])
    chat = Chat(FlowRunner([flow]))
    await chat.send("/f")
    await chat.send("one")
    await chat.send("two")
    assert "Something went wrong" in chat.text
    assert chat.session.flow.step == "b" and chat.session.flow.data == {"a": "one"}
    assert chat.session.record.counters.errors == 1
    await chat.send("two")
    assert chat.text == "C?"


async def test_subflow_returns_its_result_back_and_cancel_leaves_both() -> None:
    inner = Wizard("inner", [Step("x", "X?"), Step("y", "Y?")])
    outer = GraphFlow("outer", {
        "start": Input("Name?", field="name", next="sub"),
        "sub": SubFlow(inner, next="end", field="inner"),
        "end": End(lambda data: f"Got {data['inner']}"),
    })
    runner = FlowRunner([outer])
    assert set(runner.flows) == {"outer", "inner"}
    chat = Chat(runner)
    await chat.send("/outer")
    await chat.send("Ana")
    assert chat.text == "X?" and chat.session.flow.parent.name == "outer"
    await chat.send("/back")  # first step of the sub-flow: back to the parent's question
    assert chat.session.flow.name == "outer" and chat.text == "Name?"
    await chat.send("Ana")
    await chat.send("1")
    await chat.send("2")
    assert "Got {'x': '1', 'y': '2'}" in chat.text
    assert chat.session.flow is None
    await chat.send("/outer")
    await chat.send("Ana")
    await chat.send("/cancel")
    assert chat.session.flow is None and "Outer" in chat.text


def test_flow_declaration_errors() -> None:
    with pytest.raises(FlowError):
        Wizard("bad/name", [Step("a", "A?")])
    with pytest.raises(FlowError):
        Wizard("w", [])
    with pytest.raises(FlowError):
        Step("s", "S?", choices=["a"], validate=validators.email())
    with pytest.raises(FlowError, match="undeclared node"):
        GraphFlow("g", {"start": Input("?", field="f", next="nowhere")})
    with pytest.raises(FlowError, match="escape"):
        FlowRunner({"cancel": survey()})
    with pytest.raises(FlowError):
        FlowTimeouts(idle_timeout=60, warn_before=120)


def test_timeouts_are_plain_attributes_for_the_lifecycle() -> None:
    flow = survey(timeouts=FlowTimeouts(idle_timeout=600, warn_before=60,
                                        expiry_message="Bye"))
    assert flow.timeouts == FlowTimeouts(600, 60, "Bye")
    assert survey().timeouts is None


def test_diagram_command() -> None:
    text = diagram_command("examples.flows_order:build_order")
    assert text.startswith("stateDiagram-v2")
    assert "s_quantity --> s_address" in text
    assert "s_confirm --> [*]" in text
    runner_text = diagram_command("examples.registry:FLOW_EXAMPLES.customer")
    assert "%% customer v1" in runner_text and "%% signup v1" in runner_text
    from chatstate.errors import ConfigurationError

    for bad in ["nocolon", "examples.nope:x", "examples.flows_order:missing"]:
        with pytest.raises(ConfigurationError):
            diagram_command(bad)


def test_on_exhausted_enum_accepts_strings() -> None:
    assert Step("s", "?", on_exhausted="handoff").on_exhausted is OnExhausted.HANDOFF


async def test_cancel_leaves_even_when_the_result_hook_fails() -> None:
    def broken_hook(session: object, result: FlowResult) -> None:
        raise RuntimeError("analytics down")

    chat = Chat(FlowRunner([survey()], on_result=broken_hook))
    await chat.send("/survey")
    await chat.send("Ana")
    await chat.send("/cancel")
    assert chat.session.flow is None and chat.session.state == IDLE
    assert "Something went wrong" in chat.text


async def test_step_funnel_events_are_announced_after_the_update() -> None:
    from chatstate.clock import FakeClock
    from chatstate.engine import SessionManager
    from chatstate.events import Event
    from chatstate.stores.memory import MemoryStore

    manager = SessionManager(MemoryStore(), clock=FakeClock())
    seen: list[tuple[str, str | None]] = []

    def record(event: Event) -> None:
        if event.name.startswith("flow.step."):
            seen.append((event.name, event.data.get("step")))

    manager.events.on("*", record)
    chat = Chat(FlowRunner([survey()]), manager)
    await chat.send("/start survey")
    await chat.send("Ada")
    await chat.send("not a number")  # a failed answer stays on the step: no event
    await chat.send("/cancel")
    assert seen == [
        ("flow.step.entered", "name"),
        ("flow.step.completed", "name"),
        ("flow.step.entered", "age"),
        ("flow.step.abandoned", "age"),
    ]
