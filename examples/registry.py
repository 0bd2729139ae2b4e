"""The flow examples the terminal demo offers: name -> zero-argument factory of a FlowRunner."""

from __future__ import annotations

from collections.abc import Callable

from examples import flows_booking, flows_customer, flows_order, flows_registration

from chatstate.flows import FlowRunner

FLOW_EXAMPLES: dict[str, Callable[[], FlowRunner]] = {
    "registration": flows_registration.build_runner,
    "order": flows_order.build_runner,
    "customer": flows_customer.build_runner,
    "booking": flows_booking.build_runner,
}
