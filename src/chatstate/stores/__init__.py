"""Store backends and the URL parser. Each backend lives in its own module."""

from __future__ import annotations

from .base import DueItem, Lease, Page, SessionFilter, SessionStats, Store
from .url import open_store

__all__ = ["DueItem", "Lease", "Page", "SessionFilter", "SessionStats", "Store", "open_store"]
