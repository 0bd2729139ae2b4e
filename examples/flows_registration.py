"""Seed 002's registration state machine (name, email, confirm) as a chatstate flow.

The transition table is the seed's; /cancel and /back are the runner's escape commands, so they
work from every state without being repeated in the table.

Run it in the terminal demo (`chatstate demo`, example "registration").
"""

from __future__ import annotations

from chatstate.flows import (
    Finish,
    FlowContext,
    FlowRunner,
    Next,
    StateMachine,
    StateMachineFlow,
    validators,
)
from chatstate.flows.suggest import clip, fold

IDLE, NAME, EMAIL, CONFIRM = "idle", "awaiting_name", "awaiting_email", "awaiting_confirm"

machine = StateMachine(
    [IDLE, NAME, EMAIL, CONFIRM],
    {
        IDLE: {"/register": NAME},
        NAME: {"text": EMAIL},
        EMAIL: {"email": CONFIRM},
        CONFIRM: {"yes": IDLE, "no": NAME},
    },
    initial=IDLE,
    final=[IDLE],
)

_name = validators.length(1, 80, messages={"long": "Please use at most {max} characters."})
_email = validators.email()


async def ask_name(ctx: FlowContext) -> Next | None:
    result = _name(ctx.text, ctx.validation_context())
    if not result.ok:
        await ctx.fail(result.error or "")
        return None
    return Next(event="text", data={"name": result.value})


async def ask_email(ctx: FlowContext) -> Next | None:
    result = _email(ctx.text, ctx.validation_context())
    if not result.ok:
        await ctx.fail(result.error or "")
        return None
    return Next(event="email", data={"email": result.value})


async def confirm(ctx: FlowContext) -> Next | None:
    answer = fold(ctx.text)
    if answer in ("yes", "confirm", "si", "sim", "ok"):
        return Next(event="yes")
    if answer in ("no", "edit", "editar"):
        return Next(event="no")
    await ctx.fail('Please press "Confirm" or "Edit".')
    return None


def build_registration(version: int = 1) -> StateMachineFlow:
    flow = StateMachineFlow(
        "register", machine=machine, initial=NAME, version=version, title="Register",
        description="Seed 002's registration FSM", store_as="profile", finish=Finish.MENU,
        on_complete=lambda data: f"✅ Registered {clip(data['name'])} <{data['email']}>.",
    )
    flow.on(NAME, ask_name, prompt="What is your name?", help="Type your name, e.g. Ana Lopez.")
    flow.on(
        EMAIL, ask_email,
        prompt=lambda data: f"Nice, {clip(data['name'], 40)}! What is your email?",
        help="Type an email address, like name@example.com.",
    )
    flow.on(
        CONFIRM, confirm,
        prompt=lambda data: f"Confirm:\nName: {clip(data['name'])}\nEmail: {data['email']}",
        buttons=[("✅ Confirm", "yes"), ("✏️ Edit", "no")],
        help="Confirm to finish, or Edit to start the answers again.",
    )
    return flow


def build_runner() -> FlowRunner:
    return FlowRunner({"register": build_registration()}, main_menu="Welcome! What next?")

