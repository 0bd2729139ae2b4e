"""Synthetic agent conversations for memory tests: user and assistant turns, some with tool
calls (one or two parallel calls, each with its result), deterministic per seed."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from chatstate.model import Message

WORDS = (
    "order refund flight hotel weather Berlin Lisbon booking invoice account password delivery "
    "tomorrow tonight price ticket seat window aisle receipt address change cancel status "
    "package tracking number support agent manager schedule meeting calendar reminder"
).split()


def sentence(rng: random.Random, low: int = 4, high: int = 18) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def turn_messages(rng: random.Random, index: int, tool_rate: float = 0.3) -> list[Message]:
    """One turn: a user message, optionally tool calls with their results, an answer."""
    out = [Message(role="user", content=" ".join(sentence(rng) for _ in range(rng.randint(1, 3))))]
    if rng.random() < tool_rate:
        calls = []
        for n in range(rng.choice([1, 1, 2])):
            call_id = f"call_{index}_{n}"
            calls.append({"id": call_id, "type": "function", "function": {
                "name": rng.choice(["search", "get_weather", "lookup_order"]),
                "arguments": json.dumps({"q": rng.choice(WORDS)})}})
        out.append(Message(role="assistant", content="", tool_calls=calls))
        for call in calls:
            out.append(Message(role="tool", tool_call_id=call["id"],
                               content=json.dumps({"result": sentence(rng, 3, 30)})))
    out.append(Message(role="assistant", content=" ".join(
        sentence(rng) for _ in range(rng.randint(1, 4)))))
    return out


def conversation(turns: int, seed: int = 0, tool_rate: float = 0.3) -> list[Message]:
    """`turns` turns with seq numbers 1.. assigned."""
    rng = random.Random(seed)
    messages = [m for i in range(turns) for m in turn_messages(rng, i, tool_rate)]
    for seq, message in enumerate(messages, start=1):
        message.seq = seq
    return messages


def iter_turns(turns: int, seed: int = 0, tool_rate: float = 0.3) -> Iterator[list[Message]]:
    rng = random.Random(seed)
    for i in range(turns):
        yield turn_messages(rng, i, tool_rate)
