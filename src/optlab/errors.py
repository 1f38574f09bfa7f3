"""Domain errors. The library raises these; the CLI turns them into one line."""


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
