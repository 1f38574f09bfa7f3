"""What every command shares: --store, error handling, consoles."""

from __future__ import annotations

import datetime
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from optlab.errors import OptlabError
from optlab.store.folding import Folded, fold

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    debug: bool = False
    folded: Folded | None = None  # what this command folded in of Slurm jobs' journals


STATE = _State()
# Off a terminal rich assumes 80 columns; tables piped to a file should not be cut.
_WIDTH = None if sys.stdout.isatty() else 240
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

StoreOption = typer.Option(
    Path("optlab.duckdb"),
    "--store",
    envvar="OPTLAB_STORE",
    help="The DuckDB store (run logs go in a folder beside it).",
)


BlockOption = typer.Option(
    [], "--block", help="Only this block of the study (repeatable).", show_default=False
)
OnlyOption = typer.Option(
    [],
    "--only",
    help="Only this run: an id or a unique prefix of one (repeatable).",
    show_default=False,
)
WhereOption = typer.Option(
    None,
    "--where",
    help="Only the runs for which this SQL condition holds, over the study's columns as the "
    'runs view names them (seed, block, lr, optimizer_lr, ...): "seed < 2 and lr >= 0.1".',
    show_default=False,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"Error: {printable(message)}", markup=False)
    return typer.Exit(code)


def printable(text: str) -> str:
    """One line whatever the message quotes: control characters (a key named "\x1e", a
    newline in a value) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def traceback_dir() -> Path:
    return Path(
        os.environ.get("OPTLAB_TRACEBACKS") or Path(tempfile.gettempdir()) / "optlab-tracebacks"
    )


def save_traceback(exc: BaseException) -> Path | None:
    """Write the traceback of an unexpected error to a file; its path, or None if even that
    cannot be written."""
    folder = traceback_dir()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}-{os.getpid()}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(exc))
        path.write_text(f"optlab {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError:
        return None
    return path


def _from_cli_library(exc: BaseException) -> bool:
    """typer/click's own exceptions (Exit, Abort, usage errors) pass through."""
    return type(exc).__module__.split(".")[0] in ("typer", "click")


def _store_damage(exc: BaseException) -> str | None:
    """A DuckDB error from reading a damaged store, as one line."""
    if not type(exc).__module__.lstrip("_").startswith("duckdb"):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "lock" in first.lower():  # busy, not damaged: another process holds the file
        return f"a store is busy ({first}); another process writes it: try again"
    return (
        f"the store could not be read ({first}); if it is damaged, `optlab rebuild` "
        "makes a new one from the run journals"
    )


def fold_jobs(store: Path) -> Folded:
    """What Slurm jobs journaled, written to the store before a command reads it (see
    :mod:`optlab.store.folding`); remembered for `optlab status` to say."""
    try:
        STATE.folded = fold(store)
    except OptlabError as e:  # a damaged store: the command itself says so (or rebuilds it)
        STATE.folded = Folded(error=str(e))
    return STATE.folded


def handles_errors(func: F) -> F:
    """Library errors become one line and an exit code; an unexpected error becomes one line
    and a saved traceback (exit 1); --debug shows the traceback instead; Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if isinstance(kwargs.get("store"), Path):
                fold_jobs(kwargs["store"])
            return func(*args, **kwargs)
        except OptlabError as e:
            if STATE.debug:
                traceback.print_exc(file=sys.stderr)
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as e:
            if _from_cli_library(e):
                raise
            if STATE.debug:
                traceback.print_exc(file=sys.stderr)
                raise typer.Exit(1) from None
            damage = _store_damage(e)
            if damage is not None:
                raise fail(damage) from None
            saved = save_traceback(e)
            where = f"traceback saved to {saved}" if saved else "the traceback could not be saved"
            first = (str(e).strip().splitlines() or [""])[0]
            raise fail(
                f"unexpected {type(e).__name__}: {first} ({where}; --debug shows it); "
                "please report it"
            ) from None

    return wrapper  # type: ignore[return-value]
