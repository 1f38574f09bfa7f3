"""Domain errors. The library raises these; the CLI turns them into one line."""

from __future__ import annotations

from typing import Any


class OptlabError(Exception):
    """An error the user can fix; shown as one line, exit code 1."""

    exit_code = 1


class UsageError(OptlabError):
    """A command-line value that is not allowed; exit code 2."""

    exit_code = 2


class ConfigError(OptlabError):
    """A study file or --set value that does not validate."""


class StoreError(OptlabError):
    """The store cannot be opened, read or written."""


class StoreBusy(StoreError):
    """Another process holds the store file."""


class StoreFull(StoreError):
    """The disk under the store (or the journals, or the checkpoints) is full."""


class PluginBuildError(Exception):
    """A plugin's build raised: every run with the same table (and data) would fail alike."""

    def __init__(self, kind: str, table: dict[str, Any], error: BaseException):
        first = (str(error).strip().splitlines() or [""])[0]
        super().__init__(
            f"{kind} plugin {table.get('name')!r} failed to build: {type(error).__name__}: {first}"
        )
        self.kind, self.table = kind, table
