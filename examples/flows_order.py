"""Seed 002's order wizard: product, quantity 1-100, delivery address of at least 10
characters, then a confirmation where any answer can be edited."""

from __future__ import annotations

from typing import Any

from chatstate.flows import Finish, FlowRunner, FlowTimeouts, Step, Wizard, validators

PRODUCTS = ["Apple", "Banana", "Orange"]


def order_placed(data: dict[str, Any]) -> str:
    return (
        "✅ Order placed!\n"
        f"Product: {data['product']}\nQuantity: {data['quantity']}\nAddress: {data['address']}"
    )


def build_order(version: int = 1) -> Wizard:
    return Wizard(
        "order",
        [
            Step("product", "What product do you want to order?", choices=PRODUCTS, columns=3,
                 help="Pick a product from the buttons or type its name."),
            Step(
                "quantity", lambda data: f"How many {data['product']} do you want?",
                validate=validators.integer(1, 100, messages={
                    "invalid": "Please enter a valid number.", "max": "Maximum {max} items.",
                    "min": "Please order at least {min}.",
                }),
                help="A whole number from 1 to 100.",
            ),
            Step("address", "What is your delivery address?",
                 validate=validators.length(10, 300, messages={
                     "short": "Address too short: at least {min} characters, please."}),
                 help="Street, number and city, at least 10 characters."),
        ],
        confirm=True, version=version, title="Order", finish=Finish.MENU, store_as="last_order",
        on_complete=order_placed,
        timeouts=FlowTimeouts(
            idle_timeout=30 * 60, warn_before=5 * 60,
            expiry_message="Your order was not finished in time. Send /order to start again.",
        ),
    )


def build_runner() -> FlowRunner:
    return FlowRunner({"order": build_order()})

