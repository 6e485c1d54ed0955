"""The history store: idempotent append, latest N, after an id, before an id."""

from chat.history.base import Entry, HistoryStore, HistoryUnavailable, Page

__all__ = ["Entry", "HistoryStore", "HistoryUnavailable", "Page"]
