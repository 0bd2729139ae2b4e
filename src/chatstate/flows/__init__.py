"""Conversation flows: state machines, wizards, branching graphs, validators, escape commands.

Platform-neutral: a flow takes an `Incoming` and returns `Outgoing` messages through a
`FlowRunner`; the position in the flow lives in the session (`session.flow`).
"""

from . import validators
from .base import (
    IDLE,
    Edge,
    Finish,
    Flow,
    FlowContext,
    FlowResult,
    FlowTimeouts,
    OnExhausted,
    VersionChange,
    make_payload,
    parse_payload,
)
from .commands import DEFAULT_ALIASES, Commands, Escape
from .diagram import diagram, diagram_command
from .fsm import Next, StateMachine, StateMachineFlow, Transition
from .graph import Action, Ask, End, GraphFlow, Input, Option, SubFlow
from .runner import FlowRunner
from .suggest import did_you_mean, suggest
from .validators import Validation, ValidationContext
from .wizard import CONFIRM, Step, Wizard

__all__ = [
    "CONFIRM",
    "DEFAULT_ALIASES",
    "IDLE",
    "Action",
    "Ask",
    "Commands",
    "Edge",
    "End",
    "Escape",
    "Finish",
    "Flow",
    "FlowContext",
    "FlowResult",
    "FlowRunner",
    "FlowTimeouts",
    "GraphFlow",
    "Input",
    "Next",
    "OnExhausted",
    "Option",
    "StateMachine",
    "StateMachineFlow",
    "Step",
    "SubFlow",
    "Transition",
    "Validation",
    "ValidationContext",
    "VersionChange",
    "Wizard",
    "diagram",
    "diagram_command",
    "did_you_mean",
    "make_payload",
    "parse_payload",
    "suggest",
    "validators",
]
