"""What every command shares: --store, error handling, consoles."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from optlab.errors import OptlabError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    debug: bool = False


STATE = _State()
# Off a terminal rich assumes 80 columns; tables piped to a file should not be cut.
_WIDTH = None if sys.stdout.isatty() else 240
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

StoreOption = typer.Option(
    Path("optlab.duckdb"), "--store", envvar="OPTLAB_STORE",
    help="The DuckDB store (run logs go in a folder beside it).")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"Error: {message}", markup=False)
    return typer.Exit(code)


def handles_errors(func: F) -> F:
    """Library errors become one line and an exit code; --debug shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OptlabError as e:
            if STATE.debug:
                traceback.print_exc(file=sys.stderr)
            raise fail(str(e), e.exit_code) from None

    return wrapper  # type: ignore[return-value]
