"""Seed 002's branching customer flow: new or existing customer, account lookup, account menu.

New customers go through a nested sign-up wizard (a sub-flow that returns its answers to this
flow); existing customers give an account ID that an action looks up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from chatstate.flows import (
    Action,
    Ask,
    End,
    Finish,
    FlowRunner,
    GraphFlow,
    Input,
    Step,
    SubFlow,
    Wizard,
    validators,
)
from chatstate.flows.suggest import clip


@dataclass
class Account:
    id: str
    name: str
    email: str
    orders: list[str] = field(default_factory=list)


class AccountDirectory:
    """A stand-in for the bot's customer database."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {
            "A1001": Account("A1001", "Ana", "ana@example.com", ["#501 Apples x3", "#502 Pears"]),
            "A1002": Account("A1002", "Bruno", "bruno@example.com"),
        }
        self._ids = itertools.count(2001)

    async def find(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id.upper())

    async def create(self, name: str, email: str) -> Account:
        account = Account(f"A{next(self._ids)}", name, email)
        self.accounts[account.id] = account
        return account


def build_signup() -> Wizard:
    return Wizard("signup", [
        Step("name", "Welcome! Let's create your account. What is your name?",
             validate=validators.length(1, 80)),
        Step("email", "What is your email?", validate=validators.email()),
    ], title="Sign up")


def build_customer(directory: AccountDirectory, version: int = 1) -> GraphFlow:
    async def create_account(data: dict[str, Any]) -> str:
        signup = data["signup"]
        account = await directory.create(signup["name"], signup["email"])
        data["account_id"] = account.id
        return "account_menu"

    async def verify_account(data: dict[str, Any]) -> str:
        return "account_menu" if await directory.find(data["account_id"]) else "account_not_found"

    async def orders(data: dict[str, Any]) -> str:
        account = await directory.find(data["account_id"])
        listed = "\n".join(account.orders) if account and account.orders else "No orders yet."
        return f"Your orders:\n{listed}"

    async def save_profile(data: dict[str, Any]) -> str:
        account = await directory.find(data["account_id"])
        if account is not None:
            account.email = data["new_email"]
        return "profile_saved"

    def menu_prompt(data: dict[str, Any]) -> str:
        return f"Account {data['account_id']}. What would you like to do?"

    return GraphFlow(
        "customer",
        {
            "start": Ask("Are you a new or existing customer?", {
                "New Customer": "new_customer", "Existing Customer": "existing_customer",
            }, field="customer_type"),
            "new_customer": SubFlow(build_signup(), next="create_account", field="signup"),
            "create_account": Action(create_account, targets=("account_menu",)),
            "existing_customer": Input(
                "Please enter your account ID:", field="account_id", next="verify_account",
                validate=validators.regex(r"[Aa]\d{4}", error="Account IDs look like A1234."),
                transform=str.upper, help="Your account ID is on your invoices, e.g. A1001.",
            ),
            "verify_account": Action(verify_account, targets=("account_menu", "account_not_found")),
            "account_not_found": Ask(
                lambda data: f"No account {clip(data['account_id'], 12)}. Try again?",
                {"Try again": "existing_customer", "New Customer": "new_customer"},
            ),
            "account_menu": Ask(menu_prompt, {
                "View Orders": "view_orders", "Update Profile": "update_profile",
                "Support": "support",
            }),
            "view_orders": End(orders),
            "update_profile": Input("What is your new email?", field="new_email",
                                    next="save_profile", validate=validators.email()),
            "save_profile": Action(save_profile, targets=("profile_saved",)),
            "profile_saved": End("✅ Profile updated."),
            "support": End("A person from our team will write to you here shortly."),
        },
        version=version, title="Customer area", finish=Finish.MENU,
    )


def build_runner(directory: AccountDirectory | None = None) -> FlowRunner:
    return FlowRunner({"customer": build_customer(directory or AccountDirectory())})
