"""LLM conversation memory: history, offline token counting, usage ledger, budgeted context,
rolling summaries, forks, export/import, search and statistics, on every store.

    from chatstate.memory import Memory, MemoryConfig
    memory = Memory(manager, config=MemoryConfig(token_limit=4000))
"""

from __future__ import annotations

from .api import (
    MEMORY_ARCHIVED,
    MEMORY_SUMMARIZED,
    MEMORY_SUMMARY_FAILED,
    Memory,
    MemoryConfig,
)
from .context import Context, LeftOut
from .history import MEMORY_KEY, HistoryReader, split_groups, split_turns, starts_turn
from .ledger import CallUsage, UsageTotals, normalise_usage
from .stats import GlobalMemoryStats, SessionMemoryStats
from .summarize import (
    ExtractiveSummarizer,
    OpenAICompatibleSummarizer,
    Summarizer,
    SummaryRequest,
)
from .tokens import ChatFormat, TokenCounter, available_encodings
from .transfer import export_session, export_sessions, import_sessions

__all__ = [
    "MEMORY_ARCHIVED",
    "MEMORY_KEY",
    "MEMORY_SUMMARIZED",
    "MEMORY_SUMMARY_FAILED",
    "CallUsage",
    "ChatFormat",
    "Context",
    "ExtractiveSummarizer",
    "GlobalMemoryStats",
    "HistoryReader",
    "LeftOut",
    "Memory",
    "MemoryConfig",
    "OpenAICompatibleSummarizer",
    "SessionMemoryStats",
    "Summarizer",
    "SummaryRequest",
    "TokenCounter",
    "UsageTotals",
    "available_encodings",
    "export_session",
    "export_sessions",
    "import_sessions",
    "normalise_usage",
    "split_groups",
    "split_turns",
    "starts_turn",
]
