"""SQL text helpers shared by the store and its readers."""

from __future__ import annotations


def q(text: str) -> str:
    """``text`` inside an SQL string literal."""
    return text.replace("'", "''")
