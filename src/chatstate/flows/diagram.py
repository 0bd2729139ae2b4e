"""Mermaid diagrams of flows (`chatstate flows diagram module:flow`)."""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import ConfigurationError
from .base import Flow
from .fsm import StateMachine
from .runner import FlowRunner

_ID_RE = re.compile(r"[^A-Za-z0-9_]")


def _node_id(name: str) -> str:
    return "s_" + _ID_RE.sub("_", name)


def _label(text: str) -> str:
    # Mermaid edge labels end at ':' or newlines and break on quotes; keep them short and safe.
    clean = text.replace('"', "'").replace("\n", " ").replace(":", " ").replace(";", ",")
    clean = clean.replace("{", "(").replace("}", ")").replace("#", "")
    return clean[:60]


def flow_diagram(flow: Flow) -> str:
    """`flow` as a Mermaid state diagram (stateDiagram-v2)."""
    lines = ["stateDiagram-v2", f"    %% {flow.name} v{flow.version}"]
    for state in flow.states():
        lines.append(f'    state "{_label(state)}" as {_node_id(state)}')
    lines.append(f"    [*] --> {_node_id(flow.initial_step())}")
    for edge in flow.edges():
        target = "[*]" if edge.target is None else _node_id(edge.target)
        label = f": {_label(edge.label)}" if edge.label else ""
        lines.append(f"    {_node_id(edge.source)} --> {target}{label}")
    escapes = " ".join(f"/{e.value}" for e in sorted(flow.escapes, key=lambda e: e.value))
    if escapes:
        lines.append(f"    %% escapes from every step: {escapes}")
    return "\n".join(lines) + "\n"


def machine_diagram(machine: StateMachine) -> str:
    lines = ["stateDiagram-v2"]
    for state in machine.states:
        lines.append(f'    state "{_label(state)}" as {_node_id(state)}')
    lines.append(f"    [*] --> {_node_id(machine.initial)}")
    for t in machine.transitions():
        guard = " [guarded]" if t.guard else ""
        lines.append(
            f"    {_node_id(t.source)} --> {_node_id(t.target)}: {_label(t.event)}{guard}"
        )
    return "\n".join(lines) + "\n"


def diagram(obj: Any) -> str:
    """A diagram of a Flow, StateMachine or FlowRunner (every flow it knows)."""
    if isinstance(obj, Flow):
        return flow_diagram(obj)
    if isinstance(obj, StateMachine):
        return machine_diagram(obj)
    if isinstance(obj, FlowRunner):
        return "\n".join(flow_diagram(f) for f in obj.flows.values())
    raise ConfigurationError(
        f"cannot draw a {type(obj).__name__}; point at a Flow, a StateMachine, a FlowRunner or "
        "a function returning one"
    )


def diagram_command(target: str) -> str:
    """The `chatstate flows diagram module:attr` command: import `module`, take `attr` (a flow,
    a machine, a runner, or a zero-argument function returning one) and return Mermaid text.
    `attr` may be dotted, and for a runner may end with a flow name: `examples.registry:
    FLOW_EXAMPLES.order` style lookups go through mappings too."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"{target!r} is not 'module:name'; e.g. 'examples.flows_order:order_wizard'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if isinstance(obj, FlowRunner) and part in obj.flows:
            obj = obj.flows[part]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise ConfigurationError(f"{module_name!r} has no {attr!r} (stopped at {part!r})")
        if callable(obj) and not isinstance(obj, (Flow, StateMachine, FlowRunner, type)):
            obj = obj()
    return diagram(obj)
