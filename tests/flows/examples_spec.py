"""What the four flow examples expect, step by step, for the end-to-end and property tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from examples import flows_booking, flows_customer, flows_order, flows_registration

from chatstate.flows import FlowRunner


@dataclass
class ExampleSpec:
    name: str
    build: Callable[[], FlowRunner]
    command: str
    # the happy path: (step the user is at, a good answer, a bad answer)
    path: list[tuple[str, str, str]]
    end_state: str = "idle"  # "closed" when the flow closes the session
    check: Callable[[Any], None] = field(default=lambda record: None)
    extra_words: list[str] = field(default_factory=list)


def _registered(record: Any) -> None:
    assert record.data["profile"] == {"name": "Ana Lopez", "email": "ana@example.com"}


def _ordered(record: Any) -> None:
    assert record.data["last_order"] == {
        "product": "Banana", "quantity": 12, "address": "Calle Mayor 12, Madrid",
    }


def _booked(record: Any) -> None:
    assert record.close_reason == "completed"
    assert record.data["booking"]["date"] == "2025-03-14"
    assert record.data["booking"]["time"] == "10:00"


SPECS: list[ExampleSpec] = [
    ExampleSpec(
        "registration", flows_registration.build_runner, "/register",
        [
            ("awaiting_name", "Ana Lopez", "x" * 100),
            ("awaiting_email", "ana@example.com", "not-an-email"),
            ("awaiting_confirm", "yes", "maybe"),
        ],
        check=_registered, extra_words=["no", "edit"],
    ),
    ExampleSpec(
        "order", flows_order.build_runner, "/order",
        [
            ("product", "Banana", "Pear"),
            ("quantity", "12", "500"),
            ("address", "Calle Mayor 12, Madrid", "short"),
            ("confirm", "yes", "maybe"),
        ],
        check=_ordered, extra_words=["edit quantity", "Apple", "0"],
    ),
    ExampleSpec(
        "customer", flows_customer.build_runner, "/customer",
        [
            ("start", "Existing Customer", "dunno"),
            ("existing_customer", "A1001", "1234"),
            ("account_menu", "Update Profile", "dance"),
            ("update_profile", "new@example.com", "nope"),
        ],
        extra_words=["New Customer", "A9999", "Try again", "View Orders", "Zoe",
                     "zoe@example.com", "Support"],
    ),
    ExampleSpec(
        "booking", flows_booking.build_runner, "/book",
        [
            ("category", "Hair", "Cars"),
            ("service", "Haircut", "Shave"),
            ("provider", "Marta", "Bob"),
            ("date", "friday", "someday"),
            ("time", "10:00", "03:00"),
            ("confirm", "yes", "maybe"),
        ],
        end_state="closed", check=_booked,
        extra_words=["sunday", "edit provider", "tomorrow", "Nails", "Sofia", "09:00"],
    ),
]

BY_NAME = {spec.name: spec for spec in SPECS}
