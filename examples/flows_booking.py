"""Seed 000's appointment booking: category, service, provider, date, time, confirm.

Later answers depend on earlier ones (services of the category, providers of the service, free
times of the provider on the date); editing an earlier answer from the confirmation forgets the
answers that depended on it and asks them again. Version 2 adds a phone number step; sessions
that started on version 1 are migrated (their answers kept) instead of stranded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from chatstate.flows import (
    CONFIRM,
    Finish,
    FlowRunner,
    FlowTimeouts,
    Step,
    VersionChange,
    Wizard,
    validators,
)
from chatstate.model import FlowPosition

CATALOG: dict[str, dict[str, list[str]]] = {
    "Hair": {"Haircut": ["Marta", "Luis"], "Colour": ["Marta"]},
    "Nails": {"Manicure": ["Sofia"], "Pedicure": ["Sofia", "Joao"]},
    "Massage": {"Relaxing massage": ["Joao"], "Sports massage": ["Luis"]},
}
OPENING_HOURS = [f"{h:02d}:00" for h in range(9, 18)]
TIME_ZONE = "Europe/Madrid"


class Scheduler:
    """A stand-in for the booking backend: free slots per provider and day."""

    def __init__(self) -> None:
        self.booked: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.broken = False  # tests flip this to make the backend raise

    async def free_times(self, provider: str, day: str) -> list[str]:
        if self.broken:
            raise ConnectionError("scheduler backend unavailable")
        return [t for t in OPENING_HOURS if (provider, day, t) not in self.booked]

    async def book(self, data: dict[str, Any]) -> str:
        key = (data["provider"], data["date"], data["time"])
        booking_id = f"B{len(self.booked) + 1:04d}"
        self.booked[key] = {**data, "id": booking_id}
        return booking_id


def migrate_v1(position: FlowPosition, old_version: int) -> FlowPosition | None:
    """v1 -> v2: answers stay; a session already at the confirmation is first asked the new
    phone question."""
    if old_version != 1:
        return None
    if position.step == CONFIRM:
        position.step = "phone"
    return position


def build_booking(scheduler: Scheduler, version: int = 1) -> Wizard:
    async def times(data: dict[str, Any]) -> list[str]:
        return await scheduler.free_times(data["provider"], data["date"])

    async def booked(data: dict[str, Any]) -> str:
        booking_id = await scheduler.book(data)
        day = dt.date.fromisoformat(data["date"]).strftime("%A %d %B %Y")
        return (f"✅ Booked {booking_id}: {data['service']} with {data['provider']} on {day} at "
                f"{data['time']}. See you then!")

    steps = [
        Step("category", "What would you like to book?", choices=list(CATALOG), columns=3),
        Step("service", "Which service?", choices=lambda d: list(CATALOG[d["category"]]),
             depends_on=("category",)),
        Step("provider", "With whom?", choices=lambda d: CATALOG[d["category"]][d["service"]],
             depends_on=("service",)),
        Step(
            "date", "Which day? (e.g. tomorrow, friday, 24/12/2025)",
            validate=validators.date(TIME_ZONE, allow_past=False, max_days_ahead=60,
                                     weekdays=range(6)),
            help="Type a date: today, tomorrow, a weekday name, YYYY-MM-DD or DD/MM/YYYY. "
                 "We are open Monday to Saturday.",
        ),
        Step("time", "At what time?", choices=times, columns=3, depends_on=("provider", "date"),
             empty_message="No free times that day, sorry. Please choose another day."),
    ]
    if version >= 2:
        steps.append(Step("phone", "A phone number for reminders?",
                          validate=validators.phone(region="ES"), optional=True,
                          help="With country code, e.g. +34 612 345 678; or /skip."))
    return Wizard(
        "book", steps, confirm=True, version=version, title="Book an appointment",
        on_complete=booked, finish=Finish.CLOSE, store_as="booking",
        on_version_change=VersionChange.MIGRATE if version >= 2 else VersionChange.RESTART_STEP,
        migrate=migrate_v1 if version >= 2 else None,
        timeouts=FlowTimeouts(
            idle_timeout=15 * 60, warn_before=2 * 60,
            expiry_message="Your booking was not finished and has expired. Send /book to start "
                           "again.",
        ),
    )


def build_runner(scheduler: Scheduler | None = None, version: int = 1) -> FlowRunner:
    return FlowRunner({"book": build_booking(scheduler or Scheduler(), version)})
